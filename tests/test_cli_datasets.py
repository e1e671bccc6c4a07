"""`flywheel dataset ...` and `flywheel export` on the command line (click's runner, real stores)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from recorded_calls import T0, chat_exchange, record, record_chats
from test_cli import assert_one_line_error, json_lines, ok, run

from flywheel.cli import cli

PROMPTS = [f"Please cancel order {n}" for n in range(30)]


def test_dataset_create_update_list_show(db_url: str) -> None:
    record_chats(db_url, PROMPTS, tags={"prompt_id": "cancel"})
    record_chats(db_url, ["unrelated"], tags={"prompt_id": "other"})
    created = ok("dataset", "create", "cancel", "--tag", "prompt_id=cancel", "--db", db_url)
    assert "Created dataset cancel: 30 new entries, 30 in all, version 1." in created.stdout
    record_chats(db_url, ["one more"], start=T0 + timedelta(days=1), tags={"prompt_id": "cancel"})
    (updated,) = json_lines(ok("dataset", "update", "cancel", "--db", db_url, "--json"))
    assert (updated["added"], updated["entries"], updated["version"]) == (1, 31, 2)
    assert "No new calls" in ok("dataset", "update", "cancel", "--db", db_url).stdout
    listed = ok("dataset", "list", "--db", db_url).stdout.splitlines()
    assert listed[0].split()[:3] == ["NAME", "VERSION", "ENTRIES"] and listed[1].split()[:3] == [
        "cancel",
        "2",
        "31",
    ]
    shown = ok("dataset", "show", "cancel", "--db", db_url).stdout
    assert '"prompt_id=cancel"' in shown and "create" in shown and "update" in shown
    (described,) = json_lines(ok("dataset", "show", "cancel", "--db", db_url, "--json"))
    assert [v["action"] for v in described["history"]] == ["create", "update"]


def test_dataset_errors_are_one_line(db_url: str) -> None:
    record_chats(db_url, PROMPTS[:2])
    assert_one_line_error(run("dataset", "update", "nope", "--db", db_url), 2, "no dataset named 'nope'")
    assert_one_line_error(run("dataset", "create", "bad name", "--db", db_url), 2, "invalid dataset name")
    assert_one_line_error(
        run("dataset", "create", "x", "--min-tokens", "9", "--max-tokens", "1", "--db", db_url),
        2,
        "--min-tokens/--max-tokens",
    )


def test_export_command_writes_the_files(db_url: str, tmp_path: Path) -> None:
    record_chats(db_url, PROMPTS, tags={"prompt_id": "cancel"})
    ok("dataset", "create", "cancel", "--tag", "prompt_id=cancel", "--db", db_url)
    out = tmp_path / "data"
    result = ok("export", "cancel", "--out", str(out), "--test-fraction", "0.2", "--db", db_url)
    assert "train and" in result.stdout and str(out) in result.stdout
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["rules"]["split"]["test_fraction"] == 0.2
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == 30
    (again,) = json_lines(ok("export", "cancel", "--out", str(out), "--db", db_url, "--json"))
    assert again["rules"]["split"]["test_fraction"] == 0.2  # the stored rule, not the default
    assert "splits" not in again  # call ids stay in manifest.json


def test_export_validation_failure_is_one_line_and_writes_nothing(db_url: str, tmp_path: Path) -> None:
    bad = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    record_chats(db_url, PROMPTS[:12])
    record(db_url, [chat_exchange("x", None, tool_calls=[bad], at=T0 + timedelta(hours=1))])
    ok("dataset", "create", "all", "--db", db_url)
    out = tmp_path / "data"
    line = assert_one_line_error(run("export", "all", "--out", str(out), "--db", db_url), 1, "--skip-invalid")
    assert "arguments" in line and "nothing was written" in line
    assert not out.exists() or list(out.iterdir()) == []
    skipped = ok("export", "all", "--out", str(out), "--skip-invalid", "--db", db_url)
    assert "skipped 1 entries" in skipped.stdout


def test_relabel_command_through_the_mock_server(db_url: str, mock_server: Any, tmp_path: Path) -> None:
    record_chats(db_url, PROMPTS[:12], tags={"prompt_id": "cancel"})
    ok("dataset", "create", "cancel", "--tag", "prompt_id=cancel", "--db", db_url)
    args = ["relabel", "cancel", "--model", "gpt-4o", "--base-url", mock_server.base_url, "--db", db_url]
    result = CliRunner().invoke(cli, args, prog_name="flywheel", env={"OPENAI_API_KEY": "sk-test"})
    assert result.exit_code == 0, result.output
    assert "Relabeled 12 entries of cancel with gpt-4o (version 2)" in result.stdout
    assert "relabeled 12/12" in result.stderr
    (again,) = json_lines(
        CliRunner().invoke(cli, [*args, "--json"], prog_name="flywheel", env={"OPENAI_API_KEY": "sk-test"})
    )
    assert (again["relabeled"], again["skipped"], again["version"]) == (0, 12, None)
    # The teacher's own calls are in the store but never become entries of a dataset.
    ok("dataset", "create", "everything", "--db", db_url)
    (listed,) = [
        d for d in json_lines(ok("dataset", "list", "--json", "--db", db_url)) if d["name"] == "everything"
    ]
    assert listed["entries"] == 12
    manifest = ok("export", "cancel", "--out", str(tmp_path / "out"), "--db", db_url, "--json")
    assert (
        json_lines(manifest)[0]["counts"]["preference_train"]
        + json_lines(manifest)[0]["counts"]["preference_test"]
        == 12
    )


def test_relabel_param_errors(db_url: str) -> None:
    record_chats(db_url, PROMPTS[:2])
    ok("dataset", "create", "x", "--db", db_url)
    assert_one_line_error(
        run("relabel", "x", "--model", "m", "--param", "oops", "--db", db_url), 2, "--param"
    )
    assert_one_line_error(
        run("relabel", "x", "--model", "m", "--param", "k={bad", "--db", db_url), 2, "not JSON"
    )


def test_review_round_trip_and_a_bad_line_on_the_command_line(db_url: str, tmp_path: Path) -> None:
    record_chats(db_url, PROMPTS[:12], tags={"prompt_id": "cancel"})
    ok("dataset", "create", "cancel", "--db", db_url)
    review = tmp_path / "review.jsonl"
    assert (
        "Wrote 12 entries of cancel (version 1)"
        in ok("review", "export", "cancel", "--out", str(review), "--db", db_url).stdout
    )
    lines = [orjson.loads(line) for line in review.read_bytes().splitlines()]
    lines[0]["output"]["content"] = "Cancelled, a refund is on its way."
    lines[1]["drop"] = True
    good = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    bad = tmp_path / "bad.jsonl"
    broken = [*lines[:5], {**lines[5], "output": {"role": "user", "content": "x"}}, *lines[6:]]
    bad.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in broken))
    error = assert_one_line_error(
        run("review", "import", "cancel", str(bad), "--db", db_url), 2, "bad.jsonl:6", "output.role"
    )
    assert "nothing was imported" in error
    (shown,) = json_lines(ok("dataset", "show", "cancel", "--json", "--db", db_url))
    assert shown["version"] == 1 and shown["entries"] == 12  # the bad file changed nothing
    review.write_bytes(good)
    assert (
        "Would import into cancel: 1 edited, 1 dropped"
        in ok("review", "import", "cancel", str(review), "--dry-run", "--db", db_url).stdout
    )
    assert (
        "Dataset cancel version 2: 1 edited, 1 dropped"
        in ok("review", "import", "cancel", str(review), "--db", db_url).stdout
    )
    assert "Nothing to import" in ok("review", "import", "cancel", str(review), "--db", db_url).stdout
    out = tmp_path / "out"
    ok("export", "cancel", "--out", str(out), "--min-examples", "1", "--test-fraction", "0", "--db", db_url)
    contents = [
        orjson.loads(line)["messages"][-1]["content"]
        for line in (out / "train.jsonl").read_bytes().splitlines()
    ]
    assert len(contents) == 11 and "Cancelled, a refund is on its way." in contents
