"""``flywheel train``, ``jobs`` and ``watch`` on the command line: the dry-run plan, the cost refusal,
one job per dataset version, ``jobs show``/``cancel``, bad configs that launch nothing, SIGTERM."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from train_helpers import (
    API_KEY,
    API_KEY_ENV,
    every_text_in_store,
    flywheel_process,
    log_traffic,
    provider_jobs,
    rows,
    until,
    write_config,
)

from flywheel.cli import cli
from flywheel.datasets import update_dataset
from flywheel.mock_server import FineTuneTiming, MockServer
from sdk._migrate import upgrade


@pytest.fixture
def server() -> Iterator[MockServer]:
    with MockServer(fine_tune=FineTuneTiming(validating_s=5, queued_s=5, running_s=5)) as running:
        yield running


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


def run(db_url: str, config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--db", db_url, "--config", str(config)])


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


def test_dry_run_plans_without_writing(db_url: str, tmp_path: Path, server: MockServer) -> None:
    upgrade(db_url)
    config = write_config(tmp_path, server.base_url, extra_train="max_cost_usd = 10")
    log_traffic(db_url, server.base_url, 0, 30)
    missing = as_json(run(db_url, config, "train", "classify", "--dry-run", "--json"))
    assert missing["dataset_version"] is None and "does not exist yet" in missing["problem"]
    assert "30 calls match" in missing["problem"]
    run(db_url, config, "watch", "--once")  # makes the dataset; 24 of 20 examples: launches
    assert len(provider_jobs(server.base_url)) == 1
    log_traffic(db_url, server.base_url, 30, 5)
    before = every_text_in_store(db_url)
    plan = as_json(run(db_url, config, "train", "classify", "--dry-run", "--json"))
    assert plan["train_examples"] > 0 and plan["training_tokens"] > 0 and plan["epochs"] == 2
    assert plan["estimated_cost_usd"] == pytest.approx(plan["training_tokens"] * 2 * 3.0 / 1e6)
    # The plan is of the dataset as it is: its version has a job; 5 new calls wait for a pass.
    assert plan["problem"] == (
        "dataset classify version 1 already has job 1 (validating_files); a new job needs new data"
    )
    assert plan["new_calls"] == 5
    text = run(db_url, config, "train", "classify", "--dry-run")
    assert "estimated cost" in text.output and "Would not launch: dataset classify version 1" in text.output
    assert every_text_in_store(db_url) == before
    assert len(provider_jobs(server.base_url)) == 1
    # After a pass took the new calls in, the plan says what `train` would: job 1 is not done.
    assert update_dataset(db_url, "classify").added == 5
    after_pass = as_json(run(db_url, config, "train", "classify", "--dry-run", "--json"))
    assert after_pass["dataset_version"] == 2
    assert after_pass["problem"] == "job 1 of pipeline classify is still validating_files"
    refused = run(db_url, config, "train", "classify")
    assert refused.exit_code == 2 and "job 1 of pipeline classify is still validating_files" in refused.output


def test_train_now_then_refuses_the_same_version(db_url: str, tmp_path: Path, server: MockServer) -> None:
    upgrade(db_url)
    config = write_config(tmp_path, server.base_url, min_examples=1000)  # thresholds never met
    log_traffic(db_url, server.base_url, 0, 20)
    launched = as_json(run(db_url, config, "train", "classify", "--json"))
    assert launched["status"] == "validating_files" and launched["provider_job_id"].startswith("ftjob-")
    again = run(db_url, config, "train", "classify")
    assert again.exit_code == 2
    assert "already has job" in again.output and "a new job needs new data" in again.output
    shown = as_json(CliRunner().invoke(cli, ["jobs", "show", str(launched["id"]), "--db", db_url, "--json"]))
    assert [e["kind"] for e in shown["events"]][:1] == ["status"]
    cancelled = as_json(
        CliRunner().invoke(cli, ["jobs", "cancel", str(launched["id"]), "--db", db_url, "--json"])
    )
    assert cancelled["status"] == "cancelled"
    assert provider_jobs(server.base_url)[0].status == "cancelled"
    # A cancelled version may be tried again, as a new attempt.
    retried = as_json(run(db_url, config, "train", "classify", "--json"))
    assert retried["attempt"] == 2 and retried["dataset_version"] == launched["dataset_version"]
    listed = CliRunner().invoke(cli, ["jobs", "classify", "--db", db_url])
    assert listed.exit_code == 0 and "cancelled" in listed.output and "validating_files" in listed.output
    missing = CliRunner().invoke(cli, ["jobs", "show", "999", "--db", db_url])
    assert missing.exit_code == 2 and "no training job 999" in missing.output


def test_over_budget_is_refused_with_an_event(db_url: str, tmp_path: Path, server: MockServer) -> None:
    upgrade(db_url)
    config = write_config(tmp_path, server.base_url, extra_train="max_cost_usd = 0.000001")
    log_traffic(db_url, server.base_url, 0, 30)
    assert run(db_url, config, "watch", "--once").exit_code == 0
    (job,) = as_json(CliRunner().invoke(cli, ["jobs", "--db", db_url, "--json"]))
    assert job["status"] == "refused" and "above max_cost_usd" in job["error"]
    assert provider_jobs(server.base_url) == []
    assert rows(
        db_url, "SELECT count(*) FROM fine_tune_job_events WHERE message LIKE '%above max_cost_usd%'"
    ) == [(1,)]


BAD_CONFIGS = {
    "syntax": ("[pipelines.classify\n", "flywheel.toml:1"),
    "unknown key": ("[pipelines.classify]\nfilter = {}\nfliter = {}\n", "did you mean 'filter'"),
    "wrong type": (
        '[pipelines.classify]\nfilter = {}\n[pipelines.classify.train]\nprovider = "openai"\n'
        'base_model = "gpt-4o-mini"\nmin_examples = "ten"\n',
        "pipelines.classify.train.min_examples",
    ),
    "unknown provider": (
        "[pipelines.classify]\nfilter = {}\n[pipelines.classify.train]\n"
        'provider = "opneai"\nbase_model = "x"\n',
        "pipelines.classify.train.provider",
    ),
    "missing base model": (
        '[pipelines.classify]\nfilter = {}\n[pipelines.classify.train]\nprovider = "openai"\n',
        "pipelines.classify.train.base_model",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_launches_nothing(db_url: str, tmp_path: Path, server: MockServer, case: str) -> None:
    upgrade(db_url)
    log_traffic(db_url, server.base_url, 0, 30)
    text, named = BAD_CONFIGS[case]
    config = tmp_path / "flywheel.toml"
    config.write_text(text)
    before = every_text_in_store(db_url)
    for command in (["watch", "--once"], ["train", "classify"]):
        result = run(db_url, config, *command)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("flywheel: error: ") and named in result.output
    assert every_text_in_store(db_url) == before
    assert provider_jobs(server.base_url) == []


@pytest.mark.slow
def test_sigterm_finishes_the_step_and_exits_cleanly(db_url: str, tmp_path: Path, server: MockServer) -> None:
    upgrade(db_url)
    config = write_config(tmp_path, server.base_url, min_examples=1000)
    log_traffic(db_url, server.base_url, 0, 10)
    watcher = flywheel_process(["watch", "--interval", "1", "--config", str(config)], tmp_path, db_url)
    until(lambda: rows(db_url, "SELECT count(*) FROM datasets")[0][0] == 1)
    time.sleep(0.3)
    watcher.send_signal(signal.SIGTERM)
    _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert "stopping after the current step" in err
    assert "of 1000 examples, not launching" in err
    assert API_KEY not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trainer", "status"), [("ok_trainer.py", "succeeded"), ("failing_trainer.py", "failed")]
)
def test_command_provider_through_watch(
    db_url: str, tmp_path: Path, server: MockServer, trainer: str, status: str
) -> None:
    """A pipeline whose provider is a local script: launched by a pass, tracked to its end."""
    import shlex
    import sys

    upgrade(db_url)
    script = Path(__file__).parent / "trainers" / trainer
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --config {{config}}"
    config = tmp_path / "flywheel.toml"
    config.write_text(
        f"""
