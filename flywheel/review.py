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
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import get_args

import orjson

from .datasets import require_dataset, step_time
from .errors import UsageError
from .query import connect
from .review_file import (
    ReviewExportResult,
    ReviewFileError,
    ReviewImportResult,
    ReviewIssue,
    ReviewLine,
    ReviewSelection,
    output_fingerprint,
    output_issues,
    parse_review_line,
)
from .review_store import apply_changes, check_file, export_rows, file_error, review_record

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
                for row in export_rows(conn, dataset, only, limit):
                    line = orjson.dumps(review_record(dataset, row)) + b"\n"
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
        checked = check_file(conn, dataset, source, shown, changes)
        if checked.count:
            raise file_error(shown, checked.issues, checked.count)
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
        version = apply_changes(conn, dataset, changes, result, source.name, moment)
    return replace(result, version=version)
