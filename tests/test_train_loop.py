"""The whole training loop against the mock provider: traffic through the SDK, thresholds, exactly one
job per dataset version, polled to success, retrains on new data only; SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from click.testing import CliRunner
from train_helpers import (
    API_KEY,
    API_KEY_ENV,
    BASE_MODEL,
    every_text_in_store,
    log_traffic,
    provider_jobs,
    rows,
    until,
    write_config,
)

from flywheel.cli import cli
from flywheel.mock_server import FineTuneTiming, MockServer
from flywheel.train.config import load_config
from flywheel.train.jobs import list_jobs
from flywheel.train.watch import PassResult, Watcher
from flywheel.validate import validate_dataset
from sdk._migrate import upgrade


@pytest.fixture
def provider() -> Iterator[MockServer]:
    """A mock OpenAI API whose fine-tuning jobs take a fraction of a second."""
    timing = FineTuneTiming(validating_s=0.05, queued_s=0.05, running_s=0.3)
    with MockServer(fine_tune=timing) as server:
        yield server


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


def one_pass(db_url: str, config_path: Path) -> PassResult:
    result = Watcher(db_url, load_config(config_path)).run_pass()
    assert result.errors == 0, result.as_dict()
    return result


def jobs_json(db_url: str, *args: str) -> list[dict[str, Any]]:
    out = CliRunner().invoke(cli, ["jobs", *args, "--db", db_url, "--json"])
    assert out.exit_code == 0, out.output
    listed = orjson.loads(out.output)
    assert isinstance(listed, list)
    return listed


def test_thresholds_launch_poll_and_retrain(db_url: str, tmp_path: Path, provider: MockServer) -> None:
    upgrade(db_url)
    config = write_config(tmp_path, provider.base_url, min_examples=20, retrain_after_new=10)
    key = {"flywheel_pipeline": "classify"}
    log_traffic(db_url, provider.base_url, 0, 12)

    first = one_pass(db_url, config)
    decision = first.pipelines[0].decision
    assert decision is not None and not decision.launch
    assert decision.reason.endswith("of 20 examples, not launching")
    assert jobs_json(db_url) == []

    log_traffic(db_url, provider.base_url, 12, 20)
    launched = one_pass(db_url, config).pipelines[0]
    assert launched.decision is not None and launched.decision.launch
    job = launched.launch.job if launched.launch else None
    assert job is not None and job.provider_job_id is not None
    assert job.train_examples is not None and job.train_examples >= 20
    assert job.estimated_cost_usd is not None and job.estimated_cost_usd > 0
    assert [j.id for j in provider_jobs(provider.base_url, **key)] == [job.provider_job_id]

    # Polled to success: the fine-tuned model's id lands in `flywheel jobs --json` and in SQL.
    def succeeded() -> dict[str, Any] | None:
        one_pass(db_url, config)
        listed = jobs_json(db_url, "classify")
        return listed[0] if listed and listed[0]["status"] == "succeeded" else None

    done = until(succeeded, timeout=30, step=0.1)
    assert done["fine_tuned_model"].startswith(f"ft:{BASE_MODEL}:")
    assert ":classify:" in done["fine_tuned_model"]
    for field in ("id", "pipeline", "provider", "provider_job_id", "dataset", "dataset_version"):
        assert done[field] is not None
    assert rows(db_url, "SELECT fine_tuned_model FROM fine_tune_jobs WHERE status = 'succeeded'") == [
        (done["fine_tuned_model"],)
    ]
    history = [
        r[0]
        for r in rows(db_url, "SELECT message FROM fine_tune_job_events WHERE kind = 'status' ORDER BY id")
    ]
    assert history[-1] == "running -> succeeded"
    assert rows(db_url, "SELECT count(*) FROM fine_tune_job_events WHERE kind = 'metrics'")[0][0] > 0

    # No new data: nothing is launched.
    quiet = one_pass(db_url, config).pipelines[0]
    assert quiet.decision is not None and not quiet.decision.launch and quiet.launch is None
    # Fewer new examples than retrain_after_new: still nothing.
    log_traffic(db_url, provider.base_url, 32, 4)
    few = one_pass(db_url, config).pipelines[0]
    assert few.decision is not None and not few.decision.launch
    assert "of 10 new examples" in few.decision.reason
    assert len(provider_jobs(provider.base_url, **key)) == 1
    # Enough of them: a second job, on a new dataset version.
    log_traffic(db_url, provider.base_url, 36, 14)
    again = one_pass(db_url, config).pipelines[0]
    assert again.decision is not None and again.decision.launch
    listed = jobs_json(db_url)
    assert len(listed) == 2 and listed[0]["dataset_version"] > listed[1]["dataset_version"]
    assert len(provider_jobs(provider.base_url, **key)) == 2

    # The uploaded training file is the export's, valid, and holds no test-split example.
    second = list_jobs(db_url, "classify")[0]
    uploaded = _file_content(provider.base_url, second.files["training_file"])
    manifest = orjson.loads((Path(second.export_dir or "") / "manifest.json").read_bytes())
    assert hashlib.sha256(uploaded).hexdigest() == manifest["files"]["train.jsonl"]["sha256"]
    lines = [orjson.loads(line) for line in uploaded.splitlines()]
    assert validate_dataset(
        [(f"train.jsonl:{n}", line) for n, line in enumerate(lines, 1)], base_model=BASE_MODEL
    ).ok
    test_ids = set(manifest["splits"]["test"])
    assert test_ids and not test_ids & set(manifest["splits"]["train"])
    requests = rows(db_url, "SELECT request FROM calls WHERE id IN " + _in(test_ids))
    held_out = {_user_text(orjson.loads(r[0]) if isinstance(r[0], str) else r[0]) for r in requests}
    trained_on = {_user_text(line) for line in lines}
    assert len(held_out) == len(test_ids) and not held_out & trained_on

    # The key is in no table and no file the run wrote.
    assert API_KEY not in every_text_in_store(db_url)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def _user_text(body: dict[str, Any]) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def _in(ids: set[str]) -> str:
    return "(" + ", ".join(f"'{i}'" for i in sorted(ids)) + ")"


def _file_content(base_url: str, file_id: str) -> bytes:
    client = openai.OpenAI(api_key="sk-test", base_url=base_url)
    with client:
        return client.files.content(file_id).read()