[pipelines.classify]
filter = {{ tags = {{ prompt_id = "classify" }}, status = "ok" }}
[pipelines.classify.train]
provider = "command"
format = "trl"
command = {orjson.dumps(command).decode()}
base_model = "/models/tiny-llama"
min_examples = 10
hyperparameters = {{ n_epochs = 1 }}
"""
    )
    log_traffic(db_url, server.base_url, 0, 20)
    assert run(db_url, config, "watch", "--once").exit_code == 0

    def ended() -> dict[str, Any] | None:
        assert run(db_url, config, "watch", "--once").exit_code == 0
        (job,) = as_json(CliRunner().invoke(cli, ["jobs", "--db", db_url, "--json"]))
        return job if job["status"] in ("succeeded", "failed") else None

    job = until(ended, timeout=60, step=0.2)
    assert job["status"] == status and job["provider"] == "command"
    assert job["provider_job_id"].startswith("local-")
    work_dir = tmp_path / ".flywheel" / "jobs" / job["key"]
    if status == "succeeded":
        assert job["fine_tuned_model"] == str(work_dir / "output")
        assert (work_dir / "output" / "model.json").exists()
        loss = rows(db_url, "SELECT count(*) FROM fine_tune_job_events WHERE kind = 'metrics'")
        assert loss[0][0] >= 1
    else:
        assert "exited with code 3" in job["error"]
    trl = orjson.loads((work_dir / "config.yaml").read_bytes())
    assert trl["model_name_or_path"] == "/models/tiny-llama" and trl["num_train_epochs"] == 1


def test_one_failing_pipeline_never_stops_the_others_and_backs_off(
    db_url: str, tmp_path: Path, server: MockServer
) -> None:
    from flywheel.train.config import load_config
    from flywheel.train.watch import Watcher

    upgrade(db_url)
    log_traffic(db_url, server.base_url, 0, 30)
    with MockServer(error_rate=1.0) as failing:
        good = write_config(tmp_path, server.base_url).read_text()
        bad = good.replace("pipelines.classify", "pipelines.broken").replace(
            server.base_url, failing.base_url
        )
        config = tmp_path / "flywheel.toml"
        config.write_text(
            bad.replace("create_settle_s = 0.2", "create_settle_s = 0.2\nmax_retries = 0") + good
        )
        once = run(db_url, config, "watch", "--once")
        assert once.exit_code == 1
        watcher = Watcher(db_url, load_config(config))
        result = watcher.run_pass()
        broken, classify = result.pipelines
        assert broken.error is not None and "HTTP 500" in broken.error
        assert classify.error is None and classify.launch is None  # launched by the --once pass
        again = watcher.run_pass()
        assert again.pipelines[0].skipped is not None and "backing off for" in again.pipelines[0].skipped
    assert len(provider_jobs(server.base_url)) == 1
    statuses = dict(rows(db_url, "SELECT pipeline, status FROM fine_tune_jobs"))
    assert statuses["classify"] == "validating_files" and statuses["broken"] == "preparing"
