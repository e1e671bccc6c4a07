"""Inline SVG charts for the HTML evaluation report, drawn in Python so the file needs no network.

Two charts: estimates with their 95 % interval (one row per model, a point and a whisker on a 0-1
axis) and latency distributions (one row per model, a box from the 25th to the 75th percentile, a
median tick, whiskers from the minimum to the 95th percentile, and the individual calls as a strip).

Invariants: every function is pure and returns one ``<svg>`` element as text; all text is escaped;
x coordinates grow with the values they draw (the scale is linear and clamped to the axis); empty or
all-missing data gives a chart that says "no data", never an exception. Presentation is set with
SVG attributes, never ``style=""``, so the report's Content-Security-Policy needs no
``'unsafe-inline'`` styles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from ..stats import percentile

__all__ = [
    "IntervalRow",
    "interval_chart",
    "latency_chart",
    "nice_ceiling",
    "no_data_chart",
]

WIDTH = 560
LABEL_WIDTH = 190
RIGHT_MARGIN = 24
ROW_HEIGHT = 26
TOP = 28
AXIS_HEIGHT = 26
MAX_STRIP_POINTS = 200
"""Points drawn per model in the latency strip; more are thinned evenly (the box uses them all)."""

PALETTE = ("#3563c9", "#d9762b", "#2f9e6e", "#b5409b", "#7a6a2a", "#5a5a5a")


@dataclass(frozen=True)
class IntervalRow:
    """One model's estimate: ``value`` inside ``[low, high]``, fractions 0-1 (``None``: not measured)."""

    label: str
    value: float | None
    low: float | None
    high: float | None


def _number(value: float) -> str:
    """An SVG coordinate: two decimals are finer than a pixel, and keep the file small."""
    return f"{value:.2f}"


def _plot_x(value: float, axis_max: float) -> float:
    """Map ``value`` on ``[0, axis_max]`` to an x coordinate, clamped so outliers stay on the plot."""
    span = WIDTH - LABEL_WIDTH - RIGHT_MARGIN
    fraction = 0.0 if axis_max <= 0 else min(max(value / axis_max, 0.0), 1.0)
    return LABEL_WIDTH + fraction * span


