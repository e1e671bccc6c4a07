"""``flywheel export``: a dataset version as train/test JSONL in OpenAI's fine-tuning format.

Writes into ``out_dir``:

- ``train.jsonl`` / ``test.jsonl``: one chat example per entry (``{"messages": [...], "tools": ...}``);
- ``preference_train.jsonl`` / ``preference_test.jsonl``: a DPO example per entry that has both its
  original output and a newer one (relabeled or edited), newer preferred; only when there are any;
- ``manifest.json``: dataset name and version, filter, rules, counts, the call ids on each side and
  the files' sha256, enough to check or rebuild the export.

Invariants:
- The split is ``flywheel.split.stable_split`` of each entry's cluster key (its dedup cluster, else
  its input hash, else its call id), so exporting again after the dataset grew puts every entry on
  the side it was on, and near-duplicates never straddle the split. The split rules are stored on
  the dataset at its first export and reused; passing other ones changes them (and says so).
- Nothing is written to ``out_dir`` unless every example passes ``flywheel.validate`` (or, with
  ``skip_invalid``, the entries that do not are left out and listed): each example is checked
  before it is written to a temporary directory inside ``out_dir``, and the files are moved in
  only at the end, the manifest last. Entries are streamed from the database; memory holds a few
  batches of rows plus the call ids per side.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import call_tags, calls, dataset_entries, dataset_versions, entry_outputs, exports

from . import __version__
from .datasets import (
    Progress,
    count_entries,
    entries_at,
    entries_with_outputs,
    require_dataset,
    save_setting,
    step_time,
    write_transaction,
)
from .errors import FlywheelError, UsageError
from .export_lines import EntryRow, ExportJob, PreparedEntry, job_rules, prepared_batches
from .finetune_format import PruneRule, TrainOn, prune_rule_from_dict
from .parallel import workers_for
from .query import connect
from .split import DEFAULT_TEST_FRACTION, Side
from .validate import MIN_EXAMPLES, DatasetValidator, Issue, Method, ValidationReport

__all__ = ["ExportError", "ExportResult", "SplitRules", "export_dataset"]

BATCH_ROWS = 1000
MAX_ISSUES_SHOWN = 20


class ExportError(FlywheelError):
    """The export did not pass validation; nothing was written. ``issues`` says which entries and why."""

    def __init__(self, message: str, where: str | None, issues: Sequence[Issue]) -> None:
        super().__init__(message, where)
        self.issues = list(issues)


@dataclass(frozen=True, slots=True)
class SplitRules:
    """How entries are assigned to train and test; stored on the dataset at its first export."""

    test_fraction: float = DEFAULT_TEST_FRACTION
    stratify_by: str | None = None
    """A tag key: each value of it gets the test fraction (in expectation)."""
    salt: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"test_fraction": self.test_fraction, "stratify_by": self.stratify_by, "salt": self.salt}

    def changed(
        self, *, test_fraction: float | None = None, stratify_by: str | None = None, salt: str | None = None
    ) -> SplitRules:
        """These rules with the given ones changed (``stratify_by=""``: no stratification)."""
        return SplitRules(
            test_fraction=self.test_fraction if test_fraction is None else test_fraction,
            stratify_by=self.stratify_by if stratify_by is None else (stratify_by or None),
            salt=self.salt if salt is None else salt,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitRules:
        return cls(
            test_fraction=float(data.get("test_fraction", DEFAULT_TEST_FRACTION)),
            stratify_by=data.get("stratify_by"),
            salt=str(data.get("salt", "")),
        )


@dataclass(slots=True)
class ExportResult:
    """What ``export_dataset`` wrote (or, with ``dry_run``, would write)."""

    out_dir: Path
    manifest: dict[str, Any]
    report: dict[str, ValidationReport] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.manifest["counts"])

    def as_dict(self) -> dict[str, Any]:
        manifest = {key: value for key, value in self.manifest.items() if key != "splits"}
        return {"out_dir": str(self.out_dir), **manifest}


@dataclass(slots=True)
class _Side:
    """One side's files as they are written, each with its validator, and the call ids written."""

    chat: IO[bytes]
    preference: IO[bytes]
    chat_check: DatasetValidator
    preference_check: DatasetValidator
    call_ids: list[str] = field(default_factory=list)
    preference_pairs: int = 0


