"""``flywheel eval``: runs on the test split through the SDK, scores, resume after SIGKILL, bad inputs.

The upstream is a real HTTP server on loopback (``tests/eval_helpers.EvalUpstream``) whose models
answer in known ways; the store is SQLite and PostgreSQL; the CLI runs as its own process where a
crash is the point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from flywheel.datasets import get_dataset, update_dataset
from flywheel.errors import UsageError
from flywheel.evaluate.intervals import wilson
from flywheel.evaluate.report import eval_report
from flywheel.evaluate.run import EvalError, run_eval
from flywheel.train.config import load_config
from flywheel.train.steps import export_for_training, run_steps
from tests.eval_helpers import EvalUpstream, log_tickets, topic_of, weak_answer, write_eval_config
from tests.sdk_helpers import prepare_store
from tests.train_helpers import rows, until

KEY_ENV = "FLYWHEEL_TEST_EVAL_KEY"


@pytest.fixture
def upstream() -> Iterator[EvalUpstream]:
    with EvalUpstream() as server:
        yield server


@pytest.fixture
def exported(db_url: str, upstream: EvalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Pipeline ``classify`` with 48 logged tickets, its dataset built and exported (30 % test)."""
    monkeypatch.setenv(KEY_ENV, "sk-eval-SECRET-0b1c")
    config = write_eval_config(tmp_path, upstream.base_url)
    pipeline = load_config(config).pipeline("classify")
    prepare_store(db_url)
    log_tickets(db_url, upstream.base_url, 0, 48)
    run_steps(db_url, pipeline)
    result = export_for_training(db_url, pipeline, tmp_path / "export")
    upstream.seen.clear()
    return pipeline, result.manifest, config


def test_each_model_answers_the_test_split_and_is_scored(
    db_url: str, upstream: EvalUpstream, exported: Any
) -> None:
    pipeline, manifest, _ = exported
    test_ids = manifest["splits"]["test"]
    result = run_eval(db_url, pipeline, ["gpt-4o-mini", "gpt-4o"], seed=7)
    assert result.finished and result.examples == len(test_ids) and result.answered == 2 * len(test_ids)
    assert len(upstream.calls("gpt-4o-mini")) == len(upstream.calls("gpt-4o")) == len(test_ids)

    report = eval_report(db_url, pipeline)
    assert report["run_id"] == result.run_id and report["examples"] == len(test_ids)
    by_model = {model["model"]: model for model in report["models"]}
    strong, weak = by_model["gpt-4o"], by_model["gpt-4o-mini"]
    assert strong["metrics"]["exact_match"]["value"] == 1.0
    assert strong["metrics"]["json_valid"]["value"] == 1.0

    # The weak model's numbers, computed here from the tickets on the test side.
    tickets = [int(row[0].split(":")[0].split()[-1]) for row in _user_texts(db_url, test_ids)]
    answers = [weak_answer(topic_of(ticket)) for ticket in tickets]
    right = sum(answer == f'{{"label": "{topic_of(t)}"}}' for answer, t in zip(answers, tickets, strict=True))
    parsed = sum(answer.startswith("{") for answer in answers)
    assert weak["metrics"]["exact_match"] == wilson(right, len(tickets)).as_dict()
    assert weak["metrics"]["json_valid"] == wilson(parsed, len(tickets)).as_dict()
    no_extra = sum(answer.startswith("{") and "confidence" not in answer for answer in answers)
    assert weak["metrics"]["json_no_extra_keys"] == wilson(no_extra, len(tickets)).as_dict()
    assert weak["fields"]["label"]["value"] == pytest.approx(
        (right + answers.count(weak_answer("invoice"))) / len(tickets)
    )
    # Cost and latency come from the recorded calls: gpt-4o costs more per request than gpt-4o-mini.
    assert strong["cost_per_1k_usd"] > weak["cost_per_1k_usd"] > 0
    assert strong["latency_p50_ms"] > 0 and strong["latency_p95_ms"] >= strong["latency_p50_ms"]
    assert len(strong["latencies_ms"]) == len(test_ids)


def test_eval_calls_are_tagged_and_never_become_training_data(
    db_url: str, upstream: EvalUpstream, exported: Any
) -> None:
    pipeline, manifest, _ = exported
    before = get_dataset(db_url, "classify", history=False).entries
    result = run_eval(db_url, pipeline, ["gpt-4o"])
    tagged = rows(
        db_url,
        "SELECT count(*) FROM call_tags WHERE key = 'flywheel_eval' AND value = :run",
        run=result.run_id,
    )
    assert tagged[0][0] == len(manifest["splits"]["test"])
    # The eval calls match the pipeline's filter's model and endpoint, yet the dataset takes none in.
    added = update_dataset(db_url, "classify")
    assert added.added == 0 and get_dataset(db_url, "classify", history=False).entries == before
    linked = rows(
        db_url,
        "SELECT count(*) FROM eval_outputs WHERE eval_call_id IS NOT NULL AND run_id = :run",
        run=result.run_id,
    )
    assert linked[0][0] == len(manifest["splits"]["test"])


