"""flywheel review: export for a person, import of edits (all or nothing), conflicts; SQLite and PG."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from recorded_calls import T0, chat_exchange, record, record_chats, scalar

import flywheel.review as review
import flywheel.review_store as review_store
from flywheel.datasets import NotFoundError, create_dataset, get_dataset, record_version
from flywheel.errors import FlywheelError, UsageError
from flywheel.export import export_dataset
from flywheel.query import CallFilter
from flywheel.review import (
    ReviewFileError,
    export_review,
    import_review,
    output_fingerprint,
    output_issues,
    parse_review_line,
)

PROMPTS = [f"Ticket {n}: I was charged twice" for n in range(12)]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
    }
]


def make(db_url: str, prompts: list[str] = PROMPTS, name: str = "classify", **kw: Any) -> list[str]:
    ids = record_chats(db_url, prompts, tags={"prompt_id": name}, reply="billing", **kw)
    create_dataset(db_url, name, CallFilter(tags={"prompt_id": name}))
    return ids


def read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def write(path: Path, items: list[Any]) -> None:
    path.write_bytes(
        b"".join((item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in items)
    )


def store_counts(db_url: str) -> dict[str, Any]:
    """Everything an import may change, to compare before and after."""
    return {
        "versions": scalar(db_url, "SELECT count(*) FROM dataset_versions"),
        "outputs": scalar(db_url, "SELECT count(*) FROM entry_outputs"),
        "removed": scalar(db_url, "SELECT count(*) FROM dataset_entries WHERE removed_in IS NOT NULL"),
        "version": scalar(db_url, "SELECT max(version) FROM datasets"),
    }


def as_json(value: Any) -> Any:
    """A JSON column read through ``sa.text``: text on SQLite, already decoded on PostgreSQL."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def said(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def test_export_writes_one_editable_line_per_entry(db_url: str, tmp_path: Path) -> None:
    ids = make(db_url)
    out = tmp_path / "review" / "review.jsonl"
    result = export_review(db_url, "classify", out)
    lines = read(out)
    assert result.entries == len(lines) == 12 and result.version == 1
    assert result.by_source == {"original": 12}
    assert [line["call_id"] for line in lines] == sorted(ids)
    first = lines[0]
    assert list(first)[:4] == ["entry", "output", "note", "drop"]  # what a reviewer edits comes first
    assert first["output"] == said("billing") and first["note"] is None and first["drop"] is False
    assert first["provenance"] == {"source": "original"}
    assert [m["role"] for m in first["input"]] == ["system", "user"]
    assert first["input"][1]["content"] == "Ticket 0: I was charged twice"
    assert (first["dataset"], first["version"]) == ("classify", 1)
    assert first["fingerprint"] == output_fingerprint(first["output"])
    assert "tools" not in first and "problem" not in first
    assert len({line["entry"] for line in lines}) == 12
    assert [p.name for p in out.parent.iterdir()] == ["review.jsonl"]  # no temporary file left


