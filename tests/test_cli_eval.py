"""``flywheel eval`` / ``eval report`` / ``promote`` on the command line: the judge through a run, the
report as text, JSON and HTML (opened in headless Chromium: its numbers are the JSON's), promotion
history and rollback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from browser import dom_numbers, render_in_chromium, report_numbers
from click.testing import CliRunner

from flywheel.cli import cli
from flywheel.train.config import load_config
from flywheel.train.steps import export_for_training, run_steps
from tests.eval_helpers import EvalUpstream, log_tickets, topic_of, weak_answer, write_eval_config
from tests.sdk_helpers import prepare_store
from tests.train_helpers import rows


@pytest.fixture
def upstream() -> Iterator[EvalUpstream]:
    with EvalUpstream() as server:
        yield server


@pytest.fixture
def config(db_url: str, upstream: EvalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLYWHEEL_TEST_EVAL_KEY", "sk-eval-key")
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", db_url)
    path = write_eval_config(tmp_path, upstream.base_url, extra="bias_sample = 0.5")
    pipeline = load_config(path).pipeline("classify")
    prepare_store(db_url)
    log_tickets(db_url, upstream.base_url, 0, 40)
    run_steps(db_url, pipeline)
    export_for_training(db_url, pipeline, tmp_path / "export")
    upstream.seen.clear()
    return path


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def test_eval_with_a_judge_then_the_report_as_text_json_and_html(
    config: Path, upstream: EvalUpstream, tmp_path: Path
) -> None:
    ran = invoke("eval", "classify", "--models", "gpt-4o-mini,gpt-4o", "--judge", "judge", "--seed", "5",
                 "--config", str(config), "--json")  # fmt: skip
    assert ran.exit_code == 0, ran.output
    run = orjson.loads(ran.output)
    assert run["finished"] and run["judged"]["failed"] == 0
    # gpt-4o equals the reference on every item: all ties, no judge call for it.
    judged_tickets = {seen.ticket for seen in upstream.calls("judge")}
    assert run["judged"]["decided"] >= run["examples"]

    html = tmp_path / "report.html"
    shown = invoke("eval", "report", "classify", "--config", str(config), "--json", "--html", str(html))
    assert shown.exit_code == 0, shown.output
    report = orjson.loads(shown.output)
    by_model = {model["model"]: model for model in report["models"]}
    assert by_model["gpt-4o"]["judge"]["ties"]["value"] == 1.0
    weak = by_model["gpt-4o-mini"]["judge"]
    # The judge prefers the right label; an answer with the right label and an extra key ties.
    wrong = {ticket for ticket in judged_tickets if topic_of(ticket) != "invoice"}
    assert weak["losses"]["count"] == len(wrong) > 0
    assert weak["position_agreement"]["value"] == 1.0  # a consistent judge agrees with itself

    page = render_in_chromium(html)
    assert page.console_errors == []
    assert dom_numbers(page.dom) == report_numbers(report)

    text = invoke("eval", "report", "classify", "--config", str(config))
    assert text.exit_code == 0
    assert "format correctness" in text.output and "answer correctness" in text.output
    exact = by_model["gpt-4o-mini"]["metrics"]["exact_match"]
    assert (
        f"{exact['value'] * 100:.1f}% [{exact['ci_low'] * 100:.1f}, {exact['ci_high'] * 100:.1f}]"
        in text.output
    )


def test_promote_and_rollback_with_history(config: Path, db_url: str) -> None:
    first = invoke("promote", "classify", "ft:gpt-4o-mini:acme:classify:1", "--config", str(config), "--json")
    assert first.exit_code == 0, first.output
    assert orjson.loads(first.output)["previous_model"] == "gpt-4o-mini-2024-07-18"  # the base model
    invoke("promote", "classify", "ft:gpt-4o-mini:acme:classify:2", "--config", str(config))
    again = invoke("promote", "classify", "ft:gpt-4o-mini:acme:classify:2", "--config", str(config))
    assert again.exit_code == 2 and "already the current model" in again.output
    back = invoke("promote", "classify", "--rollback", "--config", str(config))
    assert (
        back.exit_code == 0
        and "ft:gpt-4o-mini:acme:classify:2 -> ft:gpt-4o-mini:acme:classify:1" in back.output
    )
    invoke("promote", "classify", "--rollback", "--config", str(config))
    empty = invoke("promote", "classify", "--rollback", "--config", str(config))
    assert (
        empty.exit_code == 2
        and "nothing to roll back to (current model: gpt-4o-mini-2024-07-18)" in empty.output
    )
    history = orjson.loads(
        invoke("promote", "classify", "--history", "--config", str(config), "--json").output
    )
    assert [item["action"] for item in history] == ["promote", "promote", "rollback", "rollback"]
    assert (
        rows(db_url, "SELECT model FROM promotions ORDER BY id DESC LIMIT 1")[0][0]
        == "gpt-4o-mini-2024-07-18"
    )
    both = invoke("promote", "classify", "x", "--rollback", "--config", str(config))
    assert both.exit_code == 2


def test_report_errors(config: Path) -> None:
    missing = invoke("eval", "report", "classify", "--config", str(config))
    assert missing.exit_code == 2 and "has no eval run yet" in missing.output
    unknown = invoke("eval", "report", "classify", "--run", "nope", "--config", str(config))
    assert unknown.exit_code == 2 and "no eval run 'nope'" in unknown.output
    empty = invoke("eval", "classify", "--models", ",", "--config", str(config))
    assert empty.exit_code == 2 and "give at least one model" in empty.output


def test_eval_prints_what_it_did_and_how_to_continue(config: Path, upstream: EvalUpstream) -> None:
    ran = invoke("eval", "classify", "--models", "gpt-4o", "--judge", "judge", "--config", str(config))
    assert ran.exit_code == 0, ran.output
    assert "1 candidates (gpt-4o)" in ran.output and "0 already done" in ran.output
    # gpt-4o answers every example as the reference does: no judge call at all.
    assert "judge: 0 verdicts asked" in ran.output and upstream.calls("judge") == []
    assert "Report: flywheel eval report classify" in ran.output
    again = invoke("eval", "classify", "--models", "gpt-4o", "--judge", "judge", "--config", str(config))
    assert "(continued)" not in again.output  # a finished run is not continued: a new one starts


def test_judge_against_another_candidate(config: Path, upstream: EvalUpstream) -> None:
    ran = invoke("eval", "classify", "--models", "gpt-4o-mini,gpt-4o", "--judge", "judge",
                 "--judge-against", "gpt-4o", "--seed", "3", "--config", str(config), "--json")  # fmt: skip
    assert ran.exit_code == 0, ran.output
    report = orjson.loads(invoke("eval", "report", "classify", "--config", str(config), "--json").output)
    assert report["judge"]["opponent"] == "gpt-4o"
    weak, strong = report["models"]
    assert "judge" not in strong  # the opponent is not judged against itself
    # Same answers from both models are ties without a call; the judge saw only the rest.
    asked = {seen.ticket for seen in upstream.calls("judge")}
    differing = {
        seen.ticket
        for seen in upstream.calls("gpt-4o-mini")
        if weak_answer(topic_of(seen.ticket or 0)) != (f'{{"label": "{topic_of(seen.ticket or 0)}"}}')
    }
    assert asked == differing
    assert weak["judge"]["opponent"] == "gpt-4o"
    assert weak["judge"]["ties"]["count"] >= weak["n"] - len(differing)
    bad = invoke("eval", "classify", "--models", "gpt-4o", "--judge", "judge", "--judge-against", "gpt-5",
                 "--config", str(config))  # fmt: skip
    assert bad.exit_code == 2 and "'gpt-5' is not among the candidates" in bad.output


def test_user_scorers_from_the_config_are_reported(
    db_url: str, upstream: EvalUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scorers = tmp_path / "scorers_dir"
    scorers.mkdir()
    (scorers / "ticket_scorers.py").write_text(
        "import json\n\n"
        "def says_other(output, reference, example):\n"
        "    if output is None or not (output.get('content') or '').startswith('{'):\n"
        "        return None\n"
        "    return json.loads(output['content']).get('label') == 'other'\n"
    )
    monkeypatch.syspath_prepend(str(scorers))
    monkeypatch.setenv("FLYWHEEL_TEST_EVAL_KEY", "sk-eval-key")
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", db_url)
    path = write_eval_config(tmp_path, upstream.base_url, extra='scorers = ["ticket_scorers:says_other"]')
    pipeline = load_config(path).pipeline("classify")
    prepare_store(db_url)
    log_tickets(db_url, upstream.base_url, 0, 40)
    run_steps(db_url, pipeline)
    manifest = export_for_training(db_url, pipeline, tmp_path / "export").manifest
    assert invoke("eval", "classify", "--models", "gpt-4o-mini", "--config", str(path)).exit_code == 0
    report = orjson.loads(invoke("eval", "report", "classify", "--config", str(path), "--json").output)
    says_other = report["models"][0]["metrics"]["says_other"]
    tickets = [seen.ticket for seen in upstream.calls("gpt-4o-mini")]
    answered_json = [t for t in tickets if weak_answer(topic_of(t or 0)).startswith("{")]
    other = [t for t in answered_json if topic_of(t or 0) in ("refund", "login")]
    assert says_other["n"] == len(answered_json) and len(tickets) == len(manifest["splits"]["test"])
    assert says_other["value"] == pytest.approx(len(other) / len(answered_json), abs=1e-6)
