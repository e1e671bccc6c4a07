"""flywheel relabel: teacher calls through the mock server, recorded and tagged; crash and resume,
retries, failures, the concurrency bound, and the export using the new outputs; SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import sqlalchemy as sa
from recorded_calls import T0, chat_exchange, record, record_chats, scalar

import sdk
from flywheel.datasets import create_dataset, get_dataset, update_dataset
from flywheel.errors import UsageError
from flywheel.export import export_dataset
from flywheel.finetune_format import UnconvertibleCallError
from flywheel.query import CallFilter
from flywheel.relabel import (
    RelabelError,
    RelabelProgress,
    RelabelResult,
    relabel_dataset,
    teacher_output,
    teacher_request,
)

PROMPTS = [f"Order {1000 + n} arrived damaged, what now?" for n in range(12)]
TEACHER = "gpt-4o"


def make(db_url: str, prompts: list[str] = PROMPTS) -> list[str]:
    ids = record_chats(db_url, prompts, tags={"prompt_id": "support"})
    create_dataset(db_url, "support", CallFilter(tags={"prompt_id": "support"}))
    return ids


def relabel(db_url: str, server: Any, **kw: Any) -> RelabelResult:
    kw.setdefault("model", TEACHER)
    return relabel_dataset(db_url, "support", base_url=server.base_url, api_key="sk-test", **kw)


def rows(db_url: str, sql: str, **params: Any) -> list[Any]:
    assert sdk.flush(timeout=30)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def as_json(value: Any) -> Any:
    """A JSON column read by a textual query: text on SQLite, already decoded on PostgreSQL."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def outputs(db_url: str) -> list[Any]:
    return rows(
        db_url,
        "SELECT o.entry_id, o.version, o.source, o.model, o.call_id, o.output, e.call_id AS entry_call "
        "FROM entry_outputs o JOIN dataset_entries e ON e.id = o.entry_id ORDER BY o.entry_id, o.id",
    )


def teacher_calls(db_url: str) -> list[Any]:
    """Every recorded teacher call: id, status, attempt, entry tag, request and response."""
    return rows(
        db_url,
        "SELECT c.id, c.status_code, c.attempt, c.model, t.value AS entry, c.request, c.response "
        "FROM calls c JOIN call_tags t ON t.call_id = c.id AND t.key = 'flywheel_entry' "
        "JOIN call_tags d ON d.call_id = c.id AND d.key = 'flywheel_relabel' AND d.value = 'support' "
        "ORDER BY c.id",
    )


def relabel_version(db_url: str) -> dict[str, Any]:
    (history,) = [v for v in get_dataset(db_url, "support").history if v.action == "relabel"]
    return {"version": history.version, **history.details}


# --- pure functions ----------------------------------------------------------------------------------


def test_teacher_request_keeps_the_input_and_settings_and_changes_the_model() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "temperature": 0.2,
        "max_tokens": 50,
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 3,
        "store": True,
        "metadata": {"a": "b"},
    }
    body = teacher_request(request, TEACHER, {"temperature": 0, "max_tokens": None, "seed": 7})
    assert body == {
        "model": TEACHER,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "temperature": 0,
        "seed": 7,
    }
    assert request["model"] == "gpt-4o-mini"  # the input is left as it was
    with pytest.raises(UnconvertibleCallError, match="no messages"):
        teacher_request({"_flywheel": {"raw": "x"}}, TEACHER)


def test_teacher_output_is_the_converted_message_and_refuses_cut_off_answers() -> None:
    message = {"role": "assistant", "content": "Sure.", "refusal": None, "annotations": []}
    response = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    assert teacher_output(response) == {"role": "assistant", "content": "Sure."}
    cut = {"choices": [{"index": 0, "message": message, "finish_reason": "length"}]}
    with pytest.raises(UnconvertibleCallError, match="cut off"):
        teacher_output(cut)


# --- through the mock server -----------------------------------------------------------------------


