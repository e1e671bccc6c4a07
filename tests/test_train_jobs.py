"""The job store (claim, lease, take-over, state and events), the thresholds and the cost estimate."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from recorded_calls import record_chats

from flywheel.datasets import create_dataset
from flywheel.query import CallFilter, connect
from flywheel.train import jobs
from flywheel.train.config import parse_config
from flywheel.train.cost import auto_epochs, estimate_cost
from flywheel.train.providers.base import JobEvent, JobState
from flywheel.train.thresholds import TrainSideCounts, decide
from sdk._pricing import PriceTable

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
JOBS = Path("/srv/flywheel/.flywheel/jobs")


def _dataset(db_url: str) -> tuple[int, int]:
    record_chats(db_url, [f"question {n}" for n in range(3)], tags={"prompt_id": "qa"})
    made = create_dataset(db_url, "qa", CallFilter(tags={"prompt_id": "qa"}))
    return made.dataset.id, made.dataset.version


def _claim(dataset_id: int, version: int, attempt: int = 1) -> jobs.Claim:
    return jobs.Claim(
        "qa", dataset_id, version, attempt, "openai", "gpt-4o-mini", "supervised", {}, None, None, {}
    )


def test_a_dataset_version_is_claimed_once(db_url: str) -> None:
    dataset_id, version = _dataset(db_url)
    with connect(db_url) as conn:
        first = jobs.claim_job(conn, _claim(dataset_id, version), "host:1:a", NOW, JOBS)
        second = jobs.claim_job(conn, _claim(dataset_id, version), "host:2:b", NOW, JOBS)
        retry = jobs.claim_job(conn, _claim(dataset_id, version, attempt=2), "host:2:b", NOW, JOBS)
    assert first is not None and first.status == jobs.PREPARING and first.claimed_by == "host:1:a"
    assert first.work_dir == JOBS / first.key
    assert second is None
    assert retry is not None and retry.attempt == 2 and retry.key != first.key
    assert len(jobs.list_jobs(db_url, "qa")) == 2


def test_take_over_needs_an_expired_lease_or_a_dead_claimant(db_url: str) -> None:
    dataset_id, version = _dataset(db_url)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_claimant = f"{os.uname().nodename}:{dead.stdout.strip()}:x"
    with connect(db_url) as conn:
        job = jobs.claim_job(conn, _claim(dataset_id, version), "elsewhere:1:a", NOW, JOBS)
        assert job is not None
        assert jobs.take_over(conn, job, "me:1:b", NOW + timedelta(minutes=1)) is None  # lease held
        taken = jobs.take_over(conn, job, "me:1:b", NOW + jobs.LEASE)
        assert taken is not None and taken.claimed_by == "me:1:b"
        # The old claimant's compare-and-set now fails: it lost the job.
        assert not jobs.renew(conn, job.id, "elsewhere:1:a", NOW + jobs.LEASE)
        assert jobs.renew(conn, job.id, "me:1:b", NOW + jobs.LEASE, files={"training_file": "file-1"})
        # Stale view of the row (claimant "elsewhere"): a second take-over of it cannot win.
        assert jobs.take_over(conn, job, "third:1:c", NOW + 2 * jobs.LEASE) is None
    with connect(db_url) as conn:
        other = jobs.claim_job(conn, _claim(dataset_id, version, attempt=2), dead_claimant, NOW, JOBS)
        assert other is not None
        assert jobs.claimant_is_gone(dead_claimant)
        assert jobs.take_over(conn, other, "me:1:b", NOW) is not None  # lease valid, process gone
    assert not jobs.claimant_is_gone(jobs.claimant())


def test_state_and_events_are_recorded_once(db_url: str) -> None:
    dataset_id, version = _dataset(db_url)
    step = [
        JobEvent(
            NOW, f"Step {n}", kind="metrics", data={"step": n, "train_loss": 1 / n}, provider_event_id=f"e{n}"
        )
        for n in (1, 2, 3)
    ]
    with connect(db_url) as conn:
        job = jobs.claim_job(conn, _claim(dataset_id, version), "me:1:a", NOW, JOBS)
        assert job is not None
        running = jobs.record_state(conn, job, JobState("ftjob-1", "running", events=tuple(step[:2])), NOW)
        again = jobs.record_state(conn, running, JobState("ftjob-1", "running", events=tuple(step)), NOW)
        done = jobs.record_state(
            conn, again, JobState("ftjob-1", "succeeded", fine_tuned_model="ft:x", trained_tokens=99), NOW
        )
    assert (done.status, done.fine_tuned_model, done.trained_tokens, done.last_event_id) == (
        "succeeded",
        "ft:x",
        99,
        "e3",
    )
    assert done.finished and done.finished_at is not None
    shown = jobs.get_job(db_url, done.id)
    metrics = [event["data"]["step"] for event in shown.events if event["kind"] == "metrics"]
    statuses = [event["message"] for event in shown.events if event["kind"] == "status"]
    assert metrics == [1, 2, 3]
    assert statuses[1:] == ["preparing -> running", "running -> succeeded"]


CONFIG = """
[pipelines.qa]
filter = {{ tags = {{ prompt_id = "qa" }} }}
[pipelines.qa.train]
provider = "openai"
base_model = "gpt-4o-mini-2024-07-18"
min_examples = 100
retrain_after_new = 50
{extra}
"""


def _train(extra: str = "") -> object:
    train = parse_config(CONFIG.format(extra=extra)).pipeline("qa").train
    assert train is not None
    return train


def _job(version: int, created: datetime = NOW, status: str = "succeeded") -> jobs.TrackedJob:
    return jobs.TrackedJob(
        **{
            **dict.fromkeys(jobs.TrackedJob.__dataclass_fields__),
            "id": 7,
            "dataset_version": version,
            "created_at": created,
            "status": status,
            "events": [],
        }
    )


def test_thresholds() -> None:
    train = _train()
    first = decide(train, TrainSideCounts(87, 0), 3, None, None, NOW)  # type: ignore[arg-type]
    assert (first.launch, first.reason) == (False, "87 of 100 examples, not launching")
    assert decide(train, TrainSideCounts(100, 0), 3, None, None, NOW).launch  # type: ignore[arg-type]
    later = decide(train, TrainSideCounts(400, 49), 5, _job(3), None, NOW)  # type: ignore[arg-type]
    assert not later.launch and later.reason.startswith("49 of 50 new examples since job 7")
    assert decide(train, TrainSideCounts(400, 50), 5, _job(3), None, NOW).launch  # type: ignore[arg-type]
    same = decide(train, TrainSideCounts(400, 50), 3, _job(3), None, NOW)  # type: ignore[arg-type]
    assert not same.launch and "no new dataset version" in same.reason
    busy = decide(train, TrainSideCounts(400, 80), 5, _job(3), _job(3, status="running"), NOW)  # type: ignore[arg-type]
    assert not busy.launch and "is running" in busy.reason
    spaced = _train('min_interval = "6h"')
    early = decide(spaced, TrainSideCounts(400, 80), 5, _job(3), None, NOW + timedelta(hours=2))  # type: ignore[arg-type]
    assert not early.launch and "min_interval leaves 4h00m" in early.reason
    late = decide(spaced, TrainSideCounts(400, 80), 5, _job(3), None, NOW + timedelta(hours=6))  # type: ignore[arg-type]
    assert late.launch


def test_cost_estimate_uses_the_price_table_and_openai_epochs() -> None:
    prices = PriceTable.load()
    assert [auto_epochs(n) for n in (10, 34, 100, 8_333, 10_000, 50_000)] == [10, 3, 3, 3, 2, 1]
    fixed = estimate_cost("gpt-4o-mini-2024-07-18", 1_000_000, 500, {"n_epochs": 2}, prices)
    assert (fixed.epochs, fixed.price_per_million, fixed.usd) == (2, 3.0, 6.0)
    auto = estimate_cost("gpt-4o-mini", 200_000, 20, {}, prices)
    assert auto.epochs == 5 and auto.usd == pytest.approx(3.0)
    unknown = estimate_cost("llama3-8b", 1000, 20, {}, prices)
    assert unknown.usd is None
