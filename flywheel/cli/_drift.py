"""``flywheel drift NAME``: is a pipeline's recent traffic still like its training data?"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from ..evaluate.drift import DEFAULT_WINDOW, SAMPLE_LIMIT, DriftReport, drift_report
from ..evaluate.drift.stats import p_text
from ..query import TIME_FORMATS_HELP, parse_time
from ..train.config import load_config
from ._base import _db, _print_json, _table, cli, db_option
from ._config import config_option

_WINDOW_TEXT = f"{DEFAULT_WINDOW.days}d"


@cli.command("drift")
@click.argument("name")
@click.option(
    "--since",
    metavar="TIME",
    default=_WINDOW_TEXT,
    show_default=True,
    help=f"Recent traffic is the calls at or after TIME: {TIME_FORMATS_HELP}.",
)
@click.option(
    "--sample",
    "sample_limit",
    type=click.IntRange(min=1),
    default=SAMPLE_LIMIT,
    show_default=True,
    metavar="N",
    help="Calls compared per side at most (a deterministic sample beyond).",
)
@config_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def drift_command(
    name: str, since: str, sample_limit: int, config_path: str | None, db_url: str | None, as_json: bool
) -> None:
    """Compare pipeline NAME's recent traffic with the data its model was trained on.

    Input length, words, novelty (inputs with no near neighbour in the training data), and the mix
    of models and tags, each with its threshold; then whether a retrain or a new eval is due. The
    training data is the train split of the dataset's newest export. Read-only.
    """
    pipeline = load_config(config_path).pipeline(name)
    now = datetime.now(UTC)
    report = drift_report(
        _db(db_url), pipeline, since=parse_time(since, now), now=now, sample_limit=sample_limit
    )
    if as_json:
        _print_json(report.as_dict())
        return
    click.echo(_report_text(report))


def _report_text(report: DriftReport) -> str:
    training = f"{report.training_sampled:,}" + (
        f" of {report.training_calls:,}" if report.training_sampled < report.training_calls else ""
    )
    recent = f"{report.recent_sampled:,}" + (
        f" of {report.recent_calls:,}" if report.recent_sampled < report.recent_calls else ""
    )
    source = (
        f"train split of export {report.export_id} "
        f"(dataset {report.dataset} version {report.dataset_version})"
        if report.training_source == "export"
        else f"dataset {report.dataset} version {report.dataset_version} (no export yet)"
    )
    lines = [
        f"pipeline {report.pipeline}: recent traffic since {report.since:%Y-%m-%d %H:%M} UTC",
        f"  training  {training} calls: {source}",
        f"  recent    {recent} calls",
        "",
    ]
    data = report.as_dict()["statistics"]
    if report.enough_traffic:
        rows = [_row("input length", _length_value(data["length"]), data["length"])]
        rows.append(_row("words", _words_value(data["words"]), data["words"]))
        rows.append(_row("novelty", _novelty_value(data["novelty"]), data["novelty"]))
        rows.append(_row("model mix", _mix_value(data["model_mix"]), data["model_mix"]))
        rows.extend(_row(f"tag {key}", _mix_value(mix), mix) for key, mix in data["tag_mix"].items())
        lines += [_table(["statistic", "value", "threshold", "flag"], rows), ""]
    lines.append(f"retrain due: {'yes' if report.retrain_due else 'no'}")
    lines += [f"  - {reason}" for reason in report.retrain_reasons]
    lines.append(f"eval due: {'yes' if report.eval_due else 'no'}")
    lines += [f"  - {reason}" for reason in report.eval_reasons]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _row(label: str, value: str, data: dict[str, Any]) -> list[str]:
    return [label, value, _threshold_text(data["threshold"]), "DRIFT" if data["flagged"] else "ok"]


def _threshold_text(threshold: dict[str, float]) -> str:
    words = {
        "p_value_below": "p<{}",
        "p_value_at_most": "p<={}",
        "ks_statistic_at_least": "D>={}",
        "excess_bits_at_least": "excess>={} bits",
        "excess_at_least": "excess>={}",
        "above_baseline_by": "baseline+{}",
        "share_at_most": "share>{}",
    }
    return ", ".join(words[key].format(f"{value:g}") for key, value in threshold.items())


def _length_value(data: dict[str, Any]) -> str:
    t, r = data["training"], data["recent"]
    return (
        f"D={data['ks_statistic']:.2f} {p_text(data['p_value'])}; "
        f"median {r['median']:g} vs {t['median']:g}, p95 {r['p95']:g} vs {t['p95']:g} tokens"
    )


def _words_value(data: dict[str, Any]) -> str:
    rising = f"; rising: {', '.join(data['rising_words'][:3])}" if data["flagged"] else ""
    return (
        f"JSD {data['jensen_shannon_bits']:.3f} bits (chance {data['chance_bits']:.3f}) "
        f"{p_text(data['p_value'])}{rising}"
    )


def _novelty_value(data: dict[str, Any]) -> str:
    baseline = data["baseline_share"]
    against = "" if baseline is None else f" (baseline {baseline:.0%})"
    return f"{data['share']:.0%} of {data['compared']:,} novel{against} {p_text(data['p_value'])}"


def _mix_value(data: dict[str, Any]) -> str:
    top = ", ".join(f"{value} {share:.0%}" for value, share in list(data["recent"].items())[:2])
    distance = f"TVD {data['total_variation']:.2f} (chance {data['chance']:.2f})"
    return f"{distance} {p_text(data['p_value'])}; now {top}"
