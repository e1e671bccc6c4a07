"""The HTML evaluation report: opened in real headless Chromium, and its SVG charts as pure functions.

The page must load nothing, raise no console error, run none of the model text it shows, and carry
every number of the report object exactly (``data-value``), so ``--html`` can be checked against
``--json``.
"""

from __future__ import annotations

import copy
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from browser import dom_numbers, render_in_chromium, report_numbers

from flywheel.evaluate.report_html import CONTENT_SECURITY_POLICY, render_html
from flywheel.evaluate.svg_charts import (
    IntervalRow,
    interval_chart,
    latency_chart,
    nice_ceiling,
    no_data_chart,
)

BASE = "gpt-4o-mini"
FEW_SHOT = "gpt-4o-mini+8shot"
TUNED = "ft:gpt-4o-mini:acme:classify:abc123"
SCRIPT_PAYLOAD = "<script>alert(1)</script>"
TITLE_PAYLOAD = "<script>document.title='pwned'</script>"
ELEMENT_PAYLOAD = '</div></pre><img id="pwned" src=x onerror="document.title=\'pwned\'">'


def _estimate(value: float, low: float, high: float, n: int) -> dict[str, Any]:
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def _model(name: str, base: str, few_shot: int, fine_tuned: bool, offset: float) -> dict[str, Any]:
    latencies = sorted(200.0 + offset * 300 + 17.5 * i + (i % 7) * 31.25 for i in range(40))
    return {
        "model": name,
        "base_model": base,
        "few_shot": few_shot,
        "fine_tuned": fine_tuned,
        "n": 40,
        "errors": 1 if fine_tuned else 0,
        "metrics": {
            "json_valid": _estimate(0.975 - offset / 10, 0.8712, 0.9956, 40),
            "json_required_keys": _estimate(0.95, 0.8350993, 0.9862, 40),
            "json_no_extra_keys": _estimate(1.0, 0.9124, 1.0, 40),
            "exact_match": _estimate(0.6 + offset / 4, 0.30000000000000004, 0.7 + offset / 4, 40),
            "field_accuracy": _estimate(0.7125, 0.6, 0.8, 80),
            "length_ok": _estimate(0.5, 0.35, 0.65, 40),
        },
        "fields": {
            "label": _estimate(0.725, 0.572, 0.839, 40),
            "priority": _estimate(0.7 + offset / 10, 0.546, 0.819, 40),
        },
        "judge": {
            "opponent": "reference",
            "wins": {"count": 12 + few_shot, **_estimate(0.3, 0.18, 0.45, 40)},
            "ties": {"count": 20, **_estimate(0.5, 0.35, 0.65, 40)},
            "losses": {"count": 8 - few_shot, **_estimate(0.2, 0.105, 0.348, 40)},
            "position_agreement": None if few_shot else _estimate(0.9, 0.596, 0.982, 10),
        },
        "cost_per_1k_usd": None if few_shot else 0.21 - offset / 10,
        "prompt_tokens_per_1k": 120000.0 + few_shot * 50000,
        "completion_tokens_per_1k": 8000.5,
        "latency_p50_ms": latencies[20],
        "latency_p95_ms": latencies[37],
        "latencies_ms": latencies,
        "training": None,
    }


