"""``flywheel review``: a dataset's outputs out to a JSONL file a person edits, and the edits back in.

``export_review`` writes one JSON object per line, one line per entry of the dataset's newest
version, editable fields first::

    {"entry": 17, "output": {"role": "assistant", "content": "billing"}, "note": null, "drop": false,
     "provenance": {"source": "relabel", "model": "gpt-4o", "call_id": "0194...", "version": 3},
     "input": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "tools": [...], "dataset": "classify", "version": 4, "call_id": "0193...",
     "fingerprint": "5e1d0c0f9a1b2c3d"}

A reviewer can, per line: edit ``output`` (an assistant message: ``content`` text, or ``null``
with ``tool_calls`` whose ``arguments`` are JSON strings); set ``"drop": true`` to take the entry
out of the dataset; and write a ``note`` that is kept with the edit or the drop. ``provenance``,
``input``, ``tools`` (and ``problem``, present when the current output could not be shown) are
context and are ignored on import; the other keys identify the line and must stay as written.
``fingerprint`` is a hash of ``output`` as exported: an output that still hashes to it is
untouched, whatever its spacing or key order.

``import_review`` first checks every line (JSON, keys, the entry is in the dataset at the version
named, the edited output is a valid assistant message, the store's output is still the one the
line was exported with) and collects every problem as ``path:line: field: message``. Any problem
raises ``ReviewFileError`` and nothing changes. Else one transaction makes one new dataset version
(action ``review``; details: counts, file name, the file's sha256), adds one ``entry_outputs``
row (``source='human'``, with the note) per edited output, and marks each dropped entry
``removed_in``/``removed_reason='review'`` (notes on drops go into the version's details).

Invariants:
- All or nothing: a file with any problem changes nothing; a file that changes nothing (untouched
  lines, edits equal to what the store already holds, drops of entries already out) makes no
  version, so importing the same file twice is the same as importing it once.
- Edits never overwrite a change made since the export: a line whose entry's output changed in
  the store since (a relabel, another review) is refused as a conflict.
- Both steps stream: the export holds one batch of rows, the import one batch of lines plus one
  id per line (to catch an entry listed twice); the changes the check finds wait in a temporary
  file. The store is write-locked only while they are written, after checking that no other step
  made a version in the meantime.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal, get_args

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import calls, dataset_entries, datasets, entry_outputs

from .datasets import (
    entries_at,
    entries_with_outputs,
    record_version,
    require_dataset,
    step_time,
    write_transaction,
)
from .errors import FlywheelError, UsageError
from .finetune_format import UnconvertibleCallError, convert_message, output_message
from .query import connect
from .validate import validate_chat_example

__all__ = [
    "ReviewExportResult",
    "ReviewFileError",
    "ReviewImportResult",
    "ReviewIssue",
    "ReviewLine",
    "ReviewSelection",
    "export_review",
    "import_review",
    "output_fingerprint",
    "output_issues",
    "parse_review_line",
]

ReviewSelection = Literal["all", "original", "relabeled", "human", "unreviewed"]
"""Which entries ``export_review`` writes: every one; those whose current output is the call's own
response, a relabel, or a person's edit; or those no person has edited yet."""

BATCH_ROWS = 500
MAX_ISSUES_KEPT = 1000
MAX_ISSUES_SHOWN = 20

