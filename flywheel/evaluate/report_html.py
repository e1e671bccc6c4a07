"""The evaluation report (the object ``flywheel eval report --json`` prints) as one self-contained HTML file.

Self-contained means no network at all: styles and the one small script are inline, charts are
inline SVG from :mod:`flywheel.evaluate.svg_charts`, and a Content-Security-Policy meta tag forbids
every load (``default-src 'none'``) and admits only this module's own script and style by hash, so
even a rendering bug could not run injected code.

Invariants:

- All text is escaped: model outputs, inputs and names are untrusted.
- Every number shown that is in the report object is machine-checkable: it sits in an element with
  ``data-key`` (its path in the model's object, e.g. ``metrics.exact_match.ci_low``,
  ``judge.wins.count``, ``latency_p95_ms``; top-level ones like ``examples`` have no model),
  ``data-model`` (the candidate) and ``data-value`` (the exact JSON number, ``repr``), while the
  visible text is formatted for people. A ``null`` is shown as "—" and carries no ``data-value``.
- Pure: ``render_html`` reads only its argument.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any

from ..train.cost import format_usd
from .svg_charts import IntervalRow, interval_chart, latency_chart

__all__ = ["CONTENT_SECURITY_POLICY", "render_html"]

GROUP_TITLES = {"format": "Format correctness", "answer": "Answer correctness"}
SCORER_GROUP = "User scorers"
MISSING = '<span class="missing">—</span>'

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
dl.header{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dt{font-weight:600;color:#555}dd{margin:0}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4}table.sortable th{cursor:pointer}
th[data-sort=asc]::after{content:" ▲"}th[data-sort=desc]::after{content:" ▼"}
tr.group th{background:#e9eef8}.ci,.n{color:#666;font-size:12px}.missing{color:#aaa}
.warnings{border:2px solid #c0392b;background:#fdecea;padding:8px 16px;margin:16px 0}
.warnings h2{border:0;margin:0;color:#c0392b}.status{font-weight:600}.status-failed{color:#c0392b}
.status-running{color:#b7791f}.charts{display:flex;flex-wrap:wrap;gap:8px}
.example{border:1px solid #ddd;padding:8px;margin:12px 0}
.pair,.outputs{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:8px}
pre{white-space:pre-wrap;word-break:break-word;background:#f8f8f8;padding:6px;margin:2px 0;
max-height:320px;overflow:auto}h4{margin:4px 0}
"""

# Click a header of a sortable table to sort its rows by that column (numbers by data-value).
# It also marks the page, so a test can tell that the script ran under the CSP.
_SCRIPT = """
"use strict";
document.documentElement.dataset.js = "ready";
for (const table of document.querySelectorAll("table.sortable")) {
  const heads = table.tHead.rows[0].cells;
  Array.from(heads).forEach((head, column) => {
    head.addEventListener("click", () => {
      const descending = head.dataset.sort !== "desc";
      for (const other of heads) delete other.dataset.sort;
      head.dataset.sort = descending ? "desc" : "asc";
      const key = (row) => {
        const cell = row.cells[column];
        const number = cell && cell.querySelector("[data-value]");
        const value = number ? Number(number.dataset.value) : NaN;
        return Number.isNaN(value) ? (cell ? cell.textContent : "") : value;
      };
      const body = table.tBodies[0];
      const rows = Array.from(body.rows).sort((a, b) => {
        const x = key(a), y = key(b);
        const numeric = typeof x === "number" && typeof y === "number";
        const order = numeric ? x - y : String(x).localeCompare(String(y));
        return descending ? -order : order;
      });
      body.append(...rows);
    });
  });
}
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src '{_sha256(_SCRIPT)}'; style-src '{_sha256(_STYLE)}'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)
"""Nothing may load; only this module's script and style (by hash) may run or apply."""


def _text(value: object) -> str:
    return escape(str(value), quote=True)


def _json_number(value: int | float) -> str:
    # repr is the shortest text that reads back as the same float, as JSON encoders write it.
    return repr(int(value)) if isinstance(value, int) else repr(float(value))


