"""Per-group statistics over recorded calls: volume, errors, tokens, cost and latency percentiles.

Counts and sums are one ``GROUP BY`` query. Percentiles are continuous (linear interpolation between
the two nearest values, like PostgreSQL's ``percentile_cont``):

- on PostgreSQL they are computed by the server with ``percentile_cont(q) WITHIN GROUP (ORDER BY x)``;
- on SQLite, which has no such aggregate, the values of one column are streamed ordered by group and
  value, each row carrying its group's size (a window ``count``), so only the values at the wanted
  ranks are kept: memory stays constant however many calls a group has.

``tag:KEY`` groups come from a LEFT JOIN on ``call_tags`` per key; the primary key
``(call_id, key)`` guarantees at most one match, so no call is counted twice. Calls without the tag
form the group whose key is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import ColumnElement, FromClause

from sdk.schema import call_tags, calls

from .errors import UsageError
from .query import TOTAL_TOKENS, CallFilter, connect, filter_conditions

__all__ = ["GROUP_KEYS", "PERCENTILES", "call_stats", "percentile"]

GROUP_KEYS = ("model", "endpoint", "status")
"""Group keys besides ``tag:KEY``. ``status`` is the HTTP status code (``None``: no response)."""

PERCENTILES: dict[str, tuple[float, ...]] = {"latency_ms": (0.5, 0.95, 0.99), "ttft_ms": (0.5,)}
"""Percentiles reported per group, by column; each becomes a ``<column>_p<NN>`` field."""


@dataclass(frozen=True, slots=True)
class _Group:
    name: str
    expression: ColumnElement[Any]


def _groups(group_by: Sequence[str]) -> tuple[list[_Group], FromClause]:
    """The grouping expressions for ``group_by`` and the FROM clause (with tag joins) they need."""
    source: FromClause = calls
    groups: list[_Group] = []
    for name in dict.fromkeys(group_by):
        if name == "model":
            groups.append(_Group(name, calls.c.model))
        elif name == "endpoint":
            groups.append(_Group(name, calls.c.endpoint))
        elif name == "status":
            groups.append(_Group(name, calls.c.status_code))
        elif name.startswith("tag:") and name[4:]:
            tag = call_tags.alias(f"tag_{len(groups)}")
            source = source.outerjoin(tag, sa.and_(tag.c.call_id == calls.c.id, tag.c.key == name[4:]))
            groups.append(_Group(name, tag.c.value))
        else:
            raise UsageError(
                f"cannot group by {name!r}: expected one of {', '.join(GROUP_KEYS)} or tag:KEY", "--by"
            )
    return groups, source


def _field(column: str, q: float) -> str:
    return f"{column}_p{round(q * 100):02d}"


def call_stats(
    url: str, call_filter: CallFilter | None = None, group_by: Sequence[str] = ("model",)
) -> list[dict[str, Any]]:
    """Statistics of the calls matching ``call_filter``, one dict per group, biggest group first.

    ``group_by`` names are ``model``, ``endpoint``, ``status`` (HTTP status code) or ``tag:KEY``;
    an empty ``group_by`` gives one overall group. Each dict has the group keys, then ``calls``,
    ``errors`` (HTTP >= 400 or no response), ``error_rate``, ``prompt_tokens``,
    ``completion_tokens``, ``total_tokens`` (``None`` when unknown for all calls), ``cost_usd``
    (``None`` when no call has a cost), ``unpriced_calls`` (calls that used tokens but have no cost:
    their model is not in the price table), ``cost_partial`` (``cost_usd`` is known but is a lower
    bound because of unpriced calls), and ``latency_ms_p50``/``_p95``/``_p99`` and ``ttft_ms_p50``
    (``None`` without values). No matching calls: an empty list.
    Raises ``UsageError`` for an unknown group key, ``StoreError`` when the store cannot be read.
    """
    groups, source = _groups(group_by)
    keys = [group.expression.label(f"g{i}") for i, group in enumerate(groups)]
    conditions = filter_conditions(call_filter or CallFilter())
    is_error = sa.or_(calls.c.status_code.is_(None), calls.c.status_code >= 400)
    # Errors usually carry neither usage nor cost; a call is unpriced when it used tokens but has no cost.
    unpriced = sa.and_(calls.c.cost_usd.is_(None), calls.c.prompt_tokens.is_not(None))
    measures: list[ColumnElement[Any]] = [
        sa.func.count().label("calls"),
        sa.func.sum(sa.case((is_error, 1), else_=0)).label("errors"),
        sa.func.sum(calls.c.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(calls.c.completion_tokens).label("completion_tokens"),
        sa.func.sum(TOTAL_TOKENS).label("total_tokens"),
        sa.func.sum(calls.c.cost_usd).label("cost_usd"),
        sa.func.sum(sa.case((unpriced, 1), else_=0)).label("unpriced_calls"),
    ]
    with connect(url) as connection:
        in_sql = connection.dialect.name == "postgresql"
        if in_sql:
            measures += [
                sa.func.percentile_cont(q).within_group(calls.c[column]).label(_field(column, q))
                for column, quantiles in PERCENTILES.items()
                for q in quantiles
            ]
        statement = sa.select(*keys, *measures).select_from(source).where(*conditions)
        if keys:
            statement = statement.group_by(*keys)
        rows = [row for row in connection.execute(statement).mappings() if row["calls"]]
        by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            key = tuple(row[f"g{i}"] for i in range(len(groups)))
            by_key[key] = _summary(groups, key, row, in_sql)
        if not in_sql and by_key:
            for column, quantiles in PERCENTILES.items():
                value = calls.c[column]
                partition = sa.func.count().over(partition_by=keys or None)
                ordered = (
                    sa.select(*keys, value, partition)
                    .select_from(source)
                    .where(*conditions, value.is_not(None))
                    .order_by(*keys, value)
                )
                streamed = connection.execute(ordered.execution_options(yield_per=2000))
                for key, found in _streamed_percentiles(streamed, len(keys), quantiles).items():
                    if key in by_key:
                        by_key[key].update({_field(column, q): found[q] for q in quantiles})
    return sorted(by_key.values(), key=lambda s: (-s["calls"], *_sortable(s, groups)))


def _summary(groups: list[_Group], key: tuple[Any, ...], row: Any, in_sql: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {group.name: value for group, value in zip(groups, key, strict=True)}
    calls_count, errors, unpriced = (
        int(row["calls"]),
        int(row["errors"] or 0),
        int(row["unpriced_calls"] or 0),
    )
    summary.update(
        calls=calls_count,
        errors=errors,
        error_rate=errors / calls_count,
        prompt_tokens=_int(row["prompt_tokens"]),
        completion_tokens=_int(row["completion_tokens"]),
        total_tokens=_int(row["total_tokens"]),
        cost_usd=None if row["cost_usd"] is None else float(row["cost_usd"]),
        unpriced_calls=unpriced,
        cost_partial=row["cost_usd"] is not None and unpriced > 0,
    )
    for column, quantiles in PERCENTILES.items():
        for q in quantiles:
            found = row[_field(column, q)] if in_sql else None
            summary[_field(column, q)] = None if found is None else float(found)
    return summary


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _sortable(summary: dict[str, Any], groups: list[_Group]) -> list[tuple[bool, str]]:
    return [(summary[g.name] is None, str(summary[g.name])) for g in groups]


def _ranks(n: int, q: float) -> tuple[int, int, float]:
    """The two 0-based ranks that percentile ``q`` of ``n`` sorted values lies between, and the weight."""
    position = q * (n - 1)
    low = math.floor(position)
    return low, min(low + 1, n - 1), position - low


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Continuous percentile (``percentile_cont``) of already sorted values; ``None`` if empty."""
    if not sorted_values:
        return None
    low, high, weight = _ranks(len(sorted_values), q)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * weight


def _streamed_percentiles(
    rows: Iterable[Any], width: int, quantiles: Sequence[float]
) -> dict[tuple[Any, ...], dict[float, float]]:
    """Percentiles per group from rows ``(*group_key, value, group_size)`` ordered by key, value.

    Keeps only the values at the ranks the percentiles need.
    """
    result: dict[tuple[Any, ...], dict[float, float]] = {}
    for key, group_rows in groupby(rows, key=lambda row: tuple(row[:width])):
        wanted: dict[int, float] = {}
        plans: list[tuple[float, int, int, float]] = []
        for rank, row in enumerate(group_rows):
            if rank == 0:
                plans = [(q, *_ranks(int(row[width + 1]), q)) for q in quantiles]
                wanted = dict.fromkeys({r for _, low, high, _ in plans for r in (low, high)}, math.nan)
            if rank in wanted:
                wanted[rank] = float(row[width])
        result[key] = {
            q: wanted[low] + (wanted[high] - wanted[low]) * weight for q, low, high, weight in plans
        }
    return result