def _report() -> dict[str, Any]:
    base = _model(BASE, BASE, 0, False, 0.0)
    few_shot = _model(FEW_SHOT, BASE, 8, False, 0.5)
    del few_shot["metrics"]["length_ok"]  # absent where it does not apply: shown as "—"
    tuned = _model(TUNED, TUNED, 0, True, 0.9)
    tuned["training"] = {
        "job_id": 3,
        "training_cost_usd": 1.2,
        "compared_with": BASE,
        "saving_per_1k_usd": 0.05,
        "break_even_requests": 24000,
    }
    return {
        "pipeline": "classify",
        "run_id": "3f2a9c4be1d04f6a8b7c6d5e4f3a2b1c",
        "status": "finished",
        "created_at": "2026-12-04T19:00:00+00:00",
        "dataset": "classify",
        "dataset_version": 4,
        "examples": 40,
        "seed": 1234,
        "judge": {"model": "gpt-4o", "opponent": "reference", "bias_sample": 10},
        "models": [base, few_shot, tuned],
        "metric_groups": {
            "format": ["json_valid", "json_required_keys", "json_no_extra_keys"],
            "answer": ["exact_match", "field_accuracy", "tool_name_match", "tool_args_match"],
        },
        "worst": [
            {
                "call_id": "c0ffee01",
                "input": f"Classify: {SCRIPT_PAYLOAD} please",
                "reference": '{"label": "bug", "priority": "high"}',
                "outputs": {BASE: SCRIPT_PAYLOAD, FEW_SHOT: ELEMENT_PAYLOAD, TUNED: None},
                "scores": {BASE: 0.0, FEW_SHOT: 0.25, TUNED: 0.0},
            },
            {
                "call_id": "c0ffee02",
                "input": "Classify: the app crashes on start",
                "reference": '{"label": "bug", "priority": "high"}',
                "outputs": {BASE: TITLE_PAYLOAD, FEW_SHOT: '{"label": "bug"}', TUNED: '{"label": "bug"}'},
                "scores": {BASE: 0.0, FEW_SHOT: 0.5, TUNED: 0.5},
            },
        ],
        "warnings": ['position agreement 0.55 is below 0.8: the judge\'s "verdicts" depend on <the order>'],
    }


