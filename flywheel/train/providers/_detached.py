"""The runner of the ``command`` provider: starts a local trainer that outlives the watcher.

Standard library only, and started by file path (``python -I _detached.py ...``), so it starts in
milliseconds and imports nothing of the flywheel (no store, no settings, no secrets). Two modes:

``spawn WORK_DIR``
    Started by the provider, which waits for it. Starts ``run`` in a new session (its own process
    group, stdin ``/dev/null``, stdout and stderr appended to ``train.log``), relays ``run``'s
    report (the trainer started, or why it could not) as one JSON line on stdout, and exits at once.
    The runner is then nobody's child but init's: the watcher holds no zombie, never waits for the
    training, and may exit or crash while it goes on.

``run WORK_DIR REPORT_FD``
    Writes ``job.json`` (who it is: pid, process group, its start time in ``/proc/PID/stat`` and the
    boot id, so that a reused pid is never taken for it), starts the command of ``command.json``,
    reports on ``REPORT_FD``, waits, and writes ``exit_status.json``. It survives SIGTERM/SIGINT/SIGHUP
    (a cancel signals the whole group: the trainer stops, the runner records how).

Invariants: ``job.json`` exists before the trainer starts and ``exit_status.json`` only after it
ended; both are written whole (temporary file, then rename). A ``[flywheel]`` line opens and
closes the log, after the trainer's last line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CANCEL_FILE",
    "COMMAND_FILE",
    "EXIT_FILE",
    "JOB_FILE",
    "LOG_FILE",
    "MARKER",
    "boot_id",
    "process_identity",
    "process_running",
    "read_record",
    "utc_now",
    "write_record",
]

COMMAND_FILE = "command.json"
JOB_FILE = "job.json"
EXIT_FILE = "exit_status.json"
CANCEL_FILE = "cancel_requested.json"
LOG_FILE = "train.log"
MARKER = "[flywheel] "
"""How the runner's own lines in ``train.log`` begin."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_record(path: Path, record: Any) -> None:
    """Write JSON to ``path`` whole or not at all: a reader never sees half a record."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when there is none (or not a whole one)."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def process_identity(pid: int) -> tuple[int, str] | None:
    """``(start time in clock ticks after boot, state letter)`` of process ``pid`` from
    ``/proc/PID/stat``; ``None`` when there is no such process (or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def process_running(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` runs (and, given ``start``, is the one that started then: a reused
    pid is another process). A zombie has ended. Without ``/proc`` the pid is all there is."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, someone else's
            return True
        return True
    identity = process_identity(pid)
    if identity is None:
        return False
    started, state = identity
    return state not in ("Z", "X", "x") and (start is None or started == start)


def boot_id() -> str | None:
    """This boot's id: after a restart, pids and start times begin again."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _spawn(work_dir: Path) -> int:
    read_fd, write_fd = os.pipe()
    with open(work_dir / LOG_FILE, "ab") as log:
        runner = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve()), "run", str(work_dir), str(write_fd)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            pass_fds=(write_fd,),
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode("utf-8", "replace").strip()
    if not report:
        code = runner.poll()
        report = json.dumps({"error": f"the runner ended before starting the command (exit status {code})"})
    sys.stdout.write(report + "\n")
    sys.stdout.flush()
    # Exit without waiting for the runner: init adopts it.
    return 0


def _marker(text: str) -> None:
    os.write(1, f"\n{MARKER}{utc_now()} {text}\n".encode())


def _run(work_dir: Path, report_fd: int) -> int:
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # The trainer, in the same process group, gets the signal too and ends; the runner stays
        # to write down how.
        signal.signal(number, lambda *_: None)
    spec = read_record(work_dir / COMMAND_FILE) or {}
    pid = os.getpid()
    identity = process_identity(pid)
    started_at = utc_now()
    record = {
        "key": spec.get("key"),
        "job_id": f"local-{started_at[:19].replace('-', '').replace(':', '')}-{pid}",
        "pid": pid,
        "pgid": os.getpgid(0),
        "process_start": identity[0] if identity else None,
        "boot_id": boot_id(),
        "started_at": started_at,
        "command": spec.get("display"),
        "cwd": spec.get("cwd"),
        "log_file": str(work_dir / LOG_FILE),
        **{name: spec.get(name) for name in ("data_dir", "config", "output_dir")},
    }
    write_record(work_dir / JOB_FILE, record)
    _marker(f"started (runner pid {pid}, process group {record['pgid']}): {spec.get('display')}")
    try:
        child = subprocess.Popen(list(spec["argv"]), cwd=spec.get("cwd") or None, stdin=subprocess.DEVNULL)
    except (OSError, KeyError, TypeError) as exc:
        (work_dir / JOB_FILE).unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        argv0 = (spec.get("argv") or ["?"])[0]
        _marker(f"could not start {argv0}: {reason}")
        os.write(report_fd, json.dumps({"error": f"{argv0}: {reason}"}).encode())
        os.close(report_fd)
        return 127
    os.write(report_fd, json.dumps({"pid": pid, "child_pid": child.pid}).encode())
    os.close(report_fd)
    returncode = child.wait()
    status: dict[str, Any] = {
        "key": spec.get("key"),
        "pid": pid,
        "returncode": returncode,
        "ended_at": utc_now(),
    }
    if returncode < 0:
        try:
            status["signal"] = signal.Signals(-returncode).name
        except ValueError:
            status["signal"] = f"signal {-returncode}"
        _marker(f"the trainer was killed by {status['signal']}")
    else:
        _marker(f"the trainer exited with code {returncode}")
    write_record(work_dir / EXIT_FILE, status)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "spawn":
        return _spawn(Path(argv[1]))
    if len(argv) >= 3 and argv[0] == "run":
        return _run(Path(argv[1]), int(argv[2]))
    sys.stderr.write("usage: _detached.py spawn WORK_DIR | run WORK_DIR REPORT_FD\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