def test_relabel_stores_outputs_and_records_tagged_teacher_calls(db_url: str, mock_server: Any) -> None:
    make(db_url)
    seen: list[RelabelProgress] = []
    result = relabel(db_url, mock_server, progress=seen.append)
    assert (result.relabeled, result.skipped, result.failed, result.version) == (12, 0, 0, 2)
    assert seen and seen[-1] == RelabelProgress(relabeled=12, failed=0, total=12)
    stored = outputs(db_url)
    assert len(stored) == 12 and {(o.version, o.source, o.model) for o in stored} == {(2, "relabel", TEACHER)}
    recorded = {call.id: call for call in teacher_calls(db_url)}
    assert len(recorded) == 12
    for output in stored:
        call = recorded[output.call_id]  # the output points at its teacher call ...
        assert call.entry == str(output.entry_id) and call.status_code == 200 and call.model == TEACHER
        answer = as_json(call.response)["choices"][0]["message"]["content"]
        assert as_json(output.output) == {"role": "assistant", "content": answer}  # ... and holds its answer
        original = as_json(
            rows(db_url, "SELECT request FROM calls WHERE id = :c", c=output.entry_call)[0].request
        )
        sent = as_json(call.request)
        assert sent == {**original, "model": TEACHER}  # same messages and settings (temperature 0)
    tagged = rows(
        db_url, "SELECT count(*) AS n FROM call_tags WHERE key = 'flywheel_version' AND value = '2'"
    )
    assert tagged[0].n == 12
    assert result.teacher_calls == 12 and result.cost_usd is not None and result.cost_usd > 0
    details = relabel_version(db_url)
    assert details["version"] == 2 and details["model"] == TEACHER and details["finished"] is True
    assert details["relabeled"] == 12 and details["failed"] == 0
    # The teacher calls do not carry the app's tags, so the dataset does not take them in.
    assert update_dataset(db_url, "support").added == 0
    # Nothing left to do: no teacher call, no version.
    again = relabel(db_url, mock_server)
    assert (again.relabeled, again.skipped, again.version) == (0, 12, None)
    assert len(teacher_calls(db_url)) == 12
    assert scalar(db_url, "SELECT count(*) FROM dataset_versions") == 2


class Interrupt(Exception):
    """Stands in for a crash: raised from the progress callback after the first commit."""


@pytest.mark.parametrize("how", ["crash", "ctrl-c"])
def test_a_crashed_run_resumes_and_relabels_every_entry_exactly_once(
    db_url: str, mock_server: Any, how: str
) -> None:
    prompts = [f"Parcel {n} is late" for n in range(30)]
    make(db_url, prompts)

    def stop(progress: RelabelProgress) -> None:
        if how == "ctrl-c":
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: asyncio cancels the run
        else:
            raise Interrupt

    headers = {"x-mock-latency-ms": "20"}
    with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else Interrupt):
        relabel(db_url, mock_server, concurrency=3, batch_size=4, extra_headers=headers, progress=stop)
    first = outputs(db_url)
    assert 4 <= len(first) < 30  # the first batch, plus what had arrived when it stopped
    assert get_dataset(db_url, "support").version == 2
    assert relabel_version(db_url)["finished"] is False
    done_first = {o.entry_id for o in first}

    result = relabel(db_url, mock_server, concurrency=3, batch_size=4, extra_headers=headers)
    assert result.resumed and result.version == 2
    assert result.skipped == len(first) and result.relabeled == 30 - len(first)
    stored = outputs(db_url)
    assert sorted(o.entry_id for o in stored) == sorted({o.entry_id for o in stored})  # once each
    assert len(stored) == 30 and {o.version for o in stored} == {2}
    assert all(o.call_id is not None for o in stored)
    answered = [c for c in teacher_calls(db_url) if c.status_code == 200]
    for entry_id in done_first:  # relabeled before the crash: never asked again
        assert sum(c.entry == str(entry_id) for c in answered) == 1
    details = relabel_version(db_url)
    assert details["finished"] is True and details["relabeled"] == 30 and details["runs"] == 2
    assert get_dataset(db_url, "support").version == 2  # still one relabel version