class _Elements(HTMLParser):
    """Every start tag with its attributes, and all text, from a DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _elements(dom: str) -> _Elements:
    parser = _Elements()
    parser.feed(dom)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any]:
    report = _report()
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    sort_by_p50 = (
        "(() => { const table = document.querySelector('table.cost');"
        " Array.from(table.tHead.rows[0].cells).find(c => c.textContent === 'Latency p50').click();"
        " return Array.from(table.tBodies[0].rows).map(r => r.cells[0].textContent); })()"
    )
    return report, render_in_chromium(path, evaluate=[sort_by_p50])


def test_report_opens_without_console_errors_and_its_script_runs(
    rendered: tuple[dict[str, Any], Any],
) -> None:
    report, page = rendered
    assert page.console_errors == []
    html_tag = _elements(page.dom).tags[0]
    assert html_tag == ("html", {"lang": "en", "data-js": "ready"})  # the inline script ran under the CSP
    by_p50 = sorted(report["models"], key=lambda m: m["latency_p50_ms"], reverse=True)
    assert page.evaluated == [[m["model"] for m in by_p50]]


def test_every_number_of_the_report_is_in_the_page_exactly(rendered: tuple[dict[str, Any], Any]) -> None:
    report, page = rendered
    expected = report_numbers(report)
    shown = dom_numbers(page.dom)
    assert shown == expected
    # The keys the brief names, spelled out so a renaming cannot pass silently.
    for model in report["models"]:
        name = model["model"]
        for metric, estimate in model["metrics"].items():
            for part in ("value", "ci_low", "ci_high", "n"):
                assert shown[(name, f"metrics.{metric}.{part}")] == estimate[part]
        for outcome in ("wins", "ties", "losses"):
            assert shown[(name, f"judge.{outcome}.count")] == model["judge"][outcome]["count"]
        for key in ("latency_p50_ms", "latency_p95_ms", "prompt_tokens_per_1k"):
            assert shown[(name, key)] == model[key]
    assert shown[(BASE, "cost_per_1k_usd")] == 0.21
    assert (FEW_SHOT, "cost_per_1k_usd") not in shown  # null: "—", no number
    assert shown[(BASE, "metrics.exact_match.ci_low")] == 0.30000000000000004
    assert shown[(TUNED, "training.break_even_requests")] == 24000
    assert shown[(None, "examples")] == 40 and shown[(None, "judge.bias_sample")] == 10


def test_numbers_are_formatted_for_people(rendered: tuple[dict[str, Any], Any]) -> None:
    _, page = rendered
    text = "".join(_elements(page.dom).text)
    assert re.search(r"60\.0 %\s*\[30\.0,\s*70\.0\]\s*n=40", text)
    assert "$0.2100" in text and "24,000 requests" in text
    assert "Format correctness" in text and "Answer correctness" in text and "User scorers" in text


def test_model_text_is_shown_escaped_and_never_runs(rendered: tuple[dict[str, Any], Any]) -> None:
    report, page = rendered
    elements = _elements(page.dom)
    tags = elements.tags
    assert [tag for tag, _ in tags].count("script") == 1  # only the report's own
    assert not any(attrs.get("id") == "pwned" for _, attrs in tags)
    assert not any(tag == "img" for tag, _ in tags)
    assert "pwned" not in page.dom.split("<title>")[1].split("</title>")[0]
    shown = "".join(elements.text)
    for payload in (SCRIPT_PAYLOAD, TITLE_PAYLOAD, ELEMENT_PAYLOAD):
        assert payload in shown  # visible as text, exactly
    assert report["warnings"][0] in shown
    assert "(no output)" in shown


def test_the_page_loads_nothing(rendered: tuple[dict[str, Any], Any]) -> None:
    _, page = rendered
    assert len(page.requests) == 1 and page.requests[0].startswith("file://")
    tags = _elements(page.dom).tags
    csp = [a for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == [{"http-equiv": "Content-Security-Policy", "content": CONTENT_SECURITY_POLICY}]
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    for _, attrs in tags:
        for name in ("src", "href", "action", "xlink:href"):
            assert not (attrs.get(name) or "").lower().startswith(("http", "//"))


def test_a_broken_page_is_reported(tmp_path: Path) -> None:
    page_path = tmp_path / "broken.html"
    page_path.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body><p>hi</p>"
        "<script>setTimeout(() => console.error('late error'), 50); undefinedFunctionCall();</script>"
        "</body></html>"
    )
    page = render_in_chromium(page_path)
    assert any("undefinedFunctionCall is not defined" in error for error in page.console_errors)
    assert any("late error" in error for error in page.console_errors)
    assert "<p>hi</p>" in page.dom


@pytest.fixture
def image_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records the paths asked of it."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_page_that_loads_something_is_caught(tmp_path: Path, image_server: tuple[str, list[str]]) -> None:
    base_url, asked = image_server
    page_path = tmp_path / "loads.html"
    # Without a CSP the image is fetched: the server sees it, and so does ``requests``.
    page_path.write_text(f'<!DOCTYPE html><html><body><img src="{base_url}/open.png"></body></html>')
    page = render_in_chromium(page_path)
    assert f"{base_url}/open.png" in page.requests and asked == ["/open.png"]
    # Under the report's CSP the same kind of load is refused before it leaves the browser, as a
    # console error (``requests`` still lists what the page asked for).
    page_path.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        f'content="{CONTENT_SECURITY_POLICY}"></head><body><img src="{base_url}/blocked.png"></body></html>'
    )
    page = render_in_chromium(page_path)
    assert asked == ["/open.png"]
    assert any("Content Security Policy" in e and "blocked.png" in e for e in page.console_errors)


def test_dom_numbers_refuses_a_number_shown_two_ways() -> None:
    dom = '<span data-model="m" data-key="n" data-value="40"></span>'
    dom += '<b data-model="m" data-key="n" data-value="41">'
    with pytest.raises(ValueError, match="shown as both"):
        dom_numbers(dom)
    assert dom_numbers('<i data-key="seed" data-value="7"></i><i data-key="x" data-value="0.1">') == {
        (None, "seed"): 7,
        (None, "x"): 0.1,
    }


def test_html_without_judge_training_or_worst_and_a_running_status() -> None:
    report = _report()
    report.update(status="running", judge=None, worst=[], warnings=[])
    for model in report["models"]:
        model.pop("judge")
        model["training"] = None
    html = render_html(report)
    assert dom_numbers(html) == report_numbers(report)
    assert "The run is running" in html and "Pairwise judge" not in html and "Worst examples" not in html


def test_html_of_an_empty_run_renders() -> None:
    report = copy.deepcopy(_report())
    report.update(models=[], worst=[])
    html = render_html(report)
    assert "No metrics." in html and dom_numbers(html) == report_numbers(report)


# --- svg_charts: pure ---------------------------------------------------------------------------


def _svg(text: str) -> ET.Element:
    return ET.fromstring(text)  # well-formed XML, so every label was escaped


def _by_class(svg: ET.Element, css: str) -> list[ET.Element]:
    return [e for e in svg.iter() if css in (e.get("class") or "").split()]


def test_interval_whiskers_are_monotone_in_the_values() -> None:
    rows = [IntervalRow(f"m{i}", 0.1 * i + 0.05, 0.1 * i, 0.1 * i + 0.2) for i in range(8)]
    svg = _svg(interval_chart("exact match", rows))
    points = [float(p.get("cx", "")) for p in _by_class(svg, "point")]
    whiskers = [(float(w.get("x1", "")), float(w.get("x2", ""))) for w in _by_class(svg, "whisker")]
    assert len(points) == len(whiskers) == 8
    assert points == sorted(points) and len(set(points)) == 8
    assert [w[0] for w in whiskers] == sorted(w[0] for w in whiskers)
    for (low, high), point in zip(whiskers, points, strict=True):
        assert low < point < high


def test_interval_chart_clamps_and_marks_missing_values() -> None:
    svg = _svg(interval_chart("t", [IntervalRow("a", 1.0, 0.9, 1.3), IntervalRow("b", None, None, None)]))
    (whisker,) = _by_class(svg, "whisker")
    (point,) = _by_class(svg, "point")
    assert float(whisker.get("x2", "")) == float(point.get("cx", ""))  # 1.3 clamped to the axis end
    assert any(e.text == "n/a" for e in svg.iter())


@pytest.mark.parametrize(
    "chart",
    [
        lambda: interval_chart("empty", []),
        lambda: interval_chart("all missing", [IntervalRow("a", None, None, None)]),
        lambda: latency_chart("empty", {}),
        lambda: latency_chart("no values", {"a": [], "b": [float("nan")]}),
    ],
)
def test_empty_data_gives_a_no_data_chart(chart: Any) -> None:
    svg = _svg(chart())
    assert "no-data-chart" in (svg.get("class") or "").split()
    assert [e.text for e in _by_class(svg, "no-data")] == ["no data"]


def test_latency_boxes_follow_the_distributions() -> None:
    fast, slow = [100.0, 120.0, 140.0, 160.0, 900.0], [400.0, 450.0, 500.0, 550.0, 600.0]
    svg = _svg(latency_chart("latency", {"fast <b>": list(reversed(fast)), "slow": slow}))
    boxes = _by_class(svg, "box")
    medians = [float(m.get("x1", "")) for m in _by_class(svg, "median")]
    assert [b.get("data-label") for b in boxes] == ["fast <b>", "slow"]
    lefts = [float(b.get("x", "")) for b in boxes]
    rights = [left + float(b.get("width", "")) for left, b in zip(lefts, boxes, strict=True)]
    assert lefts[0] < lefts[1] and medians[0] < medians[1]
    for left, median, right in zip(lefts, medians, rights, strict=True):
        assert left <= median <= right


def test_quantile_and_axis_end() -> None:
    from flywheel.stats import percentile  # what the latency chart's box and whiskers use

    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([0.0, 10.0], 0.95) == pytest.approx(9.5)
    assert [nice_ceiling(v) for v in (0.0, 0.7, 1.0, 1.2, 2.1, 2.6, 7.0, 930.0)] == [
        1.0,
        1.0,
        1.0,
        2.0,
        2.5,
        5.0,
        10.0,
        1000.0,
    ]


def test_no_data_chart_escapes_its_title() -> None:
    svg = _svg(no_data_chart("a < b & c"))
    assert svg.find("{http://www.w3.org/2000/svg}title") is not None
    assert svg.findtext("{http://www.w3.org/2000/svg}title") == "a < b & c"
