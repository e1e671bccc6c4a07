"""Never a double launch: two watchers at once on PostgreSQL, and watchers SIGKILLed after the upload
and while the create request is in flight; every restart ends with exactly one provider job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import (
    API_KEY,
    API_KEY_ENV,
    flywheel_process,
    log_traffic,
    provider_jobs,
    rows,
    until,
    write_config,
)

from flywheel.mock_server import FineTuneTiming, MockServer
from flywheel.train.config import load_config
from flywheel.train.watch import Watcher
from sdk._migrate import upgrade

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


def _over_threshold(db_url: str, tmp_path: Path, base_url: str) -> Path:
    """A store whose classify pipeline has its dataset and is over its threshold, no job yet."""
    upgrade(db_url)
    config = write_config(tmp_path, base_url, min_examples=20)
    log_traffic(db_url, base_url, 0, 12)
    first = Watcher(db_url, load_config(config)).run_pass()
    assert first.errors == 0 and first.pipelines[0].launch is None
    log_traffic(db_url, base_url, 12, 20)
    return config


def _finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    from conftest import pg_schema_url

    return pg_schema_url(request.getfixturevalue("pg_database_url"))


def test_two_watchers_started_together_make_one_job(pg_url: str, tmp_path: Path) -> None:
    with MockServer(fine_tune=FineTuneTiming(validating_s=5, queued_s=5, running_s=5)) as server:
        config = _over_threshold(pg_url, tmp_path, server.base_url)
        watchers = [flywheel_process(["watch", "--once"], tmp_path, pg_url) for _ in range(2)]
        outcomes = [_finish(process) for process in watchers]
        jobs = provider_jobs(server.base_url, flywheel_pipeline="classify")
        assert len(jobs) == 1, outcomes
        assert rows(pg_url, "SELECT count(*), min(provider_job_id) FROM fine_tune_jobs") == [(1, jobs[0].id)]
        assert all(code == 0 for code, _ in outcomes), outcomes
        assert config.exists()


def test_two_launches_racing_for_one_version_claim_it_once(db_url: str, tmp_path: Path) -> None:
    """Below the pipeline lock: launches in separate processes at once, straight at the claim."""
    with MockServer(fine_tune=FineTuneTiming(validating_s=5, queued_s=5, running_s=5)) as server:
        config = _over_threshold(db_url, tmp_path, server.base_url)
        Watcher(db_url, load_config(config), pipelines=["classify"])  # config is valid
        script = (
            "import sys; from flywheel.train.config import load_config;"
            "from flywheel.train.launch import launch;"
            "c = load_config(sys.argv[1]); o = launch(sys.argv[2], c, c.pipeline('classify'));"
            "print('claimed' if o.job else 'lost')"
        )
        env = {**os.environ, API_KEY_ENV: API_KEY}
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(config), db_url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(3)
        ]
        said = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
        assert said == ["claimed", "lost", "lost"], said
        assert len(provider_jobs(server.base_url, flywheel_pipeline="classify")) == 1


@pytest.mark.parametrize("moment", ["after_upload", "create_in_flight"])
def test_watcher_killed_mid_launch_then_restarted_makes_one_job(
    db_url: str, tmp_path: Path, moment: str
) -> None:
    if moment == "after_upload":
        # The create request is held before the server acts on it; the watcher dies meanwhile, so
        # the provider never makes that job: the restart must create it (once).
        timing = FineTuneTiming(validating_s=5, queued_s=5, running_s=5, create_hold_s=3)
    else:
        # The server makes the job, then holds its answer; the watcher dies without seeing it: the
        # restart must find the job by its metadata and adopt it.
        timing = FineTuneTiming(validating_s=5, queued_s=5, running_s=5, create_answer_delay_s=30)
    with MockServer(fine_tune=timing) as server:
        _over_threshold(db_url, tmp_path, server.base_url)
        watcher = flywheel_process(["watch", "--once"], tmp_path, db_url, start_new_session=True)
        until(
            lambda: rows(db_url, "SELECT create_sent_at FROM fine_tune_jobs WHERE create_sent_at IS NOT NULL")
        )
        files = rows(db_url, "SELECT files FROM fine_tune_jobs")[0][0]
        assert "training_file" in str(files)  # the upload happened, and was recorded
        if moment == "create_in_flight":
            until(lambda: provider_jobs(server.base_url, flywheel_pipeline="classify"))
        os.killpg(watcher.pid, signal.SIGKILL)
        watcher.communicate(timeout=10)
        assert rows(db_url, "SELECT status, provider_job_id FROM fine_tune_jobs") == [("preparing", None)]

        restart = flywheel_process(["watch", "--once"], tmp_path, db_url)
        code, err = _finish(restart)
        assert code == 0, err
        jobs = provider_jobs(server.base_url, flywheel_pipeline="classify")
        assert len(jobs) == 1
        stored = rows(db_url, "SELECT status, provider_job_id FROM fine_tune_jobs")
        assert stored == [(jobs[0].status, jobs[0].id)] and stored[0][0] != "preparing"
        decisions = [
            r[0] for r in rows(db_url, "SELECT message FROM fine_tune_job_events WHERE kind = 'decision'")
        ]
        assert any(message.startswith("launch resumed by") for message in decisions)
        if moment == "create_in_flight":
            assert any("adopted it" in message for message in decisions), decisions
        else:
            assert any("creating it" in message for message in decisions), decisions
        # A second restart has nothing left to do.
        again = flywheel_process(["watch", "--once"], tmp_path, db_url)
        assert _finish(again)[0] == 0
        assert len(provider_jobs(server.base_url, flywheel_pipeline="classify")) == 1
