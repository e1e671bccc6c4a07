"""What ``flywheel review`` reads from and writes to the store: the entries to export, the check of
a review file's lines against the entries they name, and the changes an import writes."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sdk.schema import calls, dataset_entries, datasets, entry_outputs

from .datasets import entries_at, entries_with_outputs, record_version, write_transaction
from .errors import FlywheelError, UsageError
from .finetune_format import UnconvertibleCallError, convert_message, output_message
from .review_file import (
    ReviewFileError,
    ReviewImportResult,
    ReviewIssue,
    ReviewLine,
    ReviewSelection,
    output_fingerprint,
    output_issues,
    parse_review_line,
)

__all__ = ["BATCH_ROWS", "apply_changes", "check_file", "export_rows", "file_error", "review_record"]

BATCH_ROWS = 500
MAX_ISSUES_KEPT = 1000
MAX_ISSUES_SHOWN = 20
_BOM = b"\xef\xbb\xbf"
Outcome = Literal["untouched", "unchanged", "edit", "drop"]


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


def check_file(
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


def file_error(shown: str, issues: Sequence[ReviewIssue], count: int) -> ReviewFileError:
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


def export_rows(
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


def review_record(dataset: sa.Row[Any], row: sa.Row[Any]) -> dict[str, Any]:
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


def apply_changes(
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
