"""``flywheel dedup``: exact and near-duplicate entries of a dataset, one representative kept per cluster.

The dataset's entries are streamed oldest call first; their inputs (messages and tools, through
``near_duplicates.input_text``) are clustered with MinHash LSH, the prompt boilerplate shared by
most of them left out (``near_duplicates``). Exact duplicates (same normalized text) always share a
cluster. With ``exact=True`` only the calls' ``input_hash`` is compared, in the database.

The rule, stable as data grows (``near_duplicates.choose_representative``): a cluster keeps its
first exported member, else its oldest one; the others are taken out of the dataset
(``removed_in`` = the new version, ``removed_reason`` ``duplicate`` when the input is the same,
``near_duplicate`` otherwise). An entry that was already exported is never taken out: it may have
been trained on, and it stays on its side of the split.

Cluster keys decide the split side (``flywheel.split``): the kept entry and the removed ones get
the kept entry's key (its ``cluster_key``, else its input hash, else its call id), and only where
they have none yet, so a key an export has used never changes and no exported entry ever changes
sides. (Two exported entries that a later call turns out to link both stay, each on its side.)

Invariants: one dataset version per run that changes something (action ``dedup``); nothing is
deleted; ``dry_run`` computes the same clusters and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import ARRAY
from sqlalchemy.engine import Connection

from sdk.schema import calls, dataset_entries

from .datasets import (
    Progress,
    count_entries,
    entries_at,
    record_version,
    require_dataset,
    save_setting,
    step_time,
    write_transaction,
)
from .errors import UsageError
from .near_duplicates import DEFAULT_THRESHOLD, choose_representative, input_text, near_duplicate_clusters
from .parallel import workers_for
from .query import connect
from .split import split_key

__all__ = ["Cluster", "DedupResult", "dedup_dataset"]

BATCH_ROWS = 2000
WRITE_ROWS = 10_000
PREVIEW_CHARS = 120


@dataclass(frozen=True, slots=True)
class Cluster:
    """Entries found to be (near-)duplicates: the one kept first, then the others, oldest first."""

    kept: int
    removed: tuple[int, ...]
    also_kept: tuple[int, ...]
    """Exported members other than the kept one: they stay (see the module docstring)."""
    key: str
    preview: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "removed": list(self.removed),
            "also_kept": list(self.also_kept),
            "key": self.key,
            "preview": self.preview,
        }


@dataclass(slots=True)
class DedupResult:
    """What ``dedup_dataset`` did (or, with ``dry_run``, would do)."""

    dataset: str
    version: int | None
    """The version it made; ``None`` when nothing changed or for a dry run."""
    entries: int
    clusters: int
    removed: int
    duplicates: int
    """Of the removed: same input as the kept entry."""
    near_duplicates: int
    threshold: float | None
    dry_run: bool
    shown: list[Cluster] = field(default_factory=list)
    """The largest clusters (up to ``show``), for the report."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "entries": self.entries,
            "clusters": self.clusters,
            "removed": self.removed,
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "threshold": self.threshold,
            "dry_run": self.dry_run,
            "largest_clusters": [cluster.as_dict() for cluster in self.shown],
        }


@dataclass(slots=True)
class _Entries:
    """What the rule needs per entry, kept compactly while the inputs stream past."""

    ids: list[int] = field(default_factory=list)
    keys: dict[int, str] = field(default_factory=dict)
    """An entry's effective split key: its cluster key, else its input hash, else its call id."""
    has_cluster_key: set[int] = field(default_factory=set)
    hashes: dict[int, str | None] = field(default_factory=dict)
    exported: set[int] = field(default_factory=set)