_REQUIRED = ("entry", "output", "dataset", "version", "call_id", "fingerprint")
_KNOWN = frozenset({*_REQUIRED, "note", "drop", "provenance", "input", "tools", "problem"})
_BOM = b"\xef\xbb\xbf"
Outcome = Literal["untouched", "unchanged", "edit", "drop"]


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
    ``MAX_ISSUES_KEPT``), ``count`` how many there were; ``where`` is the file."""

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


# --- the library functions the CLI calls ---------------------------------------------------------


def export_review(
    database_url: str,
    name: str,
    out_path: str | os.PathLike[str],
    *,
    only: ReviewSelection = "all",
    limit: int | None = None,
) -> ReviewExportResult:
    """Write dataset ``name``'s entries at its newest version to ``out_path`` for a person to edit.

    ``only`` selects entries by where their current output comes from (see ``ReviewSelection``),
    ``limit`` caps the number of lines (oldest calls first). The file is written beside
    ``out_path`` and moved into place, so a failed export leaves no half file.
    """
    if only not in get_args(ReviewSelection):
        raise UsageError(
            f"unknown selection {only!r}; use one of {', '.join(get_args(ReviewSelection))}", "--only"
        )
    if limit is not None and limit < 1:
        raise UsageError("the limit must be at least 1", "--limit")
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with connect(database_url) as conn:
        dataset = require_dataset(conn, name)
        by_source: Counter[str] = Counter()
        digest = hashlib.sha256()
        handle, temporary = tempfile.mkstemp(prefix=".flywheel-review-", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                for row in _export_rows(conn, dataset, only, limit):
                    line = orjson.dumps(_review_record(dataset, row)) + b"\n"
                    digest.update(line)
                    out.write(line)
                    by_source[row.source or "original"] += 1
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return ReviewExportResult(
        target, name, dataset.version, only, sum(by_source.values()), dict(by_source), digest.hexdigest()
    )


def import_review(
    database_url: str,
    name: str,
    path: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> ReviewImportResult:
    """Import the edits in review file ``path`` into dataset ``name`` (see the module docstring).

    Raises ``ReviewFileError`` naming every bad line (nothing changes). ``dry_run`` checks the file
    and counts what would change, and writes nothing.
    """
    source = Path(path)
    shown = str(path)
    moment = step_time(now)
    with connect(database_url) as conn, tempfile.TemporaryFile() as changes:
        dataset = require_dataset(conn, name)
        checked = _check_file(conn, dataset, source, shown, changes)
        if checked.count:
            raise _file_error(shown, checked.issues, checked.count)
        result = ReviewImportResult(
            path=source,
            dataset=name,
            version=None,
            dry_run=dry_run,
            sha256=checked.sha256,
            lines=checked.lines,
            edited=checked.outcomes["edit"],
            dropped=checked.outcomes["drop"],
            untouched=checked.outcomes["untouched"],
            unchanged=checked.outcomes["unchanged"],
        )
        if dry_run or not result.changed:
            return result
        changes.seek(0)
        version = _apply(conn, dataset, changes, result, source.name, moment)
    return replace(result, version=version)


# --- pure checks -----------------------------------------------------------------------------------


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


# --- checking a file against the store -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _State:
    """An entry as the store holds it now, with its current output."""

    dataset_id: int
    call_id: str
    added_in: int
    removed_in: int | None
    removed_reason: str | None
    fingerprint: str
    provenance: dict[str, Any]


@dataclass(slots=True)
class _Checked:
    sha256: str = ""
    lines: int = 0
    count: int = 0
    issues: list[ReviewIssue] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def report(self, found: Sequence[ReviewIssue]) -> None:
        self.count += len(found)
        self.issues.extend(found[: max(0, MAX_ISSUES_KEPT - len(self.issues))])


def _check_file(
    conn: Connection, dataset: sa.Row[Any], source: Path, shown: str, changes: IO[bytes]
) -> _Checked:
    """Check every line; write each change (edit or drop) found to ``changes`` as a JSON line."""
    checked = _Checked()
    seen: dict[int, int] = {}  # entry -> the line it is on
    pending: list[ReviewLine] = []
    digest = hashlib.sha256()
    try:
        lines = source.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read the review file: {exc.strerror}", shown) from None
    with lines:
        for number, raw in enumerate(lines, 1):
            digest.update(raw)
            text = raw.removeprefix(_BOM) if number == 1 else raw
            if not text.strip():
                continue  # blank lines (an editor's trailing newline) carry nothing
            checked.lines += 1
            line, found = parse_review_line(text, number, dataset.name, shown)
            checked.report(found)
            if line is None:
                continue
            first = seen.setdefault(line.entry, number)
            if first != number:
                checked.report(
                    [ReviewIssue(shown, number, "entry", f"entry {line.entry} is also on line {first}")]
                )
                continue
            pending.append(line)
            if len(pending) >= BATCH_ROWS:
                _check_batch(conn, dataset, pending, shown, checked, changes)
                pending = []
    _check_batch(conn, dataset, pending, shown, checked, changes)
    checked.issues.sort(key=lambda issue: issue.line)
    checked.sha256 = digest.hexdigest()
    return checked


def _check_batch(
    conn: Connection,
    dataset: sa.Row[Any],
    lines: Sequence[ReviewLine],
    shown: str,
    checked: _Checked,
    changes: IO[bytes],
) -> None:
    if not lines:
        return
    states = _states(conn, dataset, [line.entry for line in lines])
    edited_calls = [states[line.entry].call_id for line in lines if line.edited and line.entry in states]
    tools = _tools_of(conn, edited_calls)
    for line in lines:
        state = states.get(line.entry)
        outcome, found = _decide(line, state, dataset, shown)
        if state is not None and outcome == "edit" and tools.get(state.call_id):
            # Only what the call's tool definitions add (calls to undefined functions): the rest
            # was reported when the line was parsed.
            alone = output_issues(line.output)
            found += [
                ReviewIssue(shown, line.number, where, message)
                for where, message in output_issues(line.output, tools[state.call_id])
                if (where, message) not in alone
            ]
        checked.report(found)
        checked.outcomes[outcome] += 1
        if checked.count:
            continue  # the file will be refused: nothing more to keep
        if outcome == "edit":
            stored = convert_message(line.output, where="output")
            changes.write(orjson.dumps(["edit", line.entry, stored, line.note]) + b"\n")
        elif outcome == "drop":
            changes.write(orjson.dumps(["drop", line.entry, None, line.note]) + b"\n")


def _decide(
    line: ReviewLine, state: _State | None, dataset: sa.Row[Any], shown: str
) -> tuple[Outcome, list[ReviewIssue]]:
    """What one line asks for, given the entry as the store holds it now; the problems if it cannot."""

    def refuse(where: str, message: str) -> tuple[Outcome, list[ReviewIssue]]:
        return "untouched", [ReviewIssue(shown, line.number, where, message)]

    name, newest = dataset.name, dataset.version
    if state is None:
        return refuse("entry", f"there is no entry {line.entry} in the store")
    if state.dataset_id != dataset.id:
        return refuse("entry", f"entry {line.entry} is not in dataset {name!r}")
    if state.call_id != line.call_id:
        return refuse("call_id", f"entry {line.entry} is call {state.call_id}, not {line.call_id}")
    if line.version > newest:
        return refuse("version", f"dataset {name!r} has no version {line.version} (its newest is {newest})")
    if line.version < state.added_in or (state.removed_in is not None and state.removed_in <= line.version):
        return refuse("version", f"entry {line.entry} was not in dataset {name!r} at version {line.version}")
    if not (line.edited or line.drop):
        return "untouched", []
    out_now = state.removed_in is not None and state.removed_in <= newest
    if line.drop:
        if out_now:
            return "unchanged", []
    elif out_now:
        return refuse(
            "entry",
            f"entry {line.entry} was taken out of the dataset in version {state.removed_in} "
            f"({state.removed_reason}); its output can no longer be edited",
        )
    else:
        try:
            if output_fingerprint(convert_message(line.output, where="output")) == state.fingerprint:
                return "unchanged", []
        except UnconvertibleCallError:
            pass  # reported by output_issues already
    if line.fingerprint != state.fingerprint:
        return refuse(
            "drop" if line.drop else "output",
            f"the entry's output changed in the store since this file was exported at version "
            f"{line.version} (it is now {_describe(state.provenance)}); export again and redo this line",
        )
    return ("drop" if line.drop else "edit"), []


def _describe(provenance: Mapping[str, Any]) -> str:
    source = provenance["source"]
    if source == "original":
        return "the call's own response"
    by = f" by {provenance['model']}" if provenance.get("model") else ""
    what = "a relabel" if source == "relabel" else "a person's edit" if source == "human" else source
    return f"{what}{by} from version {provenance.get('version')}"


def _file_error(shown: str, issues: Sequence[ReviewIssue], count: int) -> ReviewFileError:
    listed = "; ".join(str(issue) for issue in issues[:MAX_ISSUES_SHOWN])
    more = f" (and {count - MAX_ISSUES_SHOWN} more)" if count > MAX_ISSUES_SHOWN else ""
    problems = "1 problem" if count == 1 else f"{count} problems"
    return ReviewFileError(
        f"{problems} in the review file, nothing was imported: {listed}{more}", shown, issues, count
    )


# --- the store -------------------------------------------------------------------------------------


def _current_output(row: sa.Row[Any]) -> tuple[dict[str, Any] | None, str | None, dict[str, Any]]:
    """An entry's current output in the fine-tuning format, why it cannot be shown (else ``None``),
    and where it comes from. Export and import both use this, so their fingerprints agree."""
    provenance: dict[str, Any] = {"source": row.source or "original"}
    if row.source is not None:
        made = {
            "model": row.model,
            "call_id": row.teacher_call,
            "version": row.output_version,
            "note": row.note,
        }
        provenance.update(made)
        provenance = {key: value for key, value in provenance.items() if value is not None}
    try:
        if row.output is not None:
            stored = orjson.loads(row.output)
            if not isinstance(stored, Mapping):
                return None, "the stored output is not a JSON object", provenance
            return convert_message({**stored, "role": "assistant"}, where="output"), None, provenance
        if row.response is None:
            return None, "the call has no response", provenance
        return output_message(orjson.loads(row.response)), None, provenance
    except UnconvertibleCallError as exc:
        return None, str(exc), provenance


def _output_columns() -> list[Any]:
    o = entry_outputs.c
    return [
        o.output,
        o.source,
        o.model,
        o.call_id.label("teacher_call"),
        o.version.label("output_version"),
        o.note,
    ]


def _states(conn: Connection, dataset: sa.Row[Any], ids: Sequence[int]) -> dict[int, _State]:
    e = dataset_entries.c
    statement = (
        sa.select(
            e.id,
            e.dataset_id,
            e.call_id,
            e.added_in,
            e.removed_in,
            e.removed_reason,
            calls.c.response,
            *_output_columns(),
        )
        .select_from(entries_with_outputs(dataset.version))
        .where(e.id.in_(ids))
    )
    states: dict[int, _State] = {}
    for row in conn.execute(statement):
        output, _, provenance = _current_output(row)
        states[row.id] = _State(
            row.dataset_id,
            row.call_id,
            row.added_in,
            row.removed_in,
            row.removed_reason,
            output_fingerprint(output),
            provenance,
        )
    return states


def _tools_of(conn: Connection, call_ids: Sequence[str]) -> dict[str, Any]:
    """The ``tools`` each call's request defined (only calls that have them)."""
    if not call_ids:
        return {}
    found: dict[str, Any] = {}
    for call_id, request in conn.execute(
        sa.select(calls.c.id, calls.c.request).where(calls.c.id.in_(call_ids))
    ):
        body = orjson.loads(request) if request is not None else None
        if isinstance(body, Mapping) and body.get("tools"):
            found[call_id] = body["tools"]
    return found


