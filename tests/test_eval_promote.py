"""``[pipelines.NAME.promote]``: ``flywheel watch`` evaluates a succeeded job's model against the
current model and promotes it only when it wins by the margin; each job is decided once.

Training runs on the mock server's fine-tuning API; the candidates answer on a real loopback
upstream (``EvalUpstream``) where the fine-tuned model is right and the base model is not always.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.evaluate.promote import promote
from flywheel.evaluate.report import eval_report
from flywheel.evaluate.run import run_eval
from flywheel.mock_server import FineTuneTiming, MockServer
from flywheel.train.config import load_config
from flywheel.train.watch import PassResult, Watcher
from sdk._pricing import PriceTable
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


def test_break_even_against_the_model_a_fine_tune_replaces(
    db_url: str, servers: tuple[MockServer, EvalUpstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mock, upstream = servers
    monkeypatch.setenv("FLYWHEEL_TEST_EVAL_KEY", "sk-eval")
    prepare_store(db_url)
    log_tickets(db_url, upstream.base_url, 0, 48)
    config = load_config(_config(tmp_path, mock, upstream, 0.05))
    promoted = _until_decided(Watcher(db_url, config)).promotions[0]["model"]
    pipeline = config.pipeline("classify")
    # The app used gpt-4o before: evaluate the fine-tune against it, with it as the current model.
    promote(db_url, pipeline, "gpt-4o")
    run_eval(db_url, pipeline, ["gpt-4o", promoted])
    big, tuned = eval_report(db_url, pipeline)["models"]
    training = tuned["training"]
    job = rows(db_url, "SELECT id, base_model, trained_tokens FROM fine_tune_jobs")[0]
    price = PriceTable.load().training_price(job.base_model)
    assert price is not None and job.trained_tokens
    assert training["job_id"] == job.id and training["compared_with"] == "gpt-4o"
    assert training["training_cost_usd"] == pytest.approx(job.trained_tokens * price / 1e6)
    saving = big["cost_per_1k_usd"] - tuned["cost_per_1k_usd"]
    assert saving > 0 and training["saving_per_1k_usd"] == pytest.approx(saving, abs=1e-6)
    assert training["break_even_requests"] == math.ceil(
        training["training_cost_usd"] / (training["saving_per_1k_usd"] / 1000)
    )
    assert big["training"] is None
