"""Pruning rules: stored on the dataset, applied by export, kept in the manifest; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from recorded_calls import T0, record_chats, scalar
from test_cli import assert_one_line_error, json_lines, ok, run

from flywheel.datasets import create_dataset
from flywheel.errors import UsageError
from flywheel.export import export_dataset
from flywheel.finetune_format import DropSystemPrompt, StripPrefix, apply_prune_rules, prune_rule_from_dict
from flywheel.prune import common_system_prompts, prune_rules, set_prune_rules
from flywheel.query import CallFilter

LONG_PROMPT = "You are the support assistant of Acme. Always answer in two sentences. " * 20


def make(db_url: str) -> None:
    record_chats(db_url, [f"Where is parcel {n}?" for n in range(15)], system=LONG_PROMPT)
    record_chats(db_url, ["odd one"], start=T0 + timedelta(days=1), system="Be terse.")
    create_dataset(db_url, "support", CallFilter())


def test_common_system_prompts_and_rules_round_trip(db_url: str) -> None:
    make(db_url)
    (top, other) = common_system_prompts(db_url, "support")
    assert (top.text, top.entries, round(top.share, 3)) == (LONG_PROMPT, 15, 0.938)
    assert other.text == "Be terse."
    version = set_prune_rules(db_url, "support", [DropSystemPrompt(top.sha256)])
    assert version == 2
    assert prune_rules(db_url, "support") == [DropSystemPrompt(top.sha256)]
    assert set_prune_rules(db_url, "support", [DropSystemPrompt(top.sha256)]) is None  # unchanged: no version
    assert scalar(db_url, "SELECT action FROM dataset_versions WHERE version = 2") == "rules"


def test_export_applies_the_rules_and_the_manifest_lets_inference_do_the_same(
    db_url: str, tmp_path: Path
) -> None:
    make(db_url)
    (top, _) = common_system_prompts(db_url, "support")
    set_prune_rules(db_url, "support", [DropSystemPrompt(top.sha256), StripPrefix("Be ")])
    export_dataset(db_url, "support", tmp_path / "out", test_fraction=0.0)
    examples = [orjson.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_bytes().splitlines()]
    assert all(m["content"] != LONG_PROMPT for e in examples for m in e["messages"])
    assert sum(e["messages"][0] == {"role": "system", "content": "terse."} for e in examples) == 1
    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    rules = [prune_rule_from_dict(rule) for rule in manifest["rules"]["prune_rules"]]
    request = [{"role": "system", "content": LONG_PROMPT}, {"role": "user", "content": "hi"}]
    assert apply_prune_rules(request, rules) == [{"role": "user", "content": "hi"}]


def test_prune_command(db_url: str) -> None:
    make(db_url)
    shown = ok("dataset", "prune", "support", "--db", db_url).stdout
    assert shown.startswith("Rules: none") and "93.8%" in shown
    assert (
        "version 2: 1 pruning rule"
        in ok("dataset", "prune", "support", "--drop-system-prompt", "--db", db_url).stdout
    )
    assert (
        "nothing changed" in ok("dataset", "prune", "support", "--drop-system-prompt", "--db", db_url).stdout
    )
    (described,) = json_lines(ok("dataset", "prune", "support", "--json", "--db", db_url))
    assert described["prune_rules"][0]["kind"] == "drop_system_prompt"
    assert_one_line_error(
        run(
            "dataset",
            "prune",
            "support",
            "--clear",
            "--drop-system-prompt",
            "--min-share",
            "0.99",
            "--db",
            db_url,
        ),
        2,
        "--min-share",
    )
    ok("dataset", "prune", "support", "--clear", "--db", db_url)
    assert prune_rules(db_url, "support") == []


@pytest.mark.parametrize("bad", [{"kind": "nope"}, {"kind": "strip_prefix", "prefix": ""}])
def test_bad_rules_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="not a prune rule"):
        prune_rule_from_dict(bad)
