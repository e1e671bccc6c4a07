"""The report for a terminal: one table of metrics per model, then cost, latency, judge and warnings.

Percentages with their 95 % interval, ``-`` where a metric does not apply; the same numbers as
``--json`` (rounded for reading).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..train.cost import format_usd

__all__ = ["render_text"]


def render_text(report: Mapping[str, Any]) -> str:
    """``report`` (the ``eval report --json`` object) as plain text tables."""
    models: Sequence[Mapping[str, Any]] = report["models"]
    names = [model["model"] for model in models]
    lines = [
        f"{report['pipeline']}: eval run {report['run_id']} ({report['status']}), dataset "
        f"{report['dataset']} v{report['dataset_version']}, {report['examples']} test examples",
        "",
    ]
    grouped = [name for names_ in report["metric_groups"].values() for name in names_]
    scorer_names = sorted({name for model in models for name in model["metrics"]} - set(grouped))
    rows: list[list[str]] = []
    for group, metric_names in [*report["metric_groups"].items(), ("scorers", scorer_names)]:
        present = [name for name in metric_names if any(name in model["metrics"] for model in models)]
        if not present:
            continue
        rows.append([f"{group} correctness" if group != "scorers" else "your scorers"])
        for name in present:
            rows.append([f"  {name}", *(_estimate(model["metrics"].get(name)) for model in models)])
    rows.append(["cost and speed"])
    rows.append(["  USD per 1k requests", *(_usd(model["cost_per_1k_usd"]) for model in models)])
    rows.append(["  latency p50 / p95 ms", *(_latency(model) for model in models)])
    if any(model.get("training") for model in models):
        rows.append(["  break-even requests", *(_break_even(model.get("training")) for model in models)])
    if any(model.get("judge") for model in models):
        opponent = next(model["judge"]["opponent"] for model in models if model.get("judge"))
        rows.append([f"judge vs {opponent}"])
        for key in ("wins", "ties", "losses"):
            rows.append([f"  {key}", *(_judged(model.get("judge"), key) for model in models)])
        rows.append(["  position agreement", *(_agreement(model.get("judge")) for model in models)])
    rows.append(["answered / errors", *(f"{model['n']} / {model['errors']}" for model in models)])
    lines.extend(_table(["", *names], rows))
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    width = len(headers)
    full = [list(row) + [""] * (width - len(row)) for row in rows]
    sizes = [max(len(str(row[i])) for row in [list(headers), *full]) for i in range(width)]
    out = ["  ".join(str(cell).ljust(sizes[i]) for i, cell in enumerate(headers)).rstrip()]
    out.extend("  ".join(str(cell).ljust(sizes[i]) for i, cell in enumerate(row)).rstrip() for row in full)
    return out


def _estimate(estimate: Mapping[str, Any] | None) -> str:
    if estimate is None:
        return "-"
    return f"{estimate['value'] * 100:.1f}% [{estimate['ci_low'] * 100:.1f}, {estimate['ci_high'] * 100:.1f}]"


def _usd(value: float | None) -> str:
    return format_usd(value, "unknown")


def _latency(model: Mapping[str, Any]) -> str:
    p50, p95 = model["latency_p50_ms"], model["latency_p95_ms"]
    return "-" if p50 is None else f"{p50:,.0f} / {p95:,.0f}"


def _break_even(training: Mapping[str, Any] | None) -> str:
    if not training:
        return ""
    if training["break_even_requests"] is None:
        return "never" if training["saving_per_1k_usd"] is not None else "unknown"
    return f"{training['break_even_requests']:,}"


def _judged(judge: Mapping[str, Any] | None, key: str) -> str:
    if not judge:
        return "-"
    item = judge[key]
    return f"{item['count']} ({_estimate(item)})"


def _agreement(judge: Mapping[str, Any] | None) -> str:
    if not judge or judge["position_agreement"] is None:
        return "-"
    return _estimate(judge["position_agreement"])
