"""The review file of ``flywheel review`` (see ``flywheel.review``): what a line holds, what can be
wrong with one, and what the review steps report. Pure: nothing here reads the store."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from .errors import UsageError
from .validate import validate_chat_example

__all__ = [
    "ReviewExportResult",
    "ReviewFileError",
    "ReviewImportResult",
    "ReviewIssue",
    "ReviewLine",
    "ReviewSelection",
    "output_fingerprint",
    "output_issues",
    "parse_review_line",
]

ReviewSelection = Literal["all", "original", "relabeled", "human", "unreviewed"]
"""Which entries ``export_review`` writes: every one; those whose current output is the call's own
response, a relabel, or a person's edit; or those no person has edited yet."""

_REQUIRED = ("entry", "output", "dataset", "version", "call_id", "fingerprint")
_KNOWN = frozenset({*_REQUIRED, "note", "drop", "provenance", "input", "tools", "problem"})


@dataclass(frozen=True, slots=True)
class ReviewIssue:
    """One problem in a review file: the line (1-based), the field in it, and why."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        place = f"{self.path}:{self.line}"
        return f"{place}: {self.field}: {self.message}" if self.field else f"{place}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "field": self.field, "message": self.message}


class ReviewFileError(UsageError):
    """A review file with problems; nothing was imported. ``issues`` holds them in line order (up to
    ``review_store.MAX_ISSUES_KEPT``), ``count`` how many there were; ``where`` is the file."""

    def __init__(self, message: str, where: str, issues: Sequence[ReviewIssue], count: int) -> None:
        super().__init__(message, where)
        self.issues = list(issues)
        self.count = count


@dataclass(frozen=True, slots=True)
class ReviewLine:
    """A line of a review file whose identifying fields are well-formed."""

    number: int
    entry: int
    call_id: str
    version: int
    fingerprint: str
    output: Any
    note: str | None
    drop: bool
    edited: bool
    """The reviewer changed ``output``: it no longer hashes to the exported fingerprint."""


@dataclass(frozen=True, slots=True)
class ReviewExportResult:
    """What ``export_review`` wrote."""

    path: Path
    dataset: str
    version: int
    only: ReviewSelection
    entries: int
    by_source: dict[str, int]
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True, slots=True)
class ReviewImportResult:
    """What ``import_review`` did (or, with ``dry_run``, would do)."""

    path: Path
    dataset: str
    version: int | None
    """The dataset version the import made; ``None`` when it changed nothing or was a dry run."""
    dry_run: bool
    sha256: str
    lines: int
    edited: int
    dropped: int
    untouched: int
    unchanged: int
    """Edited or dropped lines the store already agreed with (nothing to do)."""

    @property
    def changed(self) -> bool:
        return bool(self.edited or self.dropped)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def output_fingerprint(output: Any) -> str:
    """A short hash of an output's JSON, independent of spacing and key order."""
    return hashlib.sha256(orjson.dumps(output, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def output_issues(output: Any, tools: Any = None) -> list[tuple[str, str]]:
    """``(field, message)`` for each way ``output`` is not a valid assistant message to train on.

    Uses ``flywheel.validate``'s message checks; with ``tools`` (the call's tool definitions), tool
    calls must name a defined function.
    """
    if not isinstance(output, Mapping):
        kind = "null" if output is None else type(output).__name__
        return [
            (
                "output",
                f'must be an assistant message object, not {kind} (to take the entry out, set "drop": true)',
            )
        ]
    if output.get("role") != "assistant":
        return [("output.role", f"must be 'assistant', not {output.get('role')!r}")]
    found: list[tuple[str, str]] = []
    if "weight" in output:
        found.append(("output.weight", "a reviewed output takes no weight"))
    example: dict[str, Any] = {"messages": [output]}
    if isinstance(tools, list) and tools:
        example["tools"] = tools
    for issue in validate_chat_example(example):
        # Problems in the call's own tool definitions are not the reviewer's to fix.
        if (
            issue.severity != "error"
            or issue.code == "invalid_weight"
            or not issue.field.startswith("messages[0]")
        ):
            continue
        found.append(("output" + issue.field.removeprefix("messages[0]"), issue.message))
    return found


def parse_review_line(
    raw: bytes, number: int, dataset: str, path: str
) -> tuple[ReviewLine | None, list[ReviewIssue]]:
    """Check one line of a review file for dataset ``dataset`` on its own (no store needed).

    Returns the line when its identifying fields are usable (so the store checks can still run and
    report more), and every problem found.
    """
    issues: list[ReviewIssue] = []

    def problem(where: str, message: str) -> None:
        issues.append(ReviewIssue(path, number, where, message))

    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        problem("", f"not valid JSON: {exc}")
        return None, issues
    if not isinstance(item, dict):
        problem("", "a line must be a JSON object, as written by 'flywheel review export'")
        return None, issues
    for key in item:
        if key not in _KNOWN:
            problem(key, "unknown key; a reviewer edits output, note and drop")
    for key in _REQUIRED:
        if key not in item:
            problem(key, "missing; keep the keys 'flywheel review export' wrote")
    entry, version = item.get("entry"), item.get("version")
    call_id, fingerprint = item.get("call_id"), item.get("fingerprint")
    if "entry" in item and not (type(entry) is int and entry > 0):
        problem("entry", f"must be the entry id as exported, not {entry!r}")
    if "version" in item and not (type(version) is int and version > 0):
        problem("version", f"must be the dataset version as exported, not {version!r}")
    if "dataset" in item and item["dataset"] != dataset:
        problem("dataset", f"this line is from dataset {item['dataset']!r}, not {dataset!r}")
    for key, value in (("call_id", call_id), ("fingerprint", fingerprint)):
        if key in item and not isinstance(value, str):
            problem(key, "must be the string as exported")
    note, drop = item.get("note"), item.get("drop", False)
    if not (note is None or isinstance(note, str)):
        problem("note", "must be a string or null")
        note = None
    if not isinstance(drop, bool):
        problem("drop", f"must be true or false, not {drop!r}")
        drop = False
    if not (
        "output" in item
        and type(entry) is int
        and type(version) is int
        and isinstance(call_id, str)
        and isinstance(fingerprint, str)
    ):
        return None, issues  # the line cannot be matched to an entry
    note = note.strip() if note else None
    output = item["output"]
    edited = output_fingerprint(output) != fingerprint
    line = ReviewLine(number, entry, call_id, version, fingerprint, output, note or None, drop, edited)
    if line.drop and line.edited:
        problem("drop", "the line both drops the entry and edits its output; do one or the other")
    elif line.edited:
        issues.extend(
            ReviewIssue(path, number, where, message) for where, message in output_issues(line.output)
        )
    elif line.note and not line.drop:
        problem("note", "a note is kept with an edited output or a drop, and this line changes neither")
    return line, issues