@pytest.mark.parametrize("status", ["429", "503"])
def test_rate_limits_and_server_errors_are_retried(db_url: str, mock_server: Any, status: str) -> None:
    make(db_url)
    headers = {"x-mock-status": status, "x-mock-fail-attempts": "2"}
    result = relabel(db_url, mock_server, max_retries=2, extra_headers=headers)
    assert (result.relabeled, result.failed) == (12, 0)
    calls = teacher_calls(db_url)
    assert len(calls) == 36  # three attempts per entry, each recorded
    assert sorted(c.status_code for c in calls if c.entry == calls[0].entry) == [
        200,
        int(status),
        int(status),
    ]
    answered = {c.id for c in calls if c.status_code == 200}
    assert {o.call_id for o in outputs(db_url)} == answered


def test_permanent_failures_are_reported_and_the_rest_relabeled(db_url: str, mock_server: Any) -> None:
    good = make(db_url, PROMPTS[:10])
    # Requests the teacher rejects (400: a message without a role), answered fine back then.
    bad = record(
        db_url,
        [
            chat_exchange("", messages=[{"content": f"no role {n}"}], tags={"prompt_id": "support"})
            for n in range(2)
        ],
    )
    update_dataset(db_url, "support")
    result = relabel(db_url, mock_server)
    assert (result.relabeled, result.failed) == (10, 2)
    assert sorted(f.call_id for f in result.failures) == sorted(bad)
    assert all("HTTP 400" in f.reason and "role" in f.reason for f in result.failures)
    assert sorted(o.entry_call for o in outputs(db_url)) == sorted(good)
    assert relabel_version(db_url)["failed"] == 2
    # Running again tries the failed ones again; they fail again, and nothing changes.
    again = relabel(db_url, mock_server)
    assert (again.relabeled, again.skipped, again.failed, again.version) == (0, 10, 2, None)


def test_exhausted_retries_fail_the_entries_and_make_no_version(db_url: str, mock_server: Any) -> None:
    make(db_url)
    result = relabel(db_url, mock_server, max_retries=1, extra_headers={"x-mock-status": "503"})
    assert (result.relabeled, result.failed, result.version) == (0, 12, None)
    assert {f.reason.split(":")[0] for f in result.failures} == {"HTTP 503"}
    assert len(teacher_calls(db_url)) == result.teacher_calls == 24  # each attempt recorded
    assert get_dataset(db_url, "support").version == 1
    assert scalar(db_url, "SELECT count(*) FROM dataset_versions") == 1


def test_a_refusing_teacher_stops_the_run(db_url: str, mock_server: Any) -> None:
    make(db_url)
    with pytest.raises(RelabelError, match="HTTP 401"):
        relabel(db_url, mock_server, extra_headers={"x-mock-status": "401"})
    assert get_dataset(db_url, "support").version == 1 and outputs(db_url) == []


def counting_client(server: Any, counts: dict[str, int]) -> Callable[[], openai.AsyncOpenAI]:
    """A client factory whose HTTP client counts the requests waiting for an answer."""

    async def sent(request: Any) -> None:
        counts["now"] += 1
        counts["most"] = max(counts["most"], counts["now"])

    async def answered(response: Any) -> None:
        counts["now"] -= 1

    def factory() -> openai.AsyncOpenAI:
        http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [sent], "response": [answered]})
        return openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, http_client=http_client)

    return factory


def test_concurrency_is_bounded(db_url: str, mock_server: Any) -> None:
    make(db_url, [f"Question {n}" for n in range(20)])
    counts = {"now": 0, "most": 0}
    result = relabel_dataset(
        db_url,
        "support",
        model=TEACHER,
        concurrency=3,
        extra_headers={"x-mock-latency-ms": "30"},
        client_factory=counting_client(mock_server, counts),
    )
    assert result.relabeled == 20
    assert counts["most"] == 3 and counts["now"] == 0
    # A plain openai client from the factory is wrapped, so its calls are recorded and linked too.
    assert len(teacher_calls(db_url)) == 20 and all(o.call_id for o in outputs(db_url))


