"""``flywheel eval``: run an evaluation (``eval NAME``), and report on it (``eval report NAME``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..evaluate.report import eval_report
from ..evaluate.report_html import render_html
from ..evaluate.report_text import render_text
from ..evaluate.run import mark_failed, run_eval
from ..train.config import load_config
from ._base import FlywheelGroup, _db, _print_json, _progress_bar, cli, db_option
from ._config import config_option


class _EvalGroup(FlywheelGroup):
    """``flywheel eval NAME ...`` runs; ``flywheel eval report NAME`` reports."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@cli.group("eval", cls=_EvalGroup, subcommand_metavar="NAME --models A,B | report NAME")
def eval_group() -> None:
    """Evaluate models on a pipeline's held-out test split (`eval NAME`), and report (`eval report NAME`)."""


@eval_group.command("run")
@click.argument("name")
@click.option("--models", required=True, metavar="A,B", help="Models to evaluate, comma-separated.")
@click.option("--judge", metavar="MODEL", help="A model that compares each answer with the reference.")
@click.option(
    "--judge-against",
    metavar="MODEL",
    help="Have the judge compare each candidate with this candidate instead of the reference.",
)
@click.option("--few-shot", type=int, metavar="K", help="Also run each base model with K training examples.")
@click.option(
    "--few-shot-select",
    type=click.Choice(["random", "similar"]),
    help="How few-shot examples are picked (default from the config: random).",
)
@click.option("--seed", type=int, help="Seeds the judge's order and the few-shot picks (default: random).")
@click.option("--concurrency", type=int, help="Requests in flight at once (default from the config: 8).")
@click.option("--base-url", metavar="URL", help="OpenAI-compatible API root (default: OPENAI_BASE_URL).")
@click.option("--run", "run_id", metavar="ID", help="Continue this run (default: the newest unfinished one).")
@config_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print what the run did as one JSON object.")
def eval_run_command(
    name: str,
    models: str,
    judge: str | None,
    judge_against: str | None,
    few_shot: int | None,
    few_shot_select: Any,
    seed: int | None,
    concurrency: int | None,
    base_url: str | None,
    run_id: str | None,
    config_path: str | None,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Ask every model the test split of pipeline NAME, and score the answers.

    Each model answers every test example with the request the app logged (same messages, tools and
    parameters). Calls are recorded, tagged flywheel_eval=<run id>, and never become training data.
    Started again, an unfinished run continues where it stopped: no finished example is asked twice.
    """
    pipeline = load_config(config_path).pipeline(name)
    url = _db(db_url)
    with _progress_bar("evaluating", quiet=as_json) as bar:
        result = run_eval(
            url,
            pipeline,
            models.split(","),
            judge=judge,
            judge_against=judge_against,
            few_shot=few_shot,
            few_shot_select=few_shot_select,
            seed=seed,
            concurrency=concurrency,
            base_url=base_url,
            run_id=run_id,
            progress=None if bar is None else lambda update: bar(update.done, update.total),
        )
    if not result.finished:
        mark_failed(url, result.run_id, "; ".join(result.failures[:3]) or "unfinished")
    if as_json:
        _print_json(result.as_dict())
        return
    click.echo(
        f"{name}: eval run {result.run_id}{' (continued)' if result.resumed else ''}: "
        f"{result.examples} test examples x {len(result.candidates)} candidates "
        f"({', '.join(result.candidates)}); {result.answered} answered, {result.rejected} rejected, "
        f"{result.skipped} already done, {result.failed} to retry."
    )
    if result.judged is not None:
        click.echo(
            f"judge: {result.judged['judged']} verdicts asked, {result.judged['decided']} decided without a "
            f"call (same answers), {result.judged['failed']} to retry"
        )
    for failure in result.failures[:5]:
        click.echo(f"  not answered: {failure}")
    click.echo(
        f"Report: flywheel eval report {name}"
        if result.finished
        else f"Unfinished: run `flywheel eval {name} --models {models}` again to continue."
    )


@eval_group.command("report")
@click.argument("name")
@click.option("--run", "run_id", metavar="ID", help="This run (default: the newest).")
@click.option("--html", "html_path", metavar="FILE", help="Also write a self-contained HTML report.")
@config_option
@db_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report as one JSON object (the contract in docs/evaluation.md).",
)
def eval_report_command(
    name: str,
    run_id: str | None,
    html_path: str | None,
    config_path: str | None,
    db_url: str | None,
    as_json: bool,
) -> None:
    """The metrics of pipeline NAME's newest eval run, per model, with 95 % intervals."""
    pipeline = load_config(config_path).pipeline(name)
    report = eval_report(_db(db_url), pipeline, run_id=run_id)
    if html_path is not None:
        Path(html_path).write_text(render_html(report), encoding="utf-8")
    if as_json:
        _print_json(report)
        return
    click.echo(render_text(report))
    if html_path is not None:
        click.echo(f"HTML report: {html_path}")