def _num(value: Any, shown: str, key: str, model: str | None = None, **extra: str) -> str:
    """``shown`` in an element that carries the exact ``value`` for machines; ``None`` is "—"."""
    if value is None or isinstance(value, bool):
        return MISSING
    attrs = f' data-key="{_text(key)}" data-value="{_json_number(value)}"'
    if model is not None:
        attrs = f' data-model="{_text(model)}"' + attrs
    attrs += "".join(f' data-{name}="{_text(v)}"' for name, v in extra.items())
    return f'<span class="num"{attrs}>{_text(shown)}</span>'


def _percent(value: float) -> str:
    return f"{value * 100:.1f}"


def _usd(value: float) -> str:
    return format_usd(value)


def _estimate(estimate: Mapping[str, Any] | None, model: str, key: str, **extra: str) -> str:
    """A fraction with its 95 % interval and count: "85.0 % [71.0, 93.0] n=40"."""
    if not estimate:
        return MISSING
    value, low, high, n = (estimate.get(k) for k in ("value", "ci_low", "ci_high", "n"))
    parts = [
        _num(value, f"{_percent(value)} %", f"{key}.value", model, **extra) if value is not None else MISSING
    ]
    if low is not None and high is not None:
        parts.append(
            f'<span class="ci">[{_num(low, _percent(low), f"{key}.ci_low", model, **extra)}, '
            f"{_num(high, _percent(high), f'{key}.ci_high', model, **extra)}]</span>"
        )
    if n is not None:
        parts.append(f'<span class="n">n={_num(n, str(n), f"{key}.n", model, **extra)}</span>')
    return " ".join(parts)


def _table(headers: Sequence[str], rows: Iterable[str], *, sortable: bool = False, css: str = "") -> str:
    classes = " ".join(c for c in (css, "sortable" if sortable else "") if c)
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    class_attr = f' class="{classes}"' if classes else ""
    return f"<table{class_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(cells: Iterable[str]) -> str:
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _models(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(report.get("models") or [])


def _header(report: Mapping[str, Any]) -> str:
    judge = report.get("judge")
    judge_text = "none"
    if judge:
        judge_text = (
            f"{_text(judge.get('model'))} vs {_text(judge.get('opponent'))}, position-bias sample "
            + _num(judge.get("bias_sample"), str(judge.get("bias_sample")), "judge.bias_sample")
        )
    status = str(report.get("status"))
    dataset = f"{_text(report.get('dataset'))} v" + _num(
        report.get("dataset_version"), str(report.get("dataset_version")), "dataset_version"
    )
    items = [
        ("Pipeline", _text(report.get("pipeline"))),
        ("Run", f"<code>{_text(report.get('run_id'))}</code>"),
        ("Created", _text(report.get("created_at"))),
        ("Status", f'<span class="status status-{_text(status)}">{_text(status)}</span>'),
        ("Dataset", dataset),
        ("Test examples", _num(report.get("examples"), f"{report.get('examples')}", "examples")),
        ("Seed", _num(report.get("seed"), str(report.get("seed")), "seed")),
        ("Judge", judge_text),
    ]
    body = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items)
    title = f"Evaluation: {_text(report.get('pipeline'))}"
    return f'<header><h1>{title}</h1><dl class="header">{body}</dl></header>'


def _warnings(report: Mapping[str, Any]) -> str:
    warnings = [str(w) for w in report.get("warnings") or []]
    status = report.get("status")
    if status != "finished":
        warnings.insert(0, f"The run is {status}: the numbers cover only the items finished so far.")
    if not warnings:
        return ""
    items = "".join(f"<li>{_text(w)}</li>" for w in warnings)
    return f'<section class="warnings" role="alert"><h2>Warnings</h2><ul>{items}</ul></section>'