def export_dataset(
    database_url: str,
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    test_fraction: float | None = None,
    stratify_by: str | None = None,
    salt: str | None = None,
    train_on: TrainOn = "all",
    base_model: str | None = None,
    token_limit: int | None = None,
    min_examples: int = MIN_EXAMPLES,
    skip_invalid: bool = False,
    dry_run: bool = False,
    version: int | None = None,
    workers: int = 1,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> ExportResult:
    """Export dataset ``name`` at its newest version into ``out_dir`` (created if needed).

    ``test_fraction``, ``stratify_by`` (a tag key; ``""`` for none) and ``salt`` change the split
    rules stored on the dataset (the first export stores the defaults: 10 % test, no
    stratification); what is not given stays as stored. ``base_model`` selects the token limit
    per example (or ``token_limit``).
    Raises ``ExportError`` listing the invalid entries unless ``skip_invalid``; ``dry_run``
    validates and counts but writes nothing and records nothing. ``version`` exports the dataset
    as it was at that version (its entries, their outputs and pruning rules then; the split rules
    as stored), which rebuilds an earlier export file for file. ``workers`` > 1 converts and
    checks the entries of a large dataset (``parallel.WORKERS_FROM`` entries or more) in that many
    processes; the files are the same byte for byte. ``progress(done, total)`` is called as
    entries are written.
    """
    target = Path(out_dir)
    moment = step_time(now)
    with connect(database_url) as conn:
        dataset = _snapshot(require_dataset(conn, name), version)
        settings = orjson.loads(dataset.settings)
        stored = SplitRules.from_dict(settings.get("split", {}))
        rules = stored.changed(test_fraction=test_fraction, stratify_by=stratify_by, salt=salt)
        prune_rules = [prune_rule_from_dict(rule) for rule in _prune_rules_at(conn, dataset, settings)]
        target.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".flywheel-export-", dir=target))
        try:
            checks = _Checks(base_model, token_limit, min_examples)
            sides, skipped = _write_examples(
                conn, dataset, rules, train_on, prune_rules, workdir, checks, skip_invalid, progress, workers
            )
            reports: dict[str, ValidationReport] = {
                **{side: files.chat_check.report() for side, files in sides.items()},
                **{f"preference_{side}": files.preference_check.report() for side, files in sides.items()},
            }
            notes = _drop_thin_preferences(workdir, sides, reports, min_examples)
            if "split" in settings and rules != stored:
                notes.append(f"split rules changed from {stored.as_dict()} to {rules.as_dict()}")
            errors = [issue for report in reports.values() for issue in report.errors]
            if errors:  # with skip_invalid, only what skipping cannot fix (too few examples) is left
                raise _invalid(errors, name)
            manifest = _manifest(dataset, settings, rules, train_on, prune_rules, base_model, sides, skipped)
            manifest["created_at"] = moment.isoformat()
            manifest["files"] = _file_facts(workdir)
            manifest["validation"] = {side: report.as_dict() for side, report in reports.items()}
            manifest["notes"] = notes + _version_notes(conn, dataset)
            if dry_run:
                return ExportResult(target, manifest, reports)
            (workdir / "manifest.json").write_bytes(
                orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
            )
            _move_into_place(workdir, target)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        with write_transaction(conn):
            _record_export(conn, dataset, settings, rules, target, manifest, moment)
        return ExportResult(target, manifest, reports)


# --- reading and writing ---------------------------------------------------------------------------


def _entry_batches(conn: Connection, dataset: _Snapshot, stratify_by: str | None) -> Iterator[list[EntryRow]]:
    """The dataset's entries at the exported version, oldest call first, in batches of
    ``BATCH_ROWS``, with what an example needs."""
    e, c, o = dataset_entries.c, calls.c, entry_outputs.c
    stratum: Any = sa.null()
    if stratify_by is not None:
        stratum = (
            sa.select(call_tags.c.value)
            .where(call_tags.c.call_id == e.call_id, call_tags.c.key == stratify_by)
            .scalar_subquery()
        )
    statement = (
        sa.select(e.id, e.call_id, e.cluster_key, c.input_hash, c.request, c.response, o.output, stratum)
        .select_from(entries_with_outputs(dataset.version))
        .where(entries_at(dataset.id, dataset.version))
        .order_by(e.call_id)
        # On the statement, not the connection (that would stream every later statement too).
        .execution_options(stream_results=True, yield_per=BATCH_ROWS)
    )
    for partition in conn.execute(statement).partitions():
        yield [tuple(row) for row in partition]


@dataclass(frozen=True, slots=True)
class _Checks:
    base_model: str | None
    token_limit: int | None
    min_examples: int

    def validator(self, side: Side, method: Method) -> DatasetValidator:
        return DatasetValidator(
            method=method,
            base_model=self.base_model,
            token_limit=self.token_limit,
            min_examples=self.min_examples if side == "train" else 0,
        )