def _export_rows(
    conn: Connection, dataset: sa.Row[Any], only: ReviewSelection, limit: int | None
) -> Iterator[sa.Row[Any]]:
    e, o = dataset_entries.c, entry_outputs.c
    statement = (
        sa.select(e.id, e.call_id, calls.c.request, calls.c.response, *_output_columns())
        .select_from(entries_with_outputs(dataset.version))
        .where(entries_at(dataset.id, dataset.version))
        .order_by(e.call_id)
    )
    if only == "original":
        statement = statement.where(o.id.is_(None))
    elif only == "relabeled":
        statement = statement.where(o.source == "relabel")
    elif only == "human":
        statement = statement.where(o.source == "human")
    elif only == "unreviewed":
        human = entry_outputs.alias("human")
        statement = statement.where(
            ~sa.exists().where(
                human.c.entry_id == e.id, human.c.source == "human", human.c.version <= dataset.version
            )
        )
    if limit is not None:
        statement = statement.limit(limit)
    # On the statement, not the connection (that would stream every later statement too).
    yield from conn.execute(statement.execution_options(stream_results=True, yield_per=BATCH_ROWS))


def _review_record(dataset: sa.Row[Any], row: sa.Row[Any]) -> dict[str, Any]:
    output, problem, provenance = _current_output(row)
    request = orjson.loads(row.request) if row.request is not None else {}
    record: dict[str, Any] = {"entry": row.id, "output": output, "note": None, "drop": False}
    record["provenance"] = provenance
    if problem is not None:
        record["problem"] = f"the current output cannot be shown: {problem}; write one, or drop the entry"
    record["input"] = _input_messages(request)
    if isinstance(request, Mapping) and request.get("tools"):
        record["tools"] = request["tools"]
    record.update(
        dataset=dataset.name,
        version=dataset.version,
        call_id=row.call_id,
        fingerprint=output_fingerprint(output),
    )
    return record