def test_human_edits_are_kept_and_another_teacher_relabels_again(db_url: str, mock_server: Any) -> None:
    make(db_url)
    entry = scalar(db_url, "SELECT min(id) FROM dataset_entries")
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO entry_outputs (entry_id, version, source, output, created_at) "
                "VALUES (:e, 1, 'human', :o, :t)"
            ),
            {"e": entry, "o": '{"role": "assistant", "content": "Edited."}', "t": T0},
        )
    engine.dispose()
    first = relabel(db_url, mock_server, model="gpt-4o", limit=5)
    assert (first.relabeled, first.kept_human, first.version) == (5, 1, 2)
    rest = relabel(db_url, mock_server, model="gpt-4o")  # the limited run finished: a new version
    assert (rest.relabeled, rest.skipped, rest.resumed, rest.version) == (6, 5, False, 3)
    other = relabel(db_url, mock_server, model="gpt-4.1")
    assert (other.relabeled, other.kept_human, other.version) == (11, 1, 4)
    assert scalar(db_url, "SELECT count(*) FROM entry_outputs WHERE entry_id = :e", e=entry) == 1


def test_export_uses_the_relabeled_outputs(db_url: str, mock_server: Any, tmp_path: Path) -> None:
    make(db_url)
    relabel(db_url, mock_server)
    answers = {o.entry_call: as_json(o.output) for o in outputs(db_url)}
    result = export_dataset(db_url, "support", tmp_path / "out", test_fraction=0.0)
    assert result.manifest["dataset_version"] == 2
    train = [orjson.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_bytes().splitlines()]
    assert sorted(example["messages"][-1]["content"] for example in train) == sorted(
        answer["content"] for answer in answers.values()
    )
    assert all(example["messages"][-1]["content"] != "Done." for example in train)
    # Teacher preferred over the original answer: one pair per entry.
    assert result.counts["preference_train"] == 12


def test_bad_arguments_and_unknown_datasets(db_url: str, mock_server: Any) -> None:
    make(db_url, PROMPTS[:1])
    with pytest.raises(UsageError, match="at least 1"):
        relabel(db_url, mock_server, concurrency=0)
    with pytest.raises(UsageError, match="no dataset named 'nope'"):
        relabel_dataset(db_url, "nope", model=TEACHER, base_url=mock_server.base_url, api_key="sk-test")


KILLED_RUN = """
import sys
from flywheel.relabel import relabel_dataset
relabel_dataset(sys.argv[1], "support", model="gpt-4o", base_url=sys.argv[2], api_key="sk-test",
                concurrency=2, batch_size=2, extra_headers={"x-mock-latency-ms": "100"})
"""


@pytest.mark.slow
def test_a_killed_process_loses_nothing_and_the_next_run_finishes(db_url: str, mock_server: Any) -> None:
    make(db_url, [f"Refund {n} not received" for n in range(40)])
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, db_url, mock_server.base_url])
    try:
        deadline = time.monotonic() + 60
        while scalar(db_url, "SELECT count(*) FROM entry_outputs") < 4:
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
            time.sleep(0.02)
    finally:
        process.kill()  # SIGKILL: no finally, no atexit, no flush
        process.wait()
    before = len(outputs(db_url))
    assert 4 <= before < 40 and relabel_version(db_url)["finished"] is False
    result = relabel(db_url, mock_server, concurrency=4)
    assert result.resumed and result.skipped == before and result.relabeled == 40 - before
    stored = outputs(db_url)
    assert len(stored) == len({o.entry_id for o in stored}) == 40 and all(o.call_id for o in stored)
    assert relabel_version(db_url)["relabeled"] == 40
