"""`flywheel quickstart` runs offline end to end: calls recorded, then dataset, dedup, relabel, export."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner
from cookbook_checks import cookbook_format_errors

from flywheel.cli import cli
from flywheel.datasets import get_dataset
from flywheel.query import CallFilter
from flywheel.stats import call_stats
from flywheel.train.jobs import list_jobs
from flywheel.validate import validate_dataset


def test_quickstart_records_every_call_and_exports_valid_files(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["quickstart", "--db", db_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rows in `calls`: 0 -> " in result.output
    assert "flywheel logs" in result.output
    app_calls = CallFilter.model_validate({"tags": ["app=support-bot"]})
    stats = {row["model"]: row for row in call_stats(db_url, app_calls, ("model",))}
    assert set(stats) == {"gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"}
    assert stats["gpt-4o-mini"]["errors"] == 3  # two failed attempts before a retry succeeded, one 400
    assert stats["gpt-4o-mini"]["cost_usd"] > 0
    # The flywheel part: 12 exact and 6 near-copies taken out, every kept entry relabeled, exported.
    info = get_dataset(db_url, "triage")
    assert [v.action for v in info.history][:3] == ["create", "dedup", "relabel"]
    first_part = [v for v in info.history if v.version <= 3]
    assert first_part[0].details["added"] - first_part[1].details["removed"] == 44
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == 44
    assert manifest["counts"]["preference_train"] + manifest["counts"]["preference_test"] == 44
    train = [orjson.loads(line) for line in (out / "train.jsonl").read_bytes().splitlines()]
    assert validate_dataset((str(n), example) for n, example in enumerate(train)).ok
    assert cookbook_format_errors(train) == {}
    # The training loop: below the threshold no job; 36 more calls; one job, polled to success.
    assert "35 of 50 examples, not launching" in result.output
    (job,) = list_jobs(db_url, "triage")
    assert job.status == "succeeded" and job.dataset_version == 4 and job.train_examples == 59
    assert job.fine_tuned_model is not None and job.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:")
    assert f"running -> succeeded -> {job.fine_tuned_model}" in result.output
    assert (info.entries, info.removed) == (80, 18)
    # Running it again adds the same calls again; dedup takes the copies out, nothing moves.
    again = CliRunner().invoke(cli, ["quickstart", "--db", db_url, "--out", str(out)])
    assert again.exit_code == 0, again.output
    total = sum(row["calls"] for row in call_stats(db_url, app_calls, ()))
    assert total == 2 * sum(row["calls"] for row in stats.values())
    second = orjson.loads((out / "manifest.json").read_bytes())
    for side in ("train", "test"):  # the loop's calls joined the dataset; nothing changed sides
        assert set(manifest["splits"][side]) <= set(second["splits"][side])
