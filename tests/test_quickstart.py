"""`flywheel quickstart` runs offline end to end: calls recorded, then dataset, dedup, relabel,
export, the training loop, and the eval with a promotion and a routed app call."""

from __future__ import annotations

from pathlib import Path

import orjson
import sqlalchemy as sa
from click.testing import CliRunner
from cookbook_checks import cookbook_format_errors

import sdk
from flywheel.cli import cli
from flywheel.datasets import get_dataset
from flywheel.evaluate.promote import promotion_history
from flywheel.evaluate.report import eval_report
from flywheel.logs import recent_calls
from flywheel.query import CallFilter, connect
from flywheel.stats import call_stats
from flywheel.train.config import load_config
from flywheel.train.jobs import list_jobs
from flywheel.validate import validate_dataset
from sdk.schema import eval_outputs


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
    assert "33 of 50 examples, not launching" in result.output
    assert "relabel by gpt-4o: 36 relabeled, 0 failed" in result.output  # the teacher labels new traffic
    (job,) = list_jobs(db_url, "triage")
    assert job.status == "succeeded" and job.dataset_version == 5 and job.train_examples == 59
    assert job.fine_tuned_model is not None and job.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:")
    assert f"running -> succeeded -> {job.fine_tuned_model}" in result.output
    assert (info.entries, info.removed) == (80, 18)
    _assert_the_eval_promotion_and_route(db_url, out, job.fine_tuned_model, job.export_dir, result.output)
    # Running it again adds the same calls again; dedup takes the copies out, nothing moves.
    again = CliRunner().invoke(cli, ["quickstart", "--db", db_url, "--out", str(out)])
    assert again.exit_code == 0, again.output
    total = sum(row["calls"] for row in call_stats(db_url, app_calls, ()))
    assert total == 2 * sum(row["calls"] for row in stats.values())
    second = orjson.loads((out / "manifest.json").read_bytes())
    for side in ("train", "test"):  # the loop's calls joined the dataset; nothing changed sides
        assert set(manifest["splits"][side]) <= set(second["splits"][side])
    # No new job, so no second eval: the first run's model lived in the first run's mock server.
    assert "No new fine-tuned model this run, so no eval" in again.output
    assert len(promotion_history(db_url, "triage")) == 1


def _assert_the_eval_promotion_and_route(
    db_url: str, out: Path, model: str, export_dir: str | None, output: str
) -> None:
    base = "gpt-4o-mini-2024-07-18"
    assert f"$ flywheel eval triage --models {base},{model}" in output
    assert f"$ flywheel eval report triage --html {out / 'eval.html'}" in output
    assert f"$ flywheel promote triage {model}" in output
    pipeline = load_config(out / "flywheel.toml").pipeline("triage")
    report = eval_report(db_url, pipeline)
    # Exactly the held-out split of the export the job trained on, for both models.
    assert export_dir is not None
    held_out = orjson.loads((Path(export_dir) / "manifest.json").read_bytes())["splits"]["test"]
    assert report["examples"] == len(held_out) == 21 and report["status"] == "finished"
    with connect(db_url) as conn:
        answered = conn.execute(
            sa.select(eval_outputs.c.candidate, eval_outputs.c.call_id, eval_outputs.c.output).where(
                eval_outputs.c.run_id == report["run_id"]
            )
        ).all()
    for candidate in (base, model):
        assert sorted(row.call_id for row in answered if row.candidate == candidate) == sorted(held_out)
    assert all(row.output is not None for row in answered)
    models = {entry["model"]: entry for entry in report["models"]}
    assert set(models) == {base, model} and models[model]["fine_tuned"]
    for entry in models.values():
        assert entry["n"] == 21 and entry["errors"] == 0
        for metric in (
            "json_valid",
            "json_required_keys",
            "json_no_extra_keys",
            "exact_match",
            "field_accuracy",
        ):
            estimate = entry["metrics"][metric]
            assert estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"], (metric, estimate)
            assert estimate["ci_high"] - estimate["ci_low"] > 0
        assert entry["cost_per_1k_usd"] is not None and entry["cost_per_1k_usd"] > 0
        assert entry["latency_p50_ms"] is not None and entry["latency_p95_ms"] >= entry["latency_p50_ms"]
    tuned, plain = models[model]["metrics"], models[base]["metrics"]
    assert tuned["exact_match"]["value"] > plain["exact_match"]["value"]
    # The base model's format and answers are measured apart, and neither is trivial.
    assert 0 < plain["exact_match"]["value"] < plain["json_valid"]["value"] < 1
    assert plain["json_no_extra_keys"]["value"] < plain["json_valid"]["value"]
    assert "format correctness" in output and "answer correctness" in output
    html = (out / "eval.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and report["run_id"] in html and model in html
    # Promoted with the run that justified it; the app's routed call reached the new model.
    (promotion,) = promotion_history(db_url, "triage")
    assert (promotion.model, promotion.previous_model, promotion.action) == (model, base, "promote")
    assert promotion.eval_run_id == report["run_id"]
    sdk.flush(timeout=30)
    routed = recent_calls(db_url, CallFilter(tags=(("flywheel_route", "triage"),)), limit=100, full=True)
    assert routed[0]["model"] == model and routed[0]["response"]["model"] == model
    assert routed[0]["request"]["model"] == model and routed[0]["tags"]["flywheel_route"] == "triage"
    assert routed[-1]["model"] == base  # the call before the promotion reached the base model
    assert f"the running app's calls reach {model}" in output