def _write_examples(
    conn: Connection,
    dataset: _Snapshot,
    rules: SplitRules,
    train_on: TrainOn,
    prune_rules: Sequence[PruneRule],
    workdir: Path,
    checks: _Checks,
    skip_invalid: bool,
    progress: Progress | None,
    workers: int,
) -> tuple[dict[Side, _Side], list[dict[str, Any]]]:
    """Convert, split, validate and write every entry (each validated before it is written)."""
    sides: dict[Side, _Side] = {}
    skipped: list[dict[str, Any]] = []
    total = count_entries(conn, dataset.id, dataset.version)
    job = ExportJob(
        test_fraction=rules.test_fraction,
        salt=rules.salt,
        stratify=rules.stratify_by is not None,
        train_on=train_on,
        prune_rules=job_rules(prune_rules),
        base_model=checks.base_model,
    )
    done = 0
    try:
        for side in ("train", "test"):
            sides[side] = _Side(
                chat=(workdir / f"{side}.jsonl").open("wb"),
                preference=(workdir / f"preference_{side}.jsonl").open("wb"),
                chat_check=checks.validator(side, "supervised"),
                preference_check=checks.validator(side, "dpo"),
            )
        batches = _entry_batches(conn, dataset, rules.stratify_by)
        for prepared in prepared_batches(job, batches, workers_for(total, workers)):
            for entry in prepared:
                _write_entry(entry, sides, skipped, skip_invalid)
            done += len(prepared)
            if progress is not None:
                progress(done, total)
    finally:
        for opened in sides.values():
            opened.chat.close()
            opened.preference.close()
    for side_name, written in sides.items():
        if not written.preference_pairs:
            (workdir / f"preference_{side_name}.jsonl").unlink()
    return sides, skipped


