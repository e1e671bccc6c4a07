"""``flywheel train``, ``watch`` and ``jobs [NAME] | show ID | cancel ID``: training jobs."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from typing import Any

import click
import orjson

from ..train.config import load_config
from ..train.jobs import TrackedJob, get_job, list_jobs
from ..train.plan import plan_training
from ..train.poll import cancel_job
from ..train.watch import Watcher, decisions_to, train_now
from ._base import FlywheelGroup, _db, _print_json, _table, _usd, cli, db_option, workers_option
from ._config import config_option


def _decisions_logged(quiet: bool = False) -> contextlib.AbstractContextManager[None]:
    """What ``watch`` decides and why, one line each on stderr (warnings only when ``quiet``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    return decisions_to(handler, logging.WARNING if quiet else logging.INFO)


@cli.command("train")
@click.argument("name")
@config_option
@db_option
@click.option(
    "--dry-run", is_flag=True, help="Show the job that would be launched, with its cost; change nothing."
)
@workers_option("convert and check the exported examples")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the job as JSON.")
def train_command(
    name: str, config_path: str | None, db_url: str | None, dry_run: bool, workers: int, as_json: bool
) -> None:
    """Launch a training job for pipeline NAME now, whatever its thresholds say.

    Brings the pipeline's dataset up to date and runs its steps first, then exports the newest
    version and starts one job. A dataset version gets one job: a second `train` with no new data
    is refused, unless the version's job failed, was cancelled or refused.
    """
    config = load_config(config_path)
    url = _db(db_url)
    if dry_run:
        plan = plan_training(url, config, name)
        if as_json:
            _print_json(plan.as_dict())
            return
        _echo_plan(plan.as_dict())
        return
    with _decisions_logged(quiet=as_json):
        _, outcome = train_now(url, config, name, workers=workers)
    if as_json:
        _print_json(outcome.job.as_dict() if outcome.job else {"message": outcome.message})
        return
    click.echo(f"{name}: {outcome.message}")
    if outcome.job is not None:
        click.echo(_job_line(outcome.job))


def _echo_plan(plan: dict[str, Any]) -> None:
    rows = [
        ("pipeline", plan["pipeline"]),
        ("dataset", f"{plan['dataset']} version {plan['dataset_version']}"),
        ("provider", plan["provider"]),
        ("base model", plan["base_model"]),
        ("method", plan["method"]),
        ("hyperparameters", orjson.dumps(plan["hyperparameters"]).decode()),
        ("train / test examples", f"{plan['train_examples']} / {plan['test_examples']}"),
        ("training tokens", f"{plan.get('training_tokens') or 0:,} x {plan.get('epochs') or '?'} epochs"),
        ("estimated cost", _usd(plan.get("estimated_cost_usd"))),
        ("max_cost_usd", _usd(plan["max_cost_usd"])),
    ]
    if plan["thresholds"]:
        rows.append(("thresholds", plan["thresholds"]["reason"]))
    if plan["new_calls"]:
        rows.append(("not in it yet", f"{plan['new_calls']:,} new calls (a pass takes them in first)"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label.ljust(width)}  {value}")
    click.echo(
        f"Would not launch: {plan['problem']}" if plan["problem"] else "Would launch this job (dry run)."
    )


class _JobsGroup(FlywheelGroup):
    """``flywheel jobs [NAME]`` lists; ``flywheel jobs show ID`` / ``cancel ID`` act on one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["--pipeline", args[0], *args[1:]]
        return super().parse_args(ctx, args)


@cli.group(
    "jobs", cls=_JobsGroup, invoke_without_command=True, subcommand_metavar="[NAME] | show ID | cancel ID"
)
@db_option
@click.option("--pipeline", "pipeline", metavar="NAME", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of jobs.")
@click.pass_context
def jobs_group(ctx: click.Context, db_url: str | None, pipeline: str | None, as_json: bool) -> None:
    """Training jobs (of pipeline NAME): status, examples, cost and the fine-tuned model."""
    ctx.obj = {"db_url": db_url}
    if ctx.invoked_subcommand is not None:
        return
    found = list_jobs(_db(db_url), pipeline)
    if as_json:
        _print_json([job.as_dict() for job in found])
        return
    if not found:
        click.echo("No training jobs." if pipeline is None else f"No training jobs for pipeline {pipeline}.")
        return
    headers = ["ID", "PIPELINE", "DATASET", "STATUS", "EXAMPLES", "COST", "CREATED", "MODEL"]
    rows = [
        [
            str(job.id),
            job.pipeline,
            f"{job.dataset} v{job.dataset_version}",
            job.status,
            "-" if job.train_examples is None else f"{job.train_examples:,}",
            _usd(job.estimated_cost_usd),
            job.created_at.strftime("%Y-%m-%d %H:%M"),
            job.fine_tuned_model or job.error or "",
        ]
        for job in found
    ]
    click.echo(_table(headers, rows, right=(0, 4, 5)))


@jobs_group.command("show")
@click.argument("job_id", type=int, metavar="ID")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the job and its events as JSON.")
@click.pass_context
def jobs_show_command(ctx: click.Context, job_id: int, db_url: str | None, as_json: bool) -> None:
    """One job with its history: status changes, the provider's events and metrics."""
    job = get_job(_db(db_url or ctx.obj.get("db_url")), job_id)
    if as_json:
        _print_json(job.as_dict())
        return
    click.echo(_job_line(job))
    for label, value in (
        ("provider", f"{job.provider} {job.provider_job_id or '(not created yet)'}"),
        ("base model", job.base_model),
        ("method", f"{job.method} {orjson.dumps(job.hyperparameters).decode()}"),
        ("examples", f"{job.train_examples} train, {job.test_examples} test, {job.training_tokens} tokens"),
        ("estimated cost", _usd(job.estimated_cost_usd)),
        ("trained tokens", "-" if job.trained_tokens is None else f"{job.trained_tokens:,}"),
        ("files", orjson.dumps(job.files).decode()),
        ("export", job.export_dir or "-"),
        ("error", job.error or "-"),
    ):
        click.echo(f"  {label:<15} {value}")
    for event in job.events:
        data = (
            f"  {orjson.dumps(event['data']).decode()}"
            if event["data"] and event["kind"] == "metrics"
            else ""
        )
        click.echo(f"  {event['created_at'][:19]}  {event['kind']:<10} {event['message']}{data}")


@jobs_group.command("cancel")
@click.argument("job_id", type=int, metavar="ID")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the job after the cancel as JSON.")
@click.pass_context
def jobs_cancel_command(ctx: click.Context, job_id: int, db_url: str | None, as_json: bool) -> None:
    """Ask the provider to cancel job ID."""
    job = cancel_job(_db(db_url or ctx.obj.get("db_url")), job_id)
    if as_json:
        _print_json(job.as_dict())
        return
    click.echo(_job_line(job))


@cli.command("watch")
@config_option
@db_option
@click.option("--once", is_flag=True, help="Run one pass and exit (for cron); exit 1 if the pass had errors.")
@click.option(
    "--interval",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds from the start of one pass to the start of the next.",
)
@click.option(
    "--pipeline", "pipelines", multiple=True, metavar="NAME", help="Only this pipeline (repeatable)."
)
@workers_option("sketch and export")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the pass's outcome as JSON.")
def watch_command(
    config_path: str | None,
    db_url: str | None,
    once: bool,
    interval: float,
    pipelines: tuple[str, ...],
    workers: int,
    as_json: bool,
) -> None:
    """Keep every pipeline's dataset up to date and launch a job when its thresholds are met.

    Each pass, per pipeline: update the dataset from its filter, run its steps (dedup, relabel,
    prune), check the thresholds and launch at most one job; then poll every unfinished job. A
    pipeline's failure never stops the others. SIGTERM or Ctrl+C finishes the current step and
    exits cleanly.
    """
    config = load_config(config_path)
    watcher = Watcher(_db(db_url), config, pipelines=pipelines, workers=workers)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum: int, frame: Any) -> None:
        logging.getLogger("flywheel.watch").info("stopping after the current step (signal %d)", signum)
        watcher.stop()

    for sig in previous:
        signal.signal(sig, stop)
    try:
        with _decisions_logged(quiet=as_json):
            if once:
                result = watcher.run_pass()
                if as_json:
                    _print_json(result.as_dict())
                if result.errors:
                    raise click.exceptions.Exit(1)
                return
            watcher.loop(interval)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _job_line(job: TrackedJob) -> str:
    model = f" -> {job.fine_tuned_model}" if job.fine_tuned_model else ""
    return f"Job {job.id} ({job.pipeline}, dataset {job.dataset} v{job.dataset_version}): {job.status}{model}"