def _metric_groups(report: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """Metric names by group, in the groups' order, then every other metric as a user scorer."""
    present: list[str] = []
    for model in _models(report):
        present += [name for name in model.get("metrics") or {} if name not in present]
    groups: list[tuple[str, list[str]]] = []
    grouped: set[str] = set()
    for group, names in (report.get("metric_groups") or {}).items():
        shown = [name for name in names if name in present]
        grouped.update(names)
        if shown:
            groups.append((GROUP_TITLES.get(group, str(group)), shown))
    scorers = [name for name in present if name not in grouped]
    if scorers:
        groups.append((SCORER_GROUP, scorers))
    return groups


def _metrics_section(report: Mapping[str, Any]) -> str:
    models = _models(report)
    groups = _metric_groups(report)
    if not groups:
        return "<h2>Metrics</h2><p>No metrics.</p>"
    names = [str(m["model"]) for m in models]
    rows: list[str] = []
    charts: list[str] = []
    for title, metric_names in groups:
        rows.append(f'<tr class="group"><th colspan="{len(models) + 1}">{_text(title)}</th></tr>')
        for metric in metric_names:
            cells = [_text(metric.replace("_", " "))]
            chart_rows = []
            for model in models:
                estimate = (model.get("metrics") or {}).get(metric)
                cells.append(_estimate(estimate, str(model["model"]), f"metrics.{metric}", metric=metric))
                value = estimate or {}
                chart_rows.append(
                    IntervalRow(
                        str(model["model"]), value.get("value"), value.get("ci_low"), value.get("ci_high")
                    )
                )
            rows.append(_row(cells))
            charts.append(interval_chart(f"{title}: {metric.replace('_', ' ')}", chart_rows))
    table = _table(["Metric (95 % interval)", *names], rows, css="metrics")
    return f'<h2>Metrics</h2>{table}<div class="charts">{"".join(charts)}</div>'


def _fields_section(report: Mapping[str, Any]) -> str:
    models = _models(report)
    fields: list[str] = []
    for model in models:
        fields += [name for name in model.get("fields") or {} if name not in fields]
    if not fields:
        return ""
    rows = [
        _row(
            [f"<code>{_text(field)}</code>"]
            + [
                _estimate((m.get("fields") or {}).get(field), str(m["model"]), f"fields.{field}", field=field)
                for m in models
            ]
        )
        for field in fields
    ]
    table = _table(["Field", *[str(m["model"]) for m in models]], rows, css="fields")
    return f"<h2>Per-field accuracy</h2>{table}"


def _judge_section(report: Mapping[str, Any]) -> str:
    judged = [m for m in _models(report) if m.get("judge")]
    if not judged:
        return ""
    rows = []
    for model in judged:
        name, judge = str(model["model"]), model["judge"]
        cells = [_text(name), _text(judge.get("opponent"))]
        for outcome in ("wins", "ties", "losses"):
            result = judge.get(outcome) or {}
            count = _num(result.get("count"), str(result.get("count")), f"judge.{outcome}.count", name)
            cells.append(f"{count} · {_estimate(result, name, f'judge.{outcome}')}")
        cells.append(_estimate(judge.get("position_agreement"), name, "judge.position_agreement"))
        rows.append(_row(cells))
    headers = ["Model", "Opponent", "Wins", "Ties", "Losses", "Position agreement"]
    chart = interval_chart(
        "Judge: win rate",
        [
            IntervalRow(str(m["model"]), w.get("value"), w.get("ci_low"), w.get("ci_high"))
            for m in judged
            for w in [m["judge"].get("wins") or {}]
        ],
    )
    return f"<h2>Pairwise judge</h2>{_table(headers, rows, sortable=True, css='judge')}{chart}"


MODEL_NUMBERS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("Few-shot", "few_shot", str),
    ("Answered", "n", "{:,}".format),
    ("Errors", "errors", "{:,}".format),
    ("USD / 1k requests", "cost_per_1k_usd", _usd),
    ("Prompt tokens / 1k", "prompt_tokens_per_1k", "{:,.0f}".format),
    ("Completion tokens / 1k", "completion_tokens_per_1k", "{:,.0f}".format),
    ("Latency p50", "latency_p50_ms", "{:,.0f} ms".format),
    ("Latency p95", "latency_p95_ms", "{:,.0f} ms".format),
)
"""The cost and latency table's number columns: header, key in the model's object, format."""