def test_round_trip_stores_human_outputs_that_the_export_uses(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    lines[1]["output"]["content"] = "refund"
    lines[1]["note"] = "  charged twice means refund  "
    lines[4]["output"] = said("fraud")
    write(path, lines)

    result = import_review(db_url, "classify", path, now=T0 + timedelta(days=1))

    assert (result.edited, result.dropped, result.untouched, result.lines) == (2, 0, 10, 12)
    assert result.version == 2 and not result.dry_run
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT entry_id, version, source, output, note FROM entry_outputs ORDER BY entry_id")
        ).all()
    engine.dispose()
    assert [(r.entry_id, r.version, r.source) for r in rows] == [
        (lines[1]["entry"], 2, "human"),
        (lines[4]["entry"], 2, "human"),
    ]
    assert [as_json(r.output) for r in rows] == [said("refund"), said("fraud")]
    assert [r.note for r in rows] == ["charged twice means refund", None]
    (version,) = [v for v in get_dataset(db_url, "classify").history if v.version == 2]
    assert version.action == "review"
    assert version.details["file"] == "review.jsonl" and version.details["sha256"] == result.sha256
    assert (version.details["edited"], version.details["untouched"]) == (2, 10)

    exported = export_dataset(db_url, "classify", tmp_path / "out", test_fraction=0.0, min_examples=1)
    assert exported.manifest["dataset_version"] == 2
    train = {
        call_id: example["messages"][-1]["content"]
        for call_id, example in zip(
            exported.manifest["splits"]["train"], read(tmp_path / "out" / "train.jsonl"), strict=True
        )
    }
    assert train[lines[1]["call_id"]] == "refund" and train[lines[4]["call_id"]] == "fraud"
    assert list(train.values()).count("billing") == 10

    export_review(db_url, "classify", tmp_path / "again.jsonl")
    again = read(tmp_path / "again.jsonl")
    assert again[1]["provenance"] == {"source": "human", "version": 2, "note": "charged twice means refund"}
    assert again[1]["output"] == said("refund") and again[1]["version"] == 2


def test_untouched_lines_make_nothing_whatever_their_spacing(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    # An editor that re-saves the lines with other spacing and key order, a BOM and blank lines.
    lines = [json.dumps(line, sort_keys=True, indent=None, separators=(", ", " : ")) for line in read(path)]
    path.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(lines).encode() + b"\n\n")
    before = store_counts(db_url)
    result = import_review(db_url, "classify", path)
    assert (result.untouched, result.edited, result.version) == (12, 0, None) and not result.changed
    assert store_counts(db_url) == before


