"""Reading a local trainer's ``train.log``: the events a poll reports, and the tail for an error.

The log is the trainer's stdout and stderr with the runner's ``[flywheel]`` lines around them
(``_detached``). Lines of interest become events: the runner's lines (started, exited) as messages,
and the dicts a transformers Trainer prints at each logging step (``{'loss': '1.23', 'epoch':
'0.5', ...}``, from TRL or Axolotl) as ``metrics`` events with the numbers in ``data``. An event's
``provider_event_id`` is its line's byte offset, so a poll reads on from the last one returned and
never reports a line twice. Values of secret-looking variables are replaced by ``***``.
"""

from __future__ import annotations

import ast
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._detached import LOG_FILE, MARKER
from .base import JobEvent

__all__ = ["log_events", "log_tail", "resume_offset", "scrub", "trainer_metrics"]

_METRIC_KEYS = frozenset({"loss", "eval_loss", "train_loss", "learning_rate", "grad_norm", "epoch"})
_TAIL_LINES = 12
_READ_LIMIT = 4 * 1024 * 1024


def resume_offset(last_event_id: str | None, log_offset: Any) -> int:
    """Where the log is read from: after the last event returned, or after the last line scanned."""
    start = 0
    if last_event_id is not None:
        try:
            start = int(last_event_id) + 1
        except ValueError:
            start = 0
    if isinstance(log_offset, int) and log_offset > start:
        start = log_offset
    return start


def log_events(path: Path, start: int, *, final: bool, secrets: list[str]) -> tuple[list[JobEvent], int]:
    """The events in the log's complete lines from byte ``start`` on (the unfinished last line too
    when the job has ended), and the offset scanned up to. An event's id is its line's offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, start - 1))
            chunk = handle.read(_READ_LIMIT)
    except OSError:
        return [], start
    offset = start
    if start > 0:
        # ``start`` is a line start when the byte before it ends a line; otherwise it falls inside
        # the line of the last event returned, and the next line start is where to begin.
        newline = chunk.find(b"\n")
        if newline < 0:
            return [], start
        offset = start - 1 + newline + 1
        chunk = chunk[newline + 1 :]
    lines = chunk.split(b"\n")
    complete, rest = lines[:-1], lines[-1]
    if final and rest and len(chunk) < _READ_LIMIT:
        complete.append(rest)
    events = []
    for raw in complete:
        event = _event(raw.decode("utf-8", "replace"), offset, secrets)
        if event is not None:
            events.append(event)
        offset += len(raw) + 1
    return events, offset


def _event(raw: str, offset: int, secrets: list[str]) -> JobEvent | None:
    line = scrub(raw.rsplit("\r", 1)[-1].strip(), secrets)
    if line.startswith(MARKER):
        stamp, _, text = line[len(MARKER) :].partition(" ")
        try:
            created = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            created, text = _now(), line[len(MARKER) :]
        level = "error" if text.startswith(("could not start", "the trainer was killed")) else "info"
        return JobEvent(created, text, level=level, provider_event_id=str(offset))
    metrics = trainer_metrics(line)
    if metrics is not None:
        message = " ".join(f"{key}={value}" for key, value in metrics.items())
        return JobEvent(_now(), message, kind="metrics", data=metrics, provider_event_id=str(offset))
    return None


def trainer_metrics(line: str) -> dict[str, Any] | None:
    """A transformers Trainer log line (``{'loss': '1.23', 'epoch': '0.5', ...}``, as its printer
    and progress callbacks write it) as a dict of numbers; ``None`` for any other line."""
    first, last = line.find("{"), line.rfind("}")
    if first < 0 or last < first or not any(f"'{key}'" in line for key in _METRIC_KEYS):
        return None
    try:
        parsed = ast.literal_eval(line[first : last + 1])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(parsed, dict) or not _METRIC_KEYS & parsed.keys():
        return None
    out: dict[str, Any] = {}
    for key, value in parsed.items():
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(key, str) and isinstance(value, int | float | str | bool):
            out[key] = value
    return out


def log_tail(path: Path, secrets: list[str]) -> str:
    """The log's last lines (the trainer's own, without progress-bar redraws), for an error."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip() and not line.startswith(MARKER)][-_TAIL_LINES:]
    if not lines:
        return ""
    return f"; last lines of {LOG_FILE}:\n" + scrub("\n".join(lines), secrets)[-4000:]


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _now() -> datetime:
    return datetime.now(UTC)
