"""flywheel export: files, manifest, validation, the stable split under growth; SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from cookbook_checks import cookbook_format_errors
from recorded_calls import T0, chat_exchange, record, record_chats, scalar

from flywheel.datasets import create_dataset, update_dataset
from flywheel.export import ExportError, export_dataset
from flywheel.query import CallFilter
from flywheel.validate import validate_dataset

PROMPTS = [f"Order {1000 + n} arrived damaged, what now?" for n in range(40)]


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def make(db_url: str, prompts: list[str] = PROMPTS, **kw: Any) -> list[str]:
    ids = record_chats(db_url, prompts, tags={"prompt_id": "support"}, **kw)
    create_dataset(db_url, "support", CallFilter(tags={"prompt_id": "support"}))
    return ids


def test_export_writes_valid_files_and_a_manifest(db_url: str, tmp_path: Path) -> None:
    ids = make(db_url)
    result = export_dataset(db_url, "support", tmp_path / "out")
    out = tmp_path / "out"
    train, test = lines(out / "train.jsonl"), lines(out / "test.jsonl")
    assert len(train) + len(test) == 40 and result.counts["train"] == len(train)
    assert 0 < len(test) < 12  # about 10 %
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["dataset"] == "support" and manifest["dataset_version"] == 1
    assert sorted(manifest["splits"]["train"] + manifest["splits"]["test"]) == sorted(ids)
    assert manifest["rules"]["split"] == {"test_fraction": 0.1, "stratify_by": None, "salt": ""}
    assert CallFilter.model_validate(manifest["filter"]) == CallFilter(tags={"prompt_id": "support"})
    for name in ("train.jsonl", "test.jsonl"):
        facts = manifest["files"][name]
        assert facts["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert facts["lines"] == len(lines(out / name))
    assert not (out / "preference_train.jsonl").exists()
    # The lines are the calls' conversations, in the fine-tuning format.
    first = train[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[-1] == {"role": "assistant", "content": "Done."}
    # Independent checks pass too.
    assert validate_dataset((f"train.jsonl:{n}", example) for n, example in enumerate(train, 1)).ok
    assert cookbook_format_errors(train + test) == {}
    assert list(out.iterdir()) and not [p for p in out.iterdir() if p.name.startswith(".flywheel-export")]
    assert scalar(db_url, "SELECT count(*) FROM exports") == 1
    assert scalar(db_url, "SELECT count(*) FROM dataset_entries WHERE first_exported_in = 1") == 40


def test_growth_never_moves_an_entry_between_train_and_test(db_url: str, tmp_path: Path) -> None:
    make(db_url, PROMPTS[:20])
    before = export_dataset(db_url, "support", tmp_path / "v1").manifest["splits"]
    later = [f"Invoice {n} is missing a line" for n in range(200)]
    record_chats(db_url, later, start=T0 + timedelta(days=3), tags={"prompt_id": "support"})
    update_dataset(db_url, "support")
    after = export_dataset(db_url, "support", tmp_path / "v2").manifest["splits"]
    assert set(before["train"]) <= set(after["train"])
    assert set(before["test"]) <= set(after["test"])
    new_test = set(after["test"]) - set(before["test"])
    assert new_test and new_test.isdisjoint(set(before["train"]))  # the test set only grew, with new entries
    assert 10 <= len(after["test"]) <= 35  # ~10 % of 220


def test_exact_duplicates_share_a_side(db_url: str, tmp_path: Path) -> None:
    # The same input asked 30 times: one input hash, so one side for all of them.
    make(db_url, ["How do I reset my password?"] * 30)
    splits = export_dataset(db_url, "support", tmp_path / "out").manifest["splits"]
    assert sorted(map(len, splits.values())) == [0, 30]


def test_tools_and_tool_calls_are_exported(db_url: str, tmp_path: Path) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Find an order",
                "parameters": {
                    "type": "object",
                    "properties": {"id": {"type": "string"}},
                    "required": ["id"],
                },
            },
        }
    ]
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup_order", "arguments": '{"id": "7"}'},
    }
    record(
        db_url,
        [
            chat_exchange(
                f"where is order {n}", None, tools=tools, tool_calls=[call], at=T0 + timedelta(seconds=n)
            )
            for n in range(12)
        ],
    )
    create_dataset(db_url, "tools", CallFilter())
    export_dataset(db_url, "tools", tmp_path / "out", test_fraction=0.0)
    (example, *_) = lines(tmp_path / "out" / "train.jsonl")
    assert example["tools"] == tools
    assert example["messages"][-1] == {"role": "assistant", "content": None, "tool_calls": [call]}


def test_invalid_entries_stop_the_export_and_name_the_entry(db_url: str, tmp_path: Path) -> None:
    ids = make(db_url, PROMPTS[:15])
    bad = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    (bad_id,) = record(
        db_url,
        [
            chat_exchange(
                "x", None, tool_calls=[bad], at=T0 + timedelta(days=1), tags={"prompt_id": "support"}
            )
        ],
    )
    update_dataset(db_url, "support")
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=rf"call {bad_id}.*arguments") as caught:
        export_dataset(db_url, "support", out)
    assert caught.value.issues and list(out.iterdir()) == []  # nothing written
    assert scalar(db_url, "SELECT count(*) FROM exports") == 0
    result = export_dataset(db_url, "support", out, skip_invalid=True)
    assert result.counts["skipped"] == 1 and result.manifest["skipped"][0]["call_id"] == bad_id
    exported = result.manifest["splits"]["train"] + result.manifest["splits"]["test"]
    assert sorted(exported) == sorted(ids)
    assert (
        scalar(db_url, "SELECT first_exported_in FROM dataset_entries WHERE call_id = :c", c=bad_id) is None
    )


def test_too_few_examples_is_an_error(db_url: str, tmp_path: Path) -> None:
    make(db_url, PROMPTS[:5])
    with pytest.raises(ExportError, match="at least 10"):
        export_dataset(db_url, "support", tmp_path / "out")
    assert export_dataset(db_url, "support", tmp_path / "out", min_examples=1).counts["skipped"] == 0


def test_relabeled_outputs_replace_the_original_and_give_preference_pairs(
    db_url: str, tmp_path: Path
) -> None:
    make(db_url, PROMPTS[:12])
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        entry_id = conn.execute(sa.text("SELECT min(id) FROM dataset_entries")).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO entry_outputs (entry_id, version, source, model, output, created_at) "
                "VALUES (:e, 1, 'relabel', 'gpt-4o', :o, :t)"
            ),
            {"e": entry_id, "o": '{"role": "assistant", "content": "Better."}', "t": datetime.now(UTC)},
        )
    engine.dispose()
    result = export_dataset(db_url, "support", tmp_path / "out", test_fraction=0.0, min_examples=1)
    train = lines(tmp_path / "out" / "train.jsonl")
    assert sum(example["messages"][-1]["content"] == "Better." for example in train) == 1
    (pair,) = lines(tmp_path / "out" / "preference_train.jsonl")
    assert pair["preferred_output"] == [{"role": "assistant", "content": "Better."}]
    assert pair["non_preferred_output"] == [{"role": "assistant", "content": "Done."}]
    assert result.counts["preference_train"] == 1
    # With the default minimum (10), one pair is too few: the chat files are written, the pairs not.
    again = export_dataset(db_url, "support", tmp_path / "out", test_fraction=0.0)
    assert again.counts["preference_train"] == 0 and again.counts["train"] == 12
    assert not (tmp_path / "out" / "preference_train.jsonl").exists()
    assert "preference files not written" in again.manifest["notes"][0]


def test_split_rules_are_kept_on_the_dataset(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    first = export_dataset(db_url, "support", tmp_path / "a", test_fraction=0.5, salt="s1")
    again = export_dataset(db_url, "support", tmp_path / "b")  # no rules given: the stored ones
    assert again.manifest["rules"]["split"] == {"test_fraction": 0.5, "stratify_by": None, "salt": "s1"}
    assert again.manifest["splits"] == first.manifest["splits"]
    assert again.manifest["notes"] == []
    # Only what is given changes; the manifest says so.
    third = export_dataset(db_url, "support", tmp_path / "c", test_fraction=0.6)
    assert third.manifest["rules"]["split"] == {"test_fraction": 0.6, "stratify_by": None, "salt": "s1"}
    assert any("split rules changed" in note for note in third.manifest["notes"])
    assert set(first.manifest["splits"]["test"]) <= set(third.manifest["splits"]["test"])


def test_stratified_split_uses_the_tag(db_url: str, tmp_path: Path) -> None:
    record_chats(db_url, [f"a{n}" for n in range(300)], tags={"prompt_id": "s", "lang": "en"})
    record_chats(
        db_url,
        [f"b{n}" for n in range(300)],
        start=T0 + timedelta(days=1),
        tags={"prompt_id": "s", "lang": "de"},
    )
    create_dataset(db_url, "s", CallFilter(tags={"prompt_id": "s"}))
    result = export_dataset(db_url, "s", tmp_path / "out", test_fraction=0.2, stratify_by="lang")
    test_ids = set(result.manifest["splits"]["test"])
    assert 40 <= len(test_ids) <= 200
    assert result.manifest["rules"]["split"]["stratify_by"] == "lang"


def test_dry_run_writes_and_records_nothing(db_url: str, tmp_path: Path) -> None:
    make(db_url)
    seen: list[tuple[int, int]] = []
    result = export_dataset(
        db_url, "support", tmp_path / "out", dry_run=True, progress=lambda *p: seen.append(p)
    )
    assert seen[-1] == (40, 40)
    assert result.counts["train"] + result.counts["test"] == 40
    assert list((tmp_path / "out").iterdir()) == []
    assert scalar(db_url, "SELECT count(*) FROM exports") == 0


def test_the_newest_version_wins_over_a_later_row_of_an_older_version(db_url: str, tmp_path: Path) -> None:
    """A relabel run writes into its version N+1 while a review import makes N+2: the person's edit
    stays the entry's output even though the teacher's row for it was written afterwards."""
    make(db_url, PROMPTS[:12])
    engine = sa.create_engine(db_url)
    insert = sa.text(
        "INSERT INTO entry_outputs (entry_id, version, source, model, output, created_at) "
        "VALUES (:e, :v, :s, :m, :o, :t)"
    )
    with engine.begin() as conn:
        entry_id = conn.execute(sa.text("SELECT min(id) FROM dataset_entries")).scalar_one()
        dataset_id = conn.execute(sa.text("SELECT id FROM datasets")).scalar_one()
        for version, action in ((2, "relabel"), (3, "review")):
            conn.execute(
                sa.text(
                    "INSERT INTO dataset_versions (dataset_id, version, created_at, action, details) "
                    "VALUES (:d, :v, :t, :a, '{}')"
                ),
                {"d": dataset_id, "v": version, "t": datetime.now(UTC), "a": action},
            )
        conn.execute(sa.text("UPDATE datasets SET version = 3"))
        now = datetime.now(UTC)
        conn.execute(
            insert,
            {
                "e": entry_id,
                "v": 3,
                "s": "human",
                "m": None,
                "o": '{"role": "assistant", "content": "By a person."}',
                "t": now,
            },
        )
        conn.execute(
            insert,
            {
                "e": entry_id,
                "v": 2,
                "s": "relabel",
                "m": "gpt-4o",
                "o": '{"role": "assistant", "content": "By the teacher."}',
                "t": now,
            },
        )
    engine.dispose()
    export_dataset(db_url, "support", tmp_path / "out", test_fraction=0.0, min_examples=1)
    outputs = [example["messages"][-1]["content"] for example in lines(tmp_path / "out" / "train.jsonl")]
    assert "By a person." in outputs and "By the teacher." not in outputs


def test_worker_processes_write_the_same_files(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries converted and checked in two spawned processes give the files one process writes,
    byte for byte, with the same validation (an invalid entry named by its line)."""
    make(db_url)
    bad = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    record(
        db_url,
        [
            chat_exchange(
                "x", None, tool_calls=[bad], at=T0 + timedelta(days=1), tags={"prompt_id": "support"}
            )
        ],
    )
    update_dataset(db_url, "support")
    monkeypatch.setattr("flywheel.parallel.WORKERS_FROM", 0)
    monkeypatch.setattr("flywheel.export.BATCH_ROWS", 7)  # several batches in flight
    here = export_dataset(db_url, "support", tmp_path / "one", skip_invalid=True, dry_run=True)
    there = export_dataset(db_url, "support", tmp_path / "two", skip_invalid=True, workers=2, dry_run=True)
    assert there.manifest["files"] == here.manifest["files"] and here.counts["train"] > 0
    assert there.manifest["splits"] == here.manifest["splits"]
    assert there.manifest["skipped"] == here.manifest["skipped"] and len(here.manifest["skipped"]) == 1
    with pytest.raises(ExportError, match=r"\.jsonl:\d+: entry \d+ \(call .*arguments"):
        export_dataset(db_url, "support", tmp_path / "three", workers=2)