def test_importing_the_same_file_twice_changes_nothing_the_second_time(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    lines[0]["output"] = said("refund")
    lines[3]["drop"] = True
    write(path, lines)
    assert import_review(db_url, "classify", path).version == 2
    before = store_counts(db_url)
    again = import_review(db_url, "classify", path)
    assert (again.unchanged, again.edited, again.dropped, again.version) == (2, 0, 0, None)
    assert store_counts(db_url) == before


def _edit_first(lines: list[dict[str, Any]]) -> None:
    lines[0]["output"] = said("refund")


def _bad_tool_arguments(lines: list[dict[str, Any]]) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": "{id: 7"}}
    lines[2]["output"] = {"role": "assistant", "content": None, "tool_calls": [call]}


def _object_arguments(lines: list[dict[str, Any]]) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": {"id": "7"}}}
    lines[2]["output"] = {"role": "assistant", "content": None, "tool_calls": [call]}


def _set(key: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    def change(lines: list[dict[str, Any]]) -> None:
        lines[2][key] = value

    return change


def _delete(key: str) -> Callable[[list[dict[str, Any]]], None]:
    def change(lines: list[dict[str, Any]]) -> None:
        del lines[2][key]

    return change


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (_set("output", {"role": "user", "content": "refund"}), "output.role", "must be 'assistant'"),
        (_set("output", said("   ")), "output.content", "empty"),
        (_set("output", None), "output", "drop"),
        (_bad_tool_arguments, "output.tool_calls[0].function.arguments", "not valid JSON"),
        (_object_arguments, "output.tool_calls[0].function.arguments", "JSON string"),
        (_set("output", {**said("x"), "refusal": None}), "output.refusal", "takes no 'refusal'"),
        (_set("entry", 999_999), "entry", "no entry 999999"),
        (_set("entry", "seven"), "entry", "entry id"),
        (_set("call_id", "0" * 32), "call_id", "is call"),
        (_set("dataset", "other"), "dataset", "from dataset 'other'"),
        (_set("version", 9), "version", "no version 9"),
        (_set("notes", "typo"), "notes", "unknown key"),
        (_set("note", "looks right"), "note", "changes neither"),
        (_set("drop", "yes"), "drop", "true or false"),
        (_delete("fingerprint"), "fingerprint", "missing"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_imported(
    db_url: str, tmp_path: Path, change: Callable[[list[dict[str, Any]]], None], field: str, fragment: str
) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    _edit_first(lines)  # a good edit that must not be imported either
    change(lines)
    write(path, lines)
    before = store_counts(db_url)
    expected = rf"nothing was imported: {re.escape(str(path))}:3: {re.escape(field)}: .*{re.escape(fragment)}"
    with pytest.raises(ReviewFileError, match=expected) as caught:
        import_review(db_url, "classify", path)
    assert [(issue.line, issue.field) for issue in caught.value.issues] == [(3, field)]
    assert caught.value.count == 1 and caught.value.where == str(path) and caught.value.exit_code == 2
    assert store_counts(db_url) == before


def test_invalid_json_names_the_line(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    raw = path.read_bytes().splitlines()
    raw[5] = raw[5].replace(b'"drop":false', b'"drop":false,')  # a trailing comma, as people type
    raw[7] = b"[1, 2]"
    write(path, raw)
    before = store_counts(db_url)
    with pytest.raises(ReviewFileError) as caught:
        import_review(db_url, "classify", path)
    issues = caught.value.issues
    assert [issue.line for issue in issues] == [6, 8]
    assert str(issues[0]).startswith(f"{path}:6: not valid JSON") and "JSON object" in str(issues[1])
    assert store_counts(db_url) == before


def test_every_problem_is_collected_and_the_message_shows_the_first(db_url: str, tmp_path: Path) -> None:
    make(db_url, [f"q{n}" for n in range(30)])
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    for line in lines:
        line["output"] = {"role": "system", "content": "nope"}
    lines.append(read(path)[0])  # the same entry again, untouched
    write(path, lines)
    with pytest.raises(ReviewFileError, match=r"31 problems .*\(and 11 more\)") as caught:
        import_review(db_url, "classify", path)
    error = caught.value
    assert error.count == 31 and [issue.line for issue in error.issues] == list(range(1, 32))
    assert error.issues[-1].field == "entry" and "also on line 1" in error.issues[-1].message
    assert scalar(db_url, "SELECT count(*) FROM entry_outputs") == 0


def test_an_output_changed_since_the_export_is_a_conflict(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    mine, theirs = tmp_path / "mine.jsonl", tmp_path / "theirs.jsonl"
    export_review(db_url, "classify", mine)
    export_review(db_url, "classify", theirs)
    # Someone else imports an edit of entry 1, and a relabel changes entry 2.
    lines = read(theirs)
    lines[0]["output"] = said("refund")
    write(theirs, lines)
    import_review(db_url, "classify", theirs)
    relabel(db_url, read(mine)[1]["entry"], version=3)

    lines = read(mine)
    lines[0]["output"] = said("fraud")
    lines[1]["drop"] = True
    lines[5]["output"] = said("shipping")  # not conflicting, but all or nothing
    write(mine, lines)
    before = store_counts(db_url)
    with pytest.raises(ReviewFileError) as caught:
        import_review(db_url, "classify", mine)
    first, second = caught.value.issues
    assert (first.line, first.field) == (1, "output") and "changed in the store" in first.message
    assert "a person's edit from version 2" in first.message
    assert (second.line, second.field) == (
        2,
        "drop",
    ) and "a relabel by gpt-4o from version 3" in second.message
    assert store_counts(db_url) == before
    # Untouched lines of conflicting entries are fine; so is an edit equal to the store's output.
    lines = read(mine)
    lines[0]["output"] = said("refund")
    lines[1]["drop"] = False
    lines[5]["output"] = said("shipping")
    write(mine, lines)
    result = import_review(db_url, "classify", mine)
    assert (result.edited, result.unchanged, result.version) == (1, 1, 4)


def relabel(db_url: str, entry_id: int, *, version: int) -> None:
    """A relabel step as ``flywheel relabel`` records one: a new version and an output row."""
    engine = sa.create_engine(db_url)
    moment = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO entry_outputs (entry_id, version, source, model, call_id, output, created_at) "
                "VALUES (:e, :v, 'relabel', 'gpt-4o', 'teacher-call', :o, :t)"
            ),
            {"e": entry_id, "v": version, "o": orjson.dumps(said("billing-relabeled")).decode(), "t": moment},
        )
        dataset_id = conn.execute(sa.text("SELECT id FROM datasets WHERE name = 'classify'")).scalar_one()
        record_version(conn, dataset_id, version, "relabel", {"relabeled": 1}, moment)
    engine.dispose()


def test_dry_run_reports_and_writes_nothing(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    lines[0]["output"] = said("refund")
    lines[1]["drop"] = True
    write(path, lines)
    before = store_counts(db_url)
    plan = import_review(db_url, "classify", path, dry_run=True)
    assert (plan.edited, plan.dropped, plan.untouched, plan.version, plan.dry_run) == (1, 1, 10, None, True)
    assert store_counts(db_url) == before
    lines[2]["output"] = said("")
    write(path, lines)
    with pytest.raises(ReviewFileError, match=r":3: output\.content"):
        import_review(db_url, "classify", path, dry_run=True)


def test_drop_takes_the_entry_out_and_keeps_the_note(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    lines[3]["drop"] = True
    lines[3]["note"] = "not a billing question"
    write(path, lines)
    result = import_review(db_url, "classify", path)
    assert (result.dropped, result.version) == (1, 2)
    dropped = lines[3]["entry"]
    assert scalar(db_url, "SELECT removed_in FROM dataset_entries WHERE id = :e", e=dropped) == 2
    assert scalar(db_url, "SELECT removed_reason FROM dataset_entries WHERE id = :e", e=dropped) == "review"
    assert scalar(db_url, "SELECT count(*) FROM dataset_entries") == 12  # taken out, not deleted
    info = get_dataset(db_url, "classify")
    assert (info.entries, info.removed) == (11, 1)
    assert info.history[-1].details["drop_notes"] == {str(dropped): "not a billing question"}
    export_review(db_url, "classify", tmp_path / "after.jsonl")
    after = read(tmp_path / "after.jsonl")
    assert dropped not in {line["entry"] for line in after} and len(after) == 11
    # The old file now edits an entry that is out: refused, naming the line.
    lines[3]["drop"] = False
    lines[3]["output"] = said("refund")
    write(path, lines)
    with pytest.raises(ReviewFileError, match=r":4: entry: .*taken out .* version 2 \(review\)"):
        import_review(db_url, "classify", path)


def test_drop_with_an_edited_output_is_refused(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    lines[0].update(drop=True, output=said("refund"))
    write(path, lines)
    with pytest.raises(ReviewFileError, match=r":1: drop: .*one or the other"):
        import_review(db_url, "classify", path)


def test_tool_calls_are_checked_against_the_calls_tools(db_url: str, tmp_path: Path) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup_order", "arguments": '{"id": "1"}'},
    }
    record(
        db_url,
        [
            chat_exchange(
                f"where is order {n}", None, tools=TOOLS, tool_calls=[call], at=T0 + timedelta(seconds=n)
            )
            for n in range(3)
        ],
    )
    create_dataset(db_url, "tools", CallFilter())
    path = tmp_path / "review.jsonl"
    export_review(db_url, "tools", path)
    lines = read(path)
    assert lines[0]["tools"] == TOOLS
    assert lines[0]["output"] == {"role": "assistant", "content": None, "tool_calls": [call]}
    fixed = {**call, "function": {"name": "lookup_order", "arguments": '{"id": "1001"}'}}
    lines[0]["output"] = {"role": "assistant", "tool_calls": [fixed]}  # content left out: that is fine
    undefined = {**call, "function": {"name": "cancel_order", "arguments": "{}"}}
    lines[1]["output"] = {"role": "assistant", "content": None, "tool_calls": [undefined]}
    write(path, lines)
    with pytest.raises(
        ReviewFileError, match=r":2: output.tool_calls\[0\].function.name: calls 'cancel_order'"
    ):
        import_review(db_url, "tools", path)
    lines[1]["output"] = said("I cannot find that order.")
    write(path, lines)
    assert import_review(db_url, "tools", path).edited == 2
    stored = scalar(db_url, "SELECT output FROM entry_outputs WHERE entry_id = :e", e=lines[0]["entry"])
    assert as_json(stored) == {"role": "assistant", "content": None, "tool_calls": [fixed]}


def test_only_selects_entries_by_where_their_output_comes_from(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    lines[0]["output"] = said("refund")
    write(path, lines)
    import_review(db_url, "classify", path)
    relabel(db_url, lines[1]["entry"], version=3)

    def entries(**kw: Any) -> list[int]:
        export_review(db_url, "classify", tmp_path / "only.jsonl", **kw)
        return [line["entry"] for line in read(tmp_path / "only.jsonl")]

    everything = [line["entry"] for line in lines]
    assert entries() == everything
    assert entries(only="human") == [everything[0]]
    assert entries(only="relabeled") == [everything[1]]
    assert entries(only="original") == everything[2:]
    assert entries(only="unreviewed") == everything[1:]
    assert entries(only="unreviewed", limit=3) == everything[1:4]
    result = export_review(db_url, "classify", tmp_path / "r.jsonl", only="relabeled")
    assert result.by_source == {"relabel": 1} and read(tmp_path / "r.jsonl")[0]["provenance"] == {
        "source": "relabel",
        "model": "gpt-4o",
        "call_id": "teacher-call",
        "version": 3,
    }
    with pytest.raises(UsageError, match="unknown selection"):
        export_review(db_url, "classify", path, only="everything")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="at least 1"):
        export_review(db_url, "classify", path, limit=0)


def test_a_big_file_is_checked_and_written_in_batches(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(db_url, [f"question {n}" for n in range(600)], step=timedelta(seconds=1))
    monkeypatch.setattr(review_store, "BATCH_ROWS", 64)
    looked_up: list[int] = []
    states = review_store._states

    def counting_states(conn: Any, dataset: Any, ids: Any) -> Any:
        looked_up.append(len(ids))
        return states(conn, dataset, ids)

    monkeypatch.setattr(review_store, "_states", counting_states)
    path = tmp_path / "review.jsonl"
    assert export_review(db_url, "classify", path).entries == 600
    lines = read(path)
    for line in lines[::7]:
        line["output"] = said(f"edited {line['entry']}")
    write(path, [*lines, lines[100]])  # entry of line 101 again, in another batch
    with pytest.raises(ReviewFileError, match=r":601: entry: .*also on line 101"):
        import_review(db_url, "classify", path)
    assert max(looked_up) == 64 and sum(looked_up) == 600  # the store is asked one batch at a time
    write(path, lines)
    result = import_review(db_url, "classify", path)
    assert (result.edited, result.untouched) == (86, 514)
    assert scalar(db_url, "SELECT count(*) FROM entry_outputs WHERE version = 2 AND source = 'human'") == 86


def test_a_step_between_the_check_and_the_write_stops_the_import(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(db_url)
    path = tmp_path / "review.jsonl"
    export_review(db_url, "classify", path)
    lines = read(path)
    lines[0]["output"] = said("refund")
    write(path, lines)
    check = review.check_file

    def check_then_relabel(*args: Any) -> Any:
        checked = check(*args)
        relabel(db_url, lines[5]["entry"], version=2)  # another step commits in between
        return checked

    monkeypatch.setattr(review, "check_file", check_then_relabel)
    with pytest.raises(FlywheelError, match=r"changed while the review file was checked \(version 1 -> 2\)"):
        import_review(db_url, "classify", path)
    assert scalar(db_url, "SELECT count(*) FROM entry_outputs WHERE source = 'human'") == 0
    assert scalar(db_url, "SELECT max(version) FROM dataset_versions") == 2
    monkeypatch.setattr(review, "check_file", check)
    assert import_review(db_url, "classify", path).version == 3  # run again: it goes in


def test_an_output_that_cannot_be_shown_can_be_written_by_the_reviewer(db_url: str, tmp_path: Path) -> None:
    audio: Any = [{"type": "audio", "audio": {"id": "audio_1"}}]
    record(db_url, [chat_exchange("say it", audio, tags={"prompt_id": "voice"})])
    create_dataset(db_url, "voice", CallFilter(tags={"prompt_id": "voice"}))
    path = tmp_path / "review.jsonl"
    export_review(db_url, "voice", path)
    (line,) = read(path)
    assert line["output"] is None and "only text content" in line["problem"]
    assert import_review(db_url, "voice", path).untouched == 1  # left as it is: fine
    line["output"] = said("Here it is.")
    write(path, [line])
    result = import_review(db_url, "voice", path)
    assert (result.edited, result.version) == (1, 2)
    assert orjson.loads(orjson.dumps(result.as_dict()))["path"] == str(path)


def test_missing_dataset_and_missing_file(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    with pytest.raises(NotFoundError):
        export_review(db_url, "nope", tmp_path / "x.jsonl")
    with pytest.raises(UsageError, match="cannot read the review file"):
        import_review(db_url, "classify", tmp_path / "absent.jsonl")


def test_a_line_from_another_dataset_is_refused(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    make(db_url, ["other"], name="other", start=T0 + timedelta(days=1))
    path = tmp_path / "other.jsonl"
    export_review(db_url, "other", path)
    (line,) = read(path)
    line["output"] = said("refund")
    line["dataset"] = "classify"  # someone "fixes" the name to import into the wrong dataset
    write(path, [line])
    with pytest.raises(ReviewFileError, match=r":1: entry: entry \d+ is not in dataset 'classify'"):
        import_review(db_url, "classify", path)


# --- the pure parts --------------------------------------------------------------------------------


def test_fingerprint_ignores_key_order_but_not_content() -> None:
    assert output_fingerprint({"role": "assistant", "content": "a"}) == output_fingerprint(
        {"content": "a", "role": "assistant"}
    )
    assert output_fingerprint(said("a")) != output_fingerprint(said("a "))
    assert output_fingerprint(None) != output_fingerprint(said(""))


def test_output_issues() -> None:
    assert output_issues(said("fine")) == []
    assert output_issues({"role": "assistant", "content": None}) == [
        ("output.content", "content is null and the message calls no tool")
    ]
    assert output_issues({**said("x"), "weight": 1}) == [
        ("output.weight", "a reviewed output takes no weight")
    ]
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert output_issues({"role": "assistant", "content": None, "tool_calls": [call]}) == []
    assert [where for where, _ in output_issues({"role": "assistant", "tool_calls": [call]}, TOOLS)] == [
        "output.tool_calls[0].function.name"
    ]


def test_parse_review_line() -> None:
    good = {
        "entry": 3,
        "output": said("a"),
        "note": None,
        "drop": False,
        "dataset": "d",
        "version": 1,
        "call_id": "c",
        "fingerprint": output_fingerprint(said("a")),
    }
    line, issues = parse_review_line(orjson.dumps(good), 7, "d", "f.jsonl")
    assert issues == [] and line is not None and not line.edited and line.number == 7
    line, issues = parse_review_line(orjson.dumps({**good, "output": said("b"), "note": " ok "}), 7, "d", "f")
    assert issues == [] and line is not None and line.edited and line.note == "ok"
    line, issues = parse_review_line(b'{"entry": 3,', 7, "d", "f.jsonl")
    assert line is None and [str(issue).split(": ")[0:2] for issue in issues] == [
        ["f.jsonl:7", "not valid JSON"]
    ]