def dedup_dataset(
    database_url: str,
    name: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    exact: bool = False,
    dry_run: bool = False,
    show: int = 10,
    workers: int = 1,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> DedupResult:
    """Find the duplicate clusters of dataset ``name`` and keep one entry per cluster.

    ``threshold`` is the estimated Jaccard similarity of two inputs' word bigrams (boilerplate left
    out) from which they count as near-duplicates; the default 0.5 takes templated prompts that
    differ in a word or two as copies. ``exact`` compares input hashes only. ``workers`` > 1
    sketches the inputs of a large dataset (``parallel.WORKERS_FROM`` entries or more) in that
    many spawned processes; the clusters are the same. ``progress(done, total)`` is called as the
    entries are read.
    """
    if not 0 < threshold <= 1:
        raise UsageError(f"threshold must be above 0 and at most 1, got {threshold}", "--threshold")
    moment = step_time(now)
    with connect(database_url) as conn:
        dataset = require_dataset(conn, name)
        seen = _Entries()
        total = count_entries(conn, dataset.id, dataset.version)
        items = _items(conn, dataset, seen, with_text=not exact, progress=progress, total=total)
        if exact:
            for _ in items:  # only the bookkeeping: clusters come from the input hashes
                pass
            groups = _hash_groups(seen)
        else:
            groups = near_duplicate_clusters(
                items, threshold=threshold, text_of=_compared_text, workers=workers_for(total, workers)
            )
        clusters = [_decide(group, seen) for group in groups]
        removed = [(entry, cluster) for cluster in clusters for entry in cluster.removed]
        duplicates = sum(1 for entry, cluster in removed if _same_input(seen, entry, cluster.kept))
        keyed = [
            (entry, cluster.key)
            for cluster in clusters
            for entry in (cluster.kept, *cluster.removed)
            if entry not in seen.has_cluster_key
        ]
        result = DedupResult(
            dataset=name,
            version=None,
            entries=len(seen.ids),
            clusters=len(clusters),
            removed=len(removed),
            duplicates=duplicates,
            near_duplicates=len(removed) - duplicates,
            threshold=None if exact else threshold,
            dry_run=dry_run,
            shown=_with_previews(
                conn, sorted(clusters, key=lambda c: (-len(c.removed) - len(c.also_kept), c.kept))[:show]
            ),
        )
        if dry_run or not (removed or keyed):
            return result
        with write_transaction(conn):
            current = require_dataset(conn, name)
            if current.version != dataset.version:
                raise UsageError(
                    f"dataset {name!r} changed while dedup ran (version {dataset.version} -> "
                    f"{current.version}); run it again",
                    name,
                )
            version = int(dataset.version) + 1
            _write(conn, removed, keyed, seen, version)
            dedup_rules = {"threshold": result.threshold, "exact": exact}
            save_setting(conn, dataset.id, orjson.loads(dataset.settings), "dedup", dedup_rules)
            details = {
                k: v
                for k, v in result.as_dict().items()
                if k not in ("largest_clusters", "dry_run", "version")
            }
            record_version(conn, dataset.id, version, "dedup", details, moment)
        result.version = version
        return result


def _items(
    conn: Connection,
    dataset: sa.Row[Any],
    seen: _Entries,
    *,
    with_text: bool,
    progress: Progress | None = None,
    total: int = 0,
) -> Iterator[tuple[int, str]]:
    """``(entry id, request JSON)`` oldest call first (``_compared_text`` makes it the compared text),
    noting what the rule needs on the way."""
    e, c = dataset_entries.c, calls.c
    columns: list[Any] = [e.id, e.call_id, e.cluster_key, e.first_exported_in, c.input_hash]
    if with_text:
        columns.append(c.request)
    statement = (
        sa.select(*columns)
        .select_from(dataset_entries.join(calls, c.id == e.call_id))
        .where(entries_at(dataset.id, dataset.version))
        .order_by(e.call_id)
        .execution_options(stream_results=True, yield_per=BATCH_ROWS)
    )
    done = 0
    for partition in conn.execute(statement).partitions():
        for entry, call_id, cluster_key, exported_in, input_hash, *text in partition:
            seen.ids.append(entry)
            seen.keys[entry] = split_key(cluster_key, input_hash, call_id)
            if cluster_key is not None:
                seen.has_cluster_key.add(entry)
            seen.hashes[entry] = input_hash
            if exported_in is not None:
                seen.exported.add(entry)
            yield entry, text[0] if text else ""
        done += len(partition)
        if progress is not None:
            progress(done, total)


def _compared_text(request_text: str) -> str:
    request = orjson.loads(request_text)
    return input_text(request.get("messages") or (), request.get("tools"))


def _with_previews(conn: Connection, clusters: list[Cluster]) -> list[Cluster]:
    """The clusters shown, each with the end of its kept entry's input (read for these only)."""
    if not clusters:
        return clusters
    e = dataset_entries.c
    requests = dict(
        conn.execute(
            sa.select(e.id, calls.c.request)
            .select_from(dataset_entries.join(calls, calls.c.id == e.call_id))
            .where(e.id.in_([cluster.kept for cluster in clusters]))
        ).all()
    )
    return [
        replace(cluster, preview=" ".join(_compared_text(requests[cluster.kept]).split())[-PREVIEW_CHARS:])
        for cluster in clusters
    ]


def _same_input(seen: _Entries, entry: int, other: int) -> bool:
    digest = seen.hashes.get(entry)
    return digest is not None and digest == seen.hashes.get(other)


def _hash_groups(seen: _Entries) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for entry in seen.ids:
        digest = seen.hashes.get(entry)
        if digest is not None:
            groups.setdefault(digest, []).append(entry)
    return [members for members in groups.values() if len(members) > 1]


def _decide(members: list[int], seen: _Entries) -> Cluster:
    kept = choose_representative(members, seen.exported)
    others = [entry for entry in members if entry != kept]
    return Cluster(
        kept=kept,
        removed=tuple(entry for entry in others if entry not in seen.exported),
        also_kept=tuple(entry for entry in others if entry in seen.exported),
        key=seen.keys[kept],
    )


def _write(
    conn: Connection,
    removed: list[tuple[int, Cluster]],
    keyed: list[tuple[int, str]],
    seen: _Entries,
    version: int,
) -> None:
    """Each changed entry updated once: its cluster key (where it had none), its removal (where it
    is taken out), or both. One UPDATE for both stores; only where its rows come from differs."""
    changes: dict[int, list[str | None]] = {entry: [key, None] for entry, key in keyed}
    for entry, cluster in removed:
        reason = "duplicate" if _same_input(seen, entry, cluster.kept) else "near_duplicate"
        changes.setdefault(entry, [None, None])[1] = reason
    rows = [(entry, key, reason) for entry, (key, reason) in changes.items()]
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        # WRITE_ROWS at a time from arrays: a statement per row costs PostgreSQL a round trip each.
        arrays = (
            sa.func.unnest(
                sa.bindparam("entries", type_=ARRAY(sa.Integer)),
                sa.bindparam("keys", type_=ARRAY(sa.String)),
                sa.bindparam("reasons", type_=ARRAY(sa.String)),
            )
            .table_valued("entry", "key", "reason")
            .render_derived(name="changed")
        )
        statement = _update_entries(arrays.c.entry, arrays.c.key, arrays.c.reason, version)
        for start in range(0, len(rows), WRITE_ROWS):
            entries, keys, reasons = zip(*rows[start : start + WRITE_ROWS], strict=True)
            conn.execute(statement, {"entries": list(entries), "keys": list(keys), "reasons": list(reasons)})
        return
    # SQLite's executemany runs in-process: one statement per row is as fast.
    conn.execute(
        _update_entries(
            sa.bindparam("entry", type_=sa.Integer),
            sa.bindparam("key", type_=sa.String),
            sa.bindparam("why", type_=sa.String),
            version,
        ),
        [{"entry": entry, "key": key, "why": reason} for entry, key, reason in rows],
    )


def _update_entries(entry: Any, key: Any, reason: Any, version: int) -> sa.Update:
    """Set ``key`` as the cluster key and take the entry out for ``reason``, each unless NULL."""
    e = dataset_entries.c
    return (
        sa.update(dataset_entries)
        .where(e.id == entry)
        .values(
            cluster_key=sa.func.coalesce(key, e.cluster_key),
            removed_in=sa.case((reason.is_(None), e.removed_in), else_=version),
            removed_reason=sa.func.coalesce(reason, e.removed_reason),
        )
    )