def _input_messages(request: Any) -> Any:
    """The request's messages as the fine-tuning format shows them; as recorded if it cannot."""
    messages = request.get("messages") if isinstance(request, Mapping) else None
    if not isinstance(messages, list):
        return []
    try:
        return [
            convert_message(message, where=f"request.messages[{i}]") for i, message in enumerate(messages)
        ]
    except UnconvertibleCallError:
        return messages


def _apply(
    conn: Connection,
    dataset: sa.Row[Any],
    changes: IO[bytes],
    result: ReviewImportResult,
    file_name: str,
    moment: datetime,
) -> int:
    """Write the checked changes as one new dataset version, in one transaction; return the version."""
    with write_transaction(conn):
        newest = conn.execute(
            sa.select(datasets.c.version).where(datasets.c.id == dataset.id).with_for_update()
        ).scalar_one()
        if newest != dataset.version:
            raise FlywheelError(
                f"dataset {dataset.name!r} changed while the review file was checked (version "
                f"{dataset.version} -> {newest}); nothing was imported, run the import again",
                dataset.name,
            )
        version = int(newest) + 1
        drop_notes: dict[str, str] = {}
        batch: list[list[Any]] = []
        for raw in changes:
            batch.append(orjson.loads(raw))
            if len(batch) >= BATCH_ROWS:
                _write_batch(conn, dataset.id, version, batch, moment, drop_notes)
                batch = []
        _write_batch(conn, dataset.id, version, batch, moment, drop_notes)
        details: dict[str, Any] = {
            "file": file_name,
            "sha256": result.sha256,
            "lines": result.lines,
            "edited": result.edited,
            "dropped": result.dropped,
            "untouched": result.untouched,
            "unchanged": result.unchanged,
        }
        if drop_notes:
            details["drop_notes"] = drop_notes  # dataset_entries has no column for them
        record_version(conn, dataset.id, version, "review", details, moment)
    return version


def _write_batch(
    conn: Connection,
    dataset_id: int,
    version: int,
    batch: Sequence[list[Any]],
    moment: datetime,
    drop_notes: dict[str, str],
) -> None:
    edits = [
        {
            "entry_id": entry,
            "version": version,
            "source": "human",
            "output": orjson.dumps(output).decode(),
            "created_at": moment,
            "note": note,
        }
        for kind, entry, output, note in batch
        if kind == "edit"
    ]
    if edits:
        conn.execute(sa.insert(entry_outputs), edits)
    drops = [entry for kind, entry, _, _ in batch if kind == "drop"]
    drop_notes.update({str(entry): note for kind, entry, _, note in batch if kind == "drop" and note})
    if drops:
        e = dataset_entries.c
        done = conn.execute(
            sa.update(dataset_entries)
            .where(e.dataset_id == dataset_id, e.id.in_(drops), e.removed_in.is_(None))
            .values(removed_in=version, removed_reason="review")
        ).rowcount
        if done != len(drops):  # cannot happen while the version is unchanged; never write half
            raise FlywheelError(f"{len(drops) - done} dropped entries were already out; nothing was imported")