def test_few_shot_baseline_gets_training_examples_as_prior_turns(
    db_url: str, upstream: EvalUpstream, exported: Any
) -> None:
    pipeline, manifest, _ = exported
    result = run_eval(db_url, pipeline, ["gpt-4o-mini"], few_shot=3, few_shot_select="similar", seed=3)
    assert result.candidates == ["gpt-4o-mini+3shot", "gpt-4o-mini"]
    shots = [body for body in upstream.bodies if len(body["messages"]) > 2]
    assert len(shots) == len(manifest["splits"]["test"])
    train_tickets = {row[0] for row in _user_texts(db_url, manifest["splits"]["train"])}
    for body in shots:
        messages = body["messages"]
        assert [m["role"] for m in messages] == ["system", *["user", "assistant"] * 3, "user"]
        assert all(m["content"] in train_tickets for m in messages[1:-1:2])  # shots come from train
        asked = messages[-1]["content"].split(": my ")[1].split()[0]
        # "similar": the ticket's own topic is among the shots (shared words).
        assert any(asked in m["content"] for m in messages[1:-1:2])
    report = eval_report(db_url, pipeline)
    assert [m["model"] for m in report["models"]] == ["gpt-4o-mini+3shot", "gpt-4o-mini"]
    assert report["models"][0]["few_shot"] == 3 and report["models"][0]["base_model"] == "gpt-4o-mini"


def test_a_run_killed_mid_way_repeats_no_finished_item(
    db_url: str, upstream: EvalUpstream, exported: Any, tmp_path: Path
) -> None:
    _, manifest, config = exported
    total = len(manifest["splits"]["test"])
    args = ["eval", "classify", "--models", "slow-model", "--concurrency", "2", "--config", str(config)]
    first = _flywheel(args, tmp_path, db_url)
    until(lambda: _stored(db_url) >= 4 or first.poll() is not None, timeout=60)
    assert first.poll() is None, first.communicate()
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    done_before = {row[0] for row in rows(db_url, "SELECT call_id FROM eval_outputs")}
    assert 4 <= len(done_before) < total
    asked_before = len(upstream.calls("slow-model"))
    second = _flywheel(args, tmp_path, db_url)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "(continued)" in out
    asked_again = upstream.calls("slow-model")[asked_before:]
    tickets_done = {
        int(text.split(":")[0].split()[-1]) for (text,) in _user_texts(db_url, sorted(done_before))
    }
    assert not tickets_done & {seen.ticket for seen in asked_again}
    assert _stored(db_url) == total
    assert rows(db_url, "SELECT count(*), min(status) FROM eval_runs")[0] == (1, "finished")


def test_bad_inputs_are_clear_errors(
    db_url: str, upstream: EvalUpstream, exported: Any, tmp_path: Path
) -> None:
    pipeline, _, config = exported
    with pytest.raises(UsageError, match="at least one model"):
        run_eval(db_url, pipeline, [""])
    with pytest.raises(UsageError, match="listed twice"):
        run_eval(db_url, pipeline, ["gpt-4o", "gpt-4o"])
    unknown = _flywheel(["eval", "classfy", "--models", "gpt-4o", "--config", str(config)], tmp_path, db_url)
    _, err = unknown.communicate(timeout=60)
    assert unknown.returncode == 2 and "no pipeline named 'classfy' (did you mean 'classify'?)" in err
    # A model the API does not know stops the run; what was stored stays.
    first = run_eval(db_url, pipeline, ["gpt-4o"])
    with pytest.raises(EvalError, match="missing-model: Error code: 404"):
        run_eval(db_url, pipeline, ["missing-model"])
    assert rows(db_url, "SELECT count(*) FROM eval_outputs WHERE run_id = :r", r=first.run_id)[0][0] > 0
    assert (
        eval_report(db_url, pipeline, run_id=first.run_id)["models"][0]["metrics"]["exact_match"]["value"]
        == 1
    )


def test_no_test_split_yet(
    db_url: str, upstream: EvalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-x")
    pipeline = load_config(write_eval_config(tmp_path, upstream.base_url)).pipeline("classify")
    prepare_store(db_url)
    log_tickets(db_url, upstream.base_url, 0, 5)
    run_steps(db_url, pipeline)
    with pytest.raises(UsageError, match="no test split yet: dataset 'classify' was never exported"):
        run_eval(db_url, pipeline, ["gpt-4o"])
    with pytest.raises(UsageError, match="has no eval run yet"):
        eval_report(db_url, pipeline)


def test_secrets_never_reach_the_store(db_url: str, upstream: EvalUpstream, exported: Any) -> None:
    pipeline, _, _ = exported
    run_eval(db_url, pipeline, ["gpt-4o"])
    from tests.train_helpers import every_text_in_store

    assert "sk-eval-SECRET-0b1c" not in every_text_in_store(db_url)


# --- helpers ----------------------------------------------------------------------------------------


def _user_texts(db_url: str, call_ids: list[str]) -> list[tuple[str]]:
    found = {
        call_id: (request if isinstance(request, dict) else orjson.loads(request))["messages"][-1]["content"]
        for call_id, request in rows(db_url, "SELECT id, request FROM calls")
        if call_id in set(call_ids)
    }
    return [(found[call_id],) for call_id in call_ids]


def _stored(db_url: str) -> int:
    return int(rows(db_url, "SELECT count(*) FROM eval_outputs")[0][0])


def _flywheel(args: list[str], cwd: Path, db_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": db_url}
    return subprocess.Popen(
        [sys.executable, "-m", "flywheel", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