def _write_entry(
    entry: PreparedEntry, sides: dict[Side, _Side], skipped: list[dict[str, Any]], skip_invalid: bool
) -> None:
    """Number, record and write one prepared entry (or leave it out, with the reason)."""
    if entry.side is None:
        skipped.append({"entry": str(entry.entry), "call_id": entry.call_id, "reason": entry.reason})
        return
    files = sides[entry.side]
    label = f"{entry.side}.jsonl:{len(files.call_ids) + 1}: entry {entry.entry} (call {entry.call_id})"
    recorded = files.chat_check.record(label, entry.issues, entry.tokens)
    issues = [issue for issue in recorded if issue.severity == "error"]
    if issues and skip_invalid:
        files.chat_check.forget(label)
        reason = "; ".join(f"{issue.field}: {issue.message}" for issue in issues)
        skipped.append({"entry": str(entry.entry), "call_id": entry.call_id, "reason": reason})
        return
    files.chat.write(entry.line)
    files.call_ids.append(entry.call_id)
    if entry.pair is None:
        return
    number = files.preference_pairs + 1
    pair_label = f"preference_{entry.side}.jsonl:{number}: entry {entry.entry} (call {entry.call_id})"
    found = files.preference_check.record(pair_label, entry.pair_issues, entry.pair_tokens)
    if skip_invalid and any(issue.severity == "error" for issue in found):
        files.preference_check.forget(pair_label)  # the pair is left out, the entry stays
        return
    files.preference.write(entry.pair)
    files.preference_pairs += 1


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The dataset row, as of the version being exported."""

    id: int
    name: str
    version: int
    newest: int
    filter: str
    settings: str


def _snapshot(row: sa.Row[Any], version: int | None) -> _Snapshot:
    if version is not None and not 1 <= version <= row.version:
        raise UsageError(f"dataset {row.name!r} has versions 1 to {row.version}, not {version}", "--version")
    at = row.version if version is None else version
    return _Snapshot(row.id, row.name, at, row.version, row.filter, row.settings)


def _prune_rules_at(conn: Connection, dataset: _Snapshot, settings: Mapping[str, Any]) -> list[Any]:
    """The pruning rules in force at the exported version: the last ``rules`` version up to it."""
    if dataset.version == dataset.newest:
        return list(settings.get("prune_rules", []))
    v = dataset_versions.c
    details = conn.execute(
        sa.select(v.details)
        .where(v.dataset_id == dataset.id, v.action == "rules", v.version <= dataset.version)
        .order_by(v.version.desc())
        .limit(1)
    ).scalar_one_or_none()
    return list(orjson.loads(details).get("prune_rules", [])) if details is not None else []


def _version_notes(conn: Connection, dataset: _Snapshot) -> list[str]:
    """A warning when the version exported is a relabel run still going on (or interrupted)."""
    v = dataset_versions.c
    row = conn.execute(
        sa.select(v.action, v.details).where(v.dataset_id == dataset.id, v.version == dataset.version)
    ).one_or_none()
    if row is None or row.action != "relabel" or orjson.loads(row.details).get("finished", True):
        return []
    return [
        f"version {dataset.version} is a relabel run that has not finished (still running, or "
        "interrupted): some entries have their old output; run the relabel again to finish it"
    ]


def _drop_thin_preferences(
    workdir: Path, sides: Mapping[Side, _Side], reports: dict[str, ValidationReport], min_examples: int
) -> list[str]:
    """Preference (DPO) files are an extra: too few pairs for training leaves them out, with a note,
    instead of failing the export. Without any pair, there are no preference reports at all."""
    report = reports.get("preference_train")
    pairs = sum(files.preference_pairs for files in sides.values())
    if report is None or pairs == 0:
        for side in sides:
            reports.pop(f"preference_{side}", None)
        return []
    if not any(issue.code == "too_few_examples" for issue in report.errors):
        return []
    for side, files in sides.items():
        (workdir / f"preference_{side}.jsonl").unlink(missing_ok=True)
        reports.pop(f"preference_{side}", None)
        files.preference_pairs = 0
    return [
        f"preference files not written: {report.examples} training pairs, fine-tuning needs at least "
        f"{min_examples}"
    ]


def _invalid(errors: Sequence[Issue], name: str) -> ExportError:
    shown = "; ".join(str(issue) for issue in errors[:MAX_ISSUES_SHOWN])
    more = f" (and {len(errors) - MAX_ISSUES_SHOWN} more)" if len(errors) > MAX_ISSUES_SHOWN else ""
    return ExportError(
        f"the export does not pass validation, nothing was written: {shown}{more}; "
        "fix the entries, or pass --skip-invalid to leave them out",
        name,
        errors,
    )


def _file_facts(workdir: Path) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {}
    for path in sorted(workdir.glob("*.jsonl")):
        digest = hashlib.sha256()
        lines = 0
        with path.open("rb") as content:
            for line in content:
                digest.update(line)
                lines += 1
        facts[path.name] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size, "lines": lines}
    return facts


def _move_into_place(workdir: Path, target: Path) -> None:
    # Data files first, the manifest last: a manifest in out_dir means its files are all there.
    # Files of an earlier export that this one does not have (no DPO pairs now) are removed.
    for stale in ("preference_train.jsonl", "preference_test.jsonl"):
        if not (workdir / stale).exists():
            (target / stale).unlink(missing_ok=True)
    for path in sorted(workdir.glob("*.jsonl")):
        os.replace(path, target / path.name)
    os.replace(workdir / "manifest.json", target / "manifest.json")


def _manifest(
    dataset: _Snapshot,
    settings: Mapping[str, Any],
    rules: SplitRules,
    train_on: TrainOn,
    prune_rules: Sequence[Any],
    base_model: str | None,
    sides: Mapping[Side, _Side],
    skipped: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "flywheel_version": __version__,
        "dataset": dataset.name,
        "dataset_version": dataset.version,
        "filter": orjson.loads(dataset.filter),
        "rules": {
            "split": rules.as_dict(),
            "train_on": train_on,
            "prune_rules": [rule.as_dict() for rule in prune_rules],
            "dedup": settings.get("dedup"),
        },
        "base_model": base_model,
        "counts": {
            "train": len(sides["train"].call_ids),
            "test": len(sides["test"].call_ids),
            "preference_train": sides["train"].preference_pairs,
            "preference_test": sides["test"].preference_pairs,
            "skipped": len(skipped),
        },
        "splits": {side: files.call_ids for side, files in sides.items()},
        "skipped": skipped,
    }


def _record_export(
    conn: Connection,
    dataset: _Snapshot,
    settings: dict[str, Any],
    rules: SplitRules,
    target: Path,
    manifest: Mapping[str, Any],
    moment: datetime,
) -> None:
    """The export in ``exports``, the split rules on the dataset, and each newly exported entry marked
    (so dedup keeps it as its cluster's representative)."""
    conn.execute(
        sa.insert(exports).values(
            dataset_id=dataset.id,
            version=dataset.version,
            created_at=moment,
            out_dir=str(target.resolve()),
            manifest=orjson.dumps(manifest).decode(),
        )
    )
    if settings.get("split") != rules.as_dict():
        save_setting(conn, dataset.id, settings, "split", rules.as_dict())
    left_out = [item["call_id"] for item in manifest["skipped"]]
    e = dataset_entries.c
    conn.execute(
        sa.update(dataset_entries)
        .where(
            entries_at(dataset.id, dataset.version), e.first_exported_in.is_(None), e.call_id.not_in(left_out)
        )
        .values(first_exported_in=dataset.version)
    )
