"""``call_stats`` on real SQLite and PostgreSQL stores: counts, tokens, cost and percentiles.

Percentiles are checked against ``statistics.quantiles(method="inclusive")``, which interpolates
the same way as PostgreSQL's ``percentile_cont``.
"""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_query import call_row, insert_calls, migrated

from flywheel.errors import UsageError
from flywheel.query import CallFilter
from flywheel.stats import call_stats, percentile

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


def expected_percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


@pytest.fixture
def traffic(db_url: str) -> tuple[str, list[dict[str, Any]]]:
    """250 calls over two models and three prompts with random latencies, some errors and timeouts."""
    rng = random.Random(20240510)
    rows = []
    for i in range(250):
        model = "gpt-4o-mini" if i % 5 else "gpt-4o"
        status: int | None = 200 if i % 17 else 429
        if i % 41 == 0:
            status = None
        tags = {"prompt_id": ["classify", "summarize", "extract"][i % 3]}
        if i % 4 == 0:
            tags["env"] = "prod"
        stream = i % 2 == 0
        rows.append(
            call_row(
                at=NOW - timedelta(minutes=i),
                model=model,
                status=status,
                latency_ms=round(rng.lognormvariate(6, 0.6), 3) if i % 23 else None,
                ttft_ms=round(rng.uniform(80, 400), 3) if stream else None,
                prompt_tokens=rng.randint(20, 400),
                completion_tokens=rng.randint(1, 200),
                # The price of gpt-4o is "unknown" for every third of its calls.
                cost_usd=None if model == "gpt-4o" and i % 3 == 0 else round(rng.uniform(1e-5, 1e-3), 8),
                tags=tags,
            )
        )
    url = migrated(db_url)
    insert_calls(url, rows)
    return url, rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``call_stats`` should say about ``rows``, computed the slow, obvious way."""
    latencies = sorted(r["latency_ms"] for r in rows if r["latency_ms"] is not None)
    ttfts = sorted(r["ttft_ms"] for r in rows if r["ttft_ms"] is not None)
    errors = sum(1 for r in rows if r["status_code"] is None or r["status_code"] >= 400)
    costs = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
    prompt = [r["prompt_tokens"] for r in rows if r["prompt_tokens"] is not None]
    expected = {
        "calls": len(rows),
        "errors": errors,
        "error_rate": pytest.approx(errors / len(rows)),
        "prompt_tokens": sum(prompt) if prompt else None,
        "cost_usd": pytest.approx(sum(costs)) if costs else None,
        "unpriced_calls": sum(1 for r in rows if r["cost_usd"] is None and r["prompt_tokens"] is not None),
        "cost_partial": bool(costs)
        and any(r["cost_usd"] is None and r["prompt_tokens"] is not None for r in rows),
    }
    if len(latencies) >= 2:
        for name, value in expected_percentiles(latencies).items():
            expected[f"latency_ms_{name}"] = pytest.approx(value)
    if len(ttfts) >= 2:
        expected["ttft_ms_p50"] = pytest.approx(statistics.median(ttfts))
    return expected


def assert_matches(found: dict[str, Any], expected: dict[str, Any]) -> None:
    assert {key: found[key] for key in expected} == expected


def test_stats_by_model(traffic: tuple[str, list[dict[str, Any]]]) -> None:
    url, rows = traffic
    found = call_stats(url, CallFilter())
    assert [group["model"] for group in found] == ["gpt-4o-mini", "gpt-4o"]  # biggest first
    for group in found:
        assert_matches(group, summarize([r for r in rows if r["model"] == group["model"]]))
    assert found[1]["cost_partial"] is True
    assert found[0]["cost_partial"] is False


def test_stats_by_tag_include_calls_without_the_tag(traffic: tuple[str, list[dict[str, Any]]]) -> None:
    url, rows = traffic
    found = call_stats(url, None, ["tag:env"])
    assert {group["tag:env"] for group in found} == {"prod", None}
    for group in found:
        assert_matches(group, summarize([r for r in rows if r["tags"].get("env") == group["tag:env"]]))
    assert sum(group["calls"] for group in found) == len(rows)


def test_stats_by_two_keys_with_a_filter(traffic: tuple[str, list[dict[str, Any]]]) -> None:
    url, rows = traffic
    found = call_stats(url, CallFilter(tags=(("env", "prod"),)), ["model", "tag:prompt_id"])
    keys = {(group["model"], group["tag:prompt_id"]) for group in found}
    assert keys == {(r["model"], r["tags"]["prompt_id"]) for r in rows if r["tags"].get("env") == "prod"}
    for group in found:
        assert_matches(
            group,
            summarize(
                [
                    r
                    for r in rows
                    if r["tags"].get("env") == "prod"
                    and r["model"] == group["model"]
                    and r["tags"]["prompt_id"] == group["tag:prompt_id"]
                ]
            ),
        )


def test_stats_by_status_code(traffic: tuple[str, list[dict[str, Any]]]) -> None:
    url, rows = traffic
    found = {group["status"]: group for group in call_stats(url, None, ["status"])}
    assert set(found) == {200, 429, None}
    assert found[200]["errors"] == 0
    assert found[429]["error_rate"] == 1.0
    assert found[None]["calls"] == sum(1 for r in rows if r["status_code"] is None)
    assert found[None]["latency_ms_p50"] is not None


def test_stats_overall_and_time_window(traffic: tuple[str, list[dict[str, Any]]]) -> None:
    url, rows = traffic
    (overall,) = call_stats(url, None, [])
    assert_matches(overall, summarize(rows))
    window = CallFilter.from_options(since="100m", until="50m", now=NOW)
    (windowed,) = call_stats(url, window, [])
    assert_matches(
        windowed, summarize([r for r in rows if 50 < (NOW - r["created_at"]).total_seconds() / 60 <= 100])
    )


def test_unknown_values_are_none_not_zero(db_url: str) -> None:
    url = migrated(db_url)
    insert_calls(url, [call_row(at=NOW, status=None), call_row(at=NOW, status=503, latency_ms=None)])
    (group,) = call_stats(url)
    assert group["calls"] == 2
    assert group["errors"] == 2
    assert group["cost_usd"] is None
    assert group["unpriced_calls"] == 0  # errors used no tokens: nothing is missing from the cost
    assert group["cost_partial"] is False
    assert group["prompt_tokens"] is None
    assert group["total_tokens"] is None
    assert group["latency_ms_p50"] == group["latency_ms_p99"] == 120.0  # one value: every percentile is it
    assert group["ttft_ms_p50"] is None


def test_no_matching_calls_give_no_groups(db_url: str) -> None:
    url = migrated(db_url)
    assert call_stats(url) == []
    assert call_stats(url, None, []) == []


@pytest.mark.parametrize("key", ["tag:", "tags:x", "region", ""])
def test_unknown_group_key_is_a_usage_error(key: str) -> None:
    with pytest.raises(UsageError) as caught:
        call_stats("sqlite:///never-opened.db", None, [key])
    assert caught.value.where == "--by"


def test_percentile_interpolates_like_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 20.0], 0.95) == pytest.approx(19.5)
    values = sorted(random.Random(1).uniform(0, 1000) for _ in range(101))
    assert percentile(values, 0.95) == pytest.approx(expected_percentiles(values)["p95"])