def _open_svg(title: str, height: float, kind: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" role="img" '
        f'width="{WIDTH}" height="{_number(height)}" viewBox="0 0 {WIDTH} {_number(height)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="4" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]


def no_data_chart(title: str) -> str:
    """A chart that says there is nothing to draw (a model list or a value list was empty)."""
    height = TOP + 2 * ROW_HEIGHT
    parts = _open_svg(title, height, "no-data-chart")
    parts.append(
        f'<text class="no-data" x="{WIDTH / 2:.0f}" y="{TOP + ROW_HEIGHT:.0f}" text-anchor="middle" '
        'font-size="13" fill="#777">no data</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _axis(ticks: Sequence[float], axis_max: float, y: float, fmt: str) -> list[str]:
    """A horizontal axis at ``y`` with grid lines up to the top of the plot."""
    parts = [
        f'<line class="axis" x1="{_number(_plot_x(0, axis_max))}" y1="{_number(y)}" '
        f'x2="{_number(_plot_x(axis_max, axis_max))}" y2="{_number(y)}" stroke="#999"/>'
    ]
    for tick in ticks:
        x = _number(_plot_x(tick, axis_max))
        parts.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{_number(y)}" stroke="#e4e4e4"/>')
        parts.append(
            f'<text x="{x}" y="{_number(y + 16)}" font-size="11" text-anchor="middle" '
            f'fill="#555">{escape(fmt.format(tick))}</text>'
        )
    return parts


def _row_label(label: str, y_mid: float) -> str:
    # Long model names (ft:...:abc123) are cut for the picture; the <title> keeps the whole name.
    shown = label if len(label) <= 30 else label[:28] + "…"
    return (
        f'<text x="{LABEL_WIDTH - 8}" y="{_number(y_mid + 4)}" font-size="12" text-anchor="end">'
        f"<title>{escape(label)}</title>{escape(shown)}</text>"
    )


def interval_chart(title: str, rows: Sequence[IntervalRow]) -> str:
    """Each row's estimate as a point with a whisker for its 95 % interval, on a 0-100 % axis.

    Rows without a value are listed with "n/a" so the reader sees the model was not measured.
    """
    if not rows or all(row.value is None for row in rows):
        return no_data_chart(title)
    axis_y = TOP + ROW_HEIGHT * len(rows) + 4
    parts = _open_svg(title, axis_y + AXIS_HEIGHT, "interval-chart")
    parts += _axis((0.0, 0.25, 0.5, 0.75, 1.0), 1.0, axis_y, "{:.0%}")
    for index, row in enumerate(rows):
        y_mid = TOP + ROW_HEIGHT * index + ROW_HEIGHT / 2
        colour = PALETTE[index % len(PALETTE)]
        parts.append(_row_label(row.label, y_mid))
        if row.value is None:
            parts.append(
                f'<text x="{LABEL_WIDTH + 4}" y="{_number(y_mid + 4)}" font-size="11" fill="#777">n/a</text>'
            )
            continue
        label = escape(row.label)
        low = row.value if row.low is None else row.low
        high = row.value if row.high is None else row.high
        x_low, x_high = _number(_plot_x(low, 1.0)), _number(_plot_x(high, 1.0))
        parts.append(
            f'<line class="whisker" data-label="{label}" x1="{x_low}" y1="{_number(y_mid)}" '
            f'x2="{x_high}" y2="{_number(y_mid)}" stroke="{colour}" stroke-width="2"/>'
        )
        for x in (x_low, x_high):
            parts.append(
                f'<line x1="{x}" y1="{_number(y_mid - 5)}" x2="{x}" y2="{_number(y_mid + 5)}" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
        parts.append(
            f'<circle class="point" data-label="{label}" cx="{_number(_plot_x(row.value, 1.0))}" '
            f'cy="{_number(y_mid)}" r="4.5" fill="{colour}"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= ``value`` (an axis end)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value:
            return step * power
    return 10.0 * power


def _thinned(values: Sequence[float]) -> list[float]:
    if len(values) <= MAX_STRIP_POINTS:
        return list(values)
    stride = (len(values) - 1) / (MAX_STRIP_POINTS - 1)
    return [values[round(i * stride)] for i in range(MAX_STRIP_POINTS)]


def latency_chart(title: str, latencies_ms: Mapping[str, Sequence[float]]) -> str:
    """Per model, a box plot of latency (p25-p75, median, min-p95 whiskers) over a strip of calls.

    Values are sorted here, so callers may pass them in any order; non-finite values are dropped.
    """
    series = {label: sorted(v for v in values if math.isfinite(v)) for label, values in latencies_ms.items()}
    if not any(series.values()):
        return no_data_chart(title)
    axis_max = nice_ceiling(max(values[-1] for values in series.values() if values))
    axis_y = TOP + ROW_HEIGHT * len(series) + 4
    parts = _open_svg(title, axis_y + AXIS_HEIGHT, "latency-chart")
    parts += _axis([axis_max * i / 4 for i in range(5)], axis_max, axis_y, "{:,.0f} ms")
    for index, (label, values) in enumerate(series.items()):
        y_mid = TOP + ROW_HEIGHT * index + ROW_HEIGHT / 2
        colour = PALETTE[index % len(PALETTE)]
        parts.append(_row_label(label, y_mid))
        if not values:
            parts.append(
                f'<text x="{LABEL_WIDTH + 4}" y="{_number(y_mid + 4)}" font-size="11" fill="#777">n/a</text>'
            )
            continue
        name = escape(label)
        x_of = {q: _plot_x(percentile(values, q) or 0.0, axis_max) for q in (0.25, 0.5, 0.75, 0.95)}
        x_min = _plot_x(values[0], axis_max)
        for value in _thinned(values):
            parts.append(
                f'<circle cx="{_number(_plot_x(value, axis_max))}" cy="{_number(y_mid)}" r="2" '
                f'fill="{colour}" fill-opacity="0.35"/>'
            )
        parts.append(
            f'<line class="range" data-label="{name}" x1="{_number(x_min)}" y1="{_number(y_mid)}" '
            f'x2="{_number(x_of[0.95])}" y2="{_number(y_mid)}" stroke="{colour}"/>'
        )
        parts.append(
            f'<rect class="box" data-label="{name}" x="{_number(x_of[0.25])}" y="{_number(y_mid - 7)}" '
            f'width="{_number(x_of[0.75] - x_of[0.25])}" height="14" fill="{colour}" fill-opacity="0.25" '
            f'stroke="{colour}"/>'
        )
        parts.append(
            f'<line class="median" data-label="{name}" x1="{_number(x_of[0.5])}" y1="{_number(y_mid - 8)}" '
            f'x2="{_number(x_of[0.5])}" y2="{_number(y_mid + 8)}" stroke="{colour}" stroke-width="3"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
