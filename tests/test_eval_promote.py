"""``[pipelines.NAME.promote]``: ``flywheel watch`` evaluates a succeeded job's model against the
current model and promotes it only when it wins by the margin; each job is decided once.

Training runs on the mock server's fine-tuning API; the candidates answer on a real loopback
upstream (``EvalUpstream``) where the fine-tuned model is right and the base model is not always.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.mock_server import FineTuneTiming, MockServer
from flywheel.train.config import load_config
from flywheel.train.watch import PassResult, Watcher
from tests.eval_helpers import EvalUpstream, log_tickets, write_eval_config
from tests.sdk_helpers import prepare_store
from tests.train_helpers import rows


@pytest.fixture
def servers() -> Iterator[tuple[MockServer, EvalUpstream]]:
    timing = FineTuneTiming(validating_s=0.1, queued_s=0.1, running_s=0.2)
    with MockServer(fine_tune=timing) as mock, EvalUpstream() as upstream:
        yield mock, upstream


def _config(directory: Path, mock: MockServer, upstream: EvalUpstream, margin: float) -> Path:
    promote = f"""
[pipelines.classify.promote]
metric = "exact_match"
margin = {margin}
min_examples = 5
"""
    return write_eval_config(directory, upstream.base_url, train_url=mock.base_url, extra=promote)


def _until_decided(watcher: Watcher, passes: int = 200) -> PassResult:
    for _ in range(passes):
        result = watcher.run_pass()
        assert result.errors == 0, result.as_dict()
        if result.promotions:
            return result
    raise AssertionError("no promotion decision")


@pytest.mark.parametrize(("margin", "promoted"), [(0.05, True), (0.99, False)])
def test_watch_promotes_a_better_job_by_the_margin_once(
    db_url: str,
    servers: tuple[MockServer, EvalUpstream],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    margin: float,
    promoted: bool,
) -> None:
    mock, upstream = servers
    monkeypatch.setenv("FLYWHEEL_TEST_EVAL_KEY", "sk-eval")
    prepare_store(db_url)
    log_tickets(db_url, upstream.base_url, 0, 48)
    watcher = Watcher(db_url, load_config(_config(tmp_path, mock, upstream, margin)))
    decision = _until_decided(watcher).promotions[0]
    model = decision["model"]
    assert model.startswith("ft:gpt-4o-mini-2024-07-18:") and decision["promoted"] is promoted
    # Both models answered the same test split in one eval run; the job's event holds the numbers.
    run = rows(db_url, "SELECT id, candidates FROM eval_runs")
    assert len(run) == 1 and decision["run_id"] == run[0][0]
    candidates = str(run[0][1])  # JSON text on SQLite, parsed JSONB on PostgreSQL
    assert "'gpt-4o-mini-2024-07-18'" in candidates.replace('"', "'") and model in candidates
    events = rows(
        db_url,
        "SELECT message FROM fine_tune_job_events WHERE kind = 'decision' AND message LIKE 'promotion:%'",
    )
    assert len(events) == 1 and "exact_match 1.0000 vs gpt-4o-mini-2024-07-18 0." in events[0][0]
    current = rows(db_url, "SELECT model, eval_run_id, reason FROM promotions ORDER BY id DESC")
    if promoted:
        assert current[0][0] == model and current[0][1] == run[0][0] and "margin 0.05" in current[0][2]
    else:
        assert current == [] and "not promoted" in events[0][0]
    # Decided once: later passes neither evaluate nor decide again.
    asked = len(upstream.seen)
    assert watcher.run_pass().promotions == []
    assert len(upstream.seen) == asked