def _cost_section(report: Mapping[str, Any]) -> str:
    models = _models(report)
    rows = []
    for model in models:
        name = str(model["model"])
        cells = [_text(name), _text(model.get("base_model")), "yes" if model.get("fine_tuned") else "no"]
        for _, key, shown in MODEL_NUMBERS:
            value = model.get(key)
            cells.append(MISSING if value is None else _num(value, shown(value), key, name))
        rows.append(_row(cells))
    headers = ["Model", "Base model", "Fine-tuned", *(header for header, _, _ in MODEL_NUMBERS)]
    latencies = {str(m["model"]): list(m.get("latencies_ms") or []) for m in models}
    table = _table(headers, rows, sortable=True, css="cost")
    chart = latency_chart("Latency per call", latencies)
    return f"<h2>Models, cost and latency</h2>{table}<div class='charts'>{chart}</div>"


def _training_section(report: Mapping[str, Any]) -> str:
    trained = [m for m in _models(report) if m.get("training")]
    if not trained:
        return ""
    rows = []
    for model in trained:
        name, training = str(model["model"]), model["training"]
        cost, saving = training.get("training_cost_usd"), training.get("saving_per_1k_usd")
        requests = training.get("break_even_requests")
        rows.append(
            _row(
                [
                    _text(name),
                    _num(training.get("job_id"), str(training.get("job_id")), "training.job_id", name),
                    _num(cost, _usd(cost), "training.training_cost_usd", name)
                    if cost is not None
                    else MISSING,
                    _text(training.get("compared_with")),
                    _num(saving, _usd(saving), "training.saving_per_1k_usd", name)
                    if saving is not None
                    else MISSING,
                    _num(requests, f"{requests:,.0f} requests", "training.break_even_requests", name)
                    if requests is not None
                    else "never (no saving per call)",
                ]
            )
        )
    headers = ["Model", "Job", "Training cost", "Compared with", "Saving / 1k requests", "Break-even"]
    return f"<h2>Training cost and break-even</h2>{_table(headers, rows, css='training')}"


def _worst_section(report: Mapping[str, Any]) -> str:
    worst = list(report.get("worst") or [])
    if not worst:
        return ""
    order = [str(m["model"]) for m in _models(report)]
    blocks = []
    for example in worst:
        call_id = str(example.get("call_id"))
        outputs: Mapping[str, Any] = example.get("outputs") or {}
        scores: Mapping[str, Any] = example.get("scores") or {}
        names = [n for n in order if n in outputs or n in scores]
        names += [str(n) for n in [*outputs, *scores] if n not in names]
        cards = []
        for name in dict.fromkeys(names):
            score = scores.get(name)
            shown = f"{score:.2f}" if isinstance(score, int | float) and not isinstance(score, bool) else ""
            output = outputs.get(name)
            text = "<em>(no output)</em>" if output is None else _text(output)
            cards.append(
                f'<div class="output"><h4>{_text(name)} · score '
                f"{_num(score, shown, f'worst.{call_id}.score', name)}</h4><pre>{text}</pre></div>"
            )
        blocks.append(
            f'<section class="example" data-call-id="{_text(call_id)}">'
            f"<h3>Call <code>{_text(call_id)}</code></h3>"
            f'<div class="pair"><div><h4>Input</h4><pre>{_text(example.get("input"))}</pre></div>'
            f"<div><h4>Reference</h4><pre>{_text(example.get('reference'))}</pre></div></div>"
            f'<div class="outputs">{"".join(cards)}</div></section>'
        )
    return "<h2>Worst examples</h2>" + "".join(blocks)


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as one HTML document that loads nothing from anywhere."""
    sections = [
        _header(report),
        _warnings(report),
        _metrics_section(report),
        _fields_section(report),
        _judge_section(report),
        _cost_section(report),
        _training_section(report),
        _worst_section(report),
    ]
    title = f"Flywheel evaluation: {report.get('pipeline')} ({report.get('run_id')})"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_text(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + f"\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )
