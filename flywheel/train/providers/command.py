"""The ``command`` provider: a local trainer (TRL, Axolotl, a script of your own) run as a command.

``prepare`` lays the job out in its work directory::

    WORK_DIR/data/train.jsonl    the training split, in the trainer's format (DPO lines converted)
    WORK_DIR/data/test.jsonl     the test split, when validation is on and the export has one
    WORK_DIR/config.yaml         the trainer config (``trainer_configs``), written as JSON
    WORK_DIR/output/             where the trainer writes the model: the job's ``fine_tuned_model``

``launch`` runs the pipeline's ``command`` with ``{data_dir}``, ``{config}`` and ``{output_dir}``
filled in, through a small runner (``_detached``) that outlives the watcher, so a watcher may stop
or crash while training goes on, and the next one picks the job up from these files::

    WORK_DIR/command.json        the command as run (no environment: it may hold secrets)
    WORK_DIR/job.json            the runner's pid, process group, start time, boot id, ...
    WORK_DIR/train.log           the trainer's stdout and stderr, between two ``[flywheel]`` lines
    WORK_DIR/exit_status.json    written when the trainer ended: its exit code or signal
    WORK_DIR/cancel_requested.json  written by ``cancel``, so the ended job reads as cancelled

Invariant: one trainer per job key. ``launch`` and ``find`` both answer from ``job.json`` when it
exists for the key, and a process counts as the job's only if its pid, start time and boot match
what the runner recorded, so a pid reused after a crash or a reboot is never signalled or trusted.
A trainer that fails is a ``failed`` job, never an exception; only a command that cannot be
started raises ``ProviderError``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import string
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, field_validator, model_validator

from . import _detached
from ._detached import CANCEL_FILE, COMMAND_FILE, EXIT_FILE, JOB_FILE, LOG_FILE, read_record
from ._train_log import log_events, log_tail, resume_offset
from .base import (
    JobEvent,
    JobHandle,
    JobRequest,
    JobState,
    Provider,
    ProviderError,
    ProviderSettings,
    TrainingFiles,
)
from .trainer_configs import TrainerLayout, preference_example, to_yaml, trainer_config

__all__ = ["PLACEHOLDERS", "CommandProvider", "CommandSettings", "render_command"]

PLACEHOLDERS = ("data_dir", "config", "output_dir")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_SPAWN_TIMEOUT_S = 60.0


class CommandSettings(ProviderSettings):
    """``provider = "command"`` keys.

    Parameters:
        command: the command that trains, e.g. ``"trl sft --config {config}"`` (``trl dpo`` for
            DPO) or ``"axolotl train {config}"``. ``{data_dir}``, ``{config}`` and ``{output_dir}``
            are replaced by the job's paths (quoted; write ``{{``/``}}`` for a literal brace); any
            other placeholder is an error. It runs in the watcher's working directory, in a
            session of its own, and must write the model to ``{output_dir}``.
        format: the config written to ``{config}``: ``"trl"`` (read by ``trl sft/dpo --config``)
            or ``"axolotl"`` (read by ``axolotl train``). A script of your own can read either.
        trainer: keys merged over the generated config (LoRA, ``max_length``, ``logging_steps``,
            ...); a key here replaces the generated one whole.
        env: extra environment variables for the command. They are stored with the job's
            settings: keep secrets in the watcher's own environment, which the command inherits.
        shell: run the command through ``/bin/sh -c`` (for pipes, ``&&``, ``$VAR``); by default it
            is split like a shell line and run directly, so a missing program is reported at
            launch instead of as a failed job.
        base_learning_rate: the learning rate that ``learning_rate_multiplier`` multiplies; default
            TRL's for full fine-tuning (2e-5 supervised, 1e-6 DPO). Raise it (2e-4) for LoRA.
        cancel_grace_s: after ``cancel`` sends SIGTERM to the trainer's process group, how long to
            wait for it to stop before sending SIGKILL.
    """

    command: str = Field(min_length=1)
    format: Literal["trl", "axolotl"] = "trl"
    trainer: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    shell: bool = False
    base_learning_rate: float | None = Field(default=None, gt=0)
    cancel_grace_s: float = Field(default=10.0, ge=0)

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        _placeholders(value)
        return value

    @model_validator(mode="after")
    def _splits(self) -> CommandSettings:
        if not self.shell:
            try:
                shlex.split(self.command)
            except ValueError as exc:
                raise ValueError(f"command cannot be split into arguments: {exc}") from exc
        return self


def _placeholders(template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc} in command (write {{{{ and }}}} for a literal brace)") from exc
    found = set()
    known = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"unknown placeholder {shown} in command (known: {known}; "
                "write {{ and }} for a literal brace)"
            )
        found.add(name)
    return found


def render_command(settings: CommandSettings, values: Mapping[str, str]) -> tuple[list[str], str]:
    """``(argv, display)``: the command with the placeholders filled in, as executed and as shown."""
    if settings.shell:
        line = settings.command.format_map({name: shlex.quote(values[name]) for name in PLACEHOLDERS})
        return ["/bin/sh", "-c", line], line
    # Split first, then fill each argument: a path with spaces stays one argument.
    argv = [part.format_map(dict(values)) for part in shlex.split(settings.command)]
    return argv, shlex.join(argv)


class CommandProvider(Provider):
    """Jobs run by a local command, tracked through files in the job's work directory."""

    name: ClassVar[str] = "command"
    Settings: ClassVar[type[ProviderSettings]] = CommandSettings

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, CommandSettings)
        self._settings = settings

    def prepare(self, request: JobRequest, files: TrainingFiles) -> dict[str, str]:
        source = files.training_file(request.method)
        if not source.exists():
            raise ProviderError(f"the export has no {source.name}", str(source))
        work = request.work_dir
        data, output = work / "data", work / "output"
        data.mkdir(parents=True, exist_ok=True)
        output.mkdir(parents=True, exist_ok=True)
        validation = files.validation_file(request.method)
        use_eval = request.validation and validation.exists() and validation.stat().st_size > 0
        eval_file = data / "test.jsonl" if use_eval else None
        layout = TrainerLayout(work, data, data / "train.jsonl", eval_file, output)
        self._place(request, source, layout.train_file)
        if layout.eval_file is not None:
            self._place(request, validation, layout.eval_file)
        else:
            (data / "test.jsonl").unlink(missing_ok=True)
        config = trainer_config(
            self._settings.format,
            request,
            layout,
            base_learning_rate=self._settings.base_learning_rate,
            extra=self._settings.trainer,
        )
        config_path = work / "config.yaml"
        _write_text(config_path, to_yaml(config))
        return {"data_dir": str(data), "config": str(config_path), "output_dir": str(output)}

    def find(self, request: JobRequest) -> JobState | None:
        record = read_record(request.work_dir / JOB_FILE)
        if record is None or record.get("key") != request.key:
            return None
        return self._state(request.work_dir, record, None, {})

    def launch(self, request: JobRequest, prepared: Mapping[str, str]) -> JobState:
        existing = self.find(request)
        if existing is not None:
            return existing
        missing = [name for name in PLACEHOLDERS if name not in prepared]
        if missing:
            raise ProviderError(f"prepared files lack {', '.join(missing)}; prepare the job again", "files")
        work = request.work_dir
        argv, display = render_command(self._settings, {name: prepared[name] for name in PLACEHOLDERS})
        for stale in (EXIT_FILE, CANCEL_FILE):
            (work / stale).unlink(missing_ok=True)
        _detached.write_record(
            work / COMMAND_FILE,
            {"key": request.key, "argv": argv, "display": display, "cwd": os.getcwd()}
            | {name: prepared[name] for name in PLACEHOLDERS},
        )
        try:
            spawned = subprocess.run(
                [sys.executable, "-I", str(Path(_detached.__file__).resolve()), "spawn", str(work)],
                env={**os.environ, **self._settings.env},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_SPAWN_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProviderError(f"the trainer runner could not be started: {exc}", "command") from exc
        report = _last_json_line(spawned.stdout)
        if "error" in report or "pid" not in report:
            reason = report.get("error") or spawned.stderr.decode("utf-8", "replace").strip()[-500:]
            raise ProviderError(f"the trainer command cannot be started: {reason}", "command")
        record = read_record(work / JOB_FILE)
        if record is None:
            raise ProviderError(f"the trainer runner wrote no {JOB_FILE}", str(work))
        return self._state(work, record, None, {})

    def poll(self, handle: JobHandle) -> JobState:
        record = read_record(handle.work_dir / JOB_FILE)
        if record is None:
            raise ProviderError(f"no {JOB_FILE}: the job's work directory was removed", str(handle.work_dir))
        return self._state(handle.work_dir, record, handle.last_event_id, handle.details)

    def cancel(self, handle: JobHandle) -> JobState:
        work = handle.work_dir
        record = read_record(work / JOB_FILE)
        if record is None:
            raise ProviderError(f"no {JOB_FILE}: the job's work directory was removed", str(work))
        if read_record(work / EXIT_FILE) is not None or not _alive(record):
            return self.poll(handle)
        _detached.write_record(work / CANCEL_FILE, {"requested_at": _detached.utc_now()})
        pgid = int(record["pgid"])
        for sig, wait in ((signal.SIGTERM, self._settings.cancel_grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            except PermissionError as exc:
                raise ProviderError(f"not allowed to signal process group {pgid}: {exc}", "cancel") from exc
            if _ended(work, record, wait):
                break
        return self.poll(handle)

    def _place(self, request: JobRequest, source: Path, target: Path) -> None:
        """The export's file in the trainer's format: linked (or copied) as it is for chat
        examples; converted line by line for preference pairs."""
        target.unlink(missing_ok=True)
        if request.method == "supervised":
            try:
                os.link(source, target)
            except OSError:
                _write_bytes(target, source.read_bytes())
            return
        lines = [
            orjson.dumps(preference_example(self._settings.format, orjson.loads(line)))
            for line in source.read_bytes().splitlines()
            if line.strip()
        ]
        _write_bytes(target, b"".join(line + b"\n" for line in lines))

    def _state(
        self, work: Path, record: Mapping[str, Any], last_event_id: str | None, previous: Mapping[str, Any]
    ) -> JobState:
        exit_status = read_record(work / EXIT_FILE)
        alive = exit_status is None and _alive(record)
        if exit_status is None and not alive:
            exit_status = read_record(work / EXIT_FILE)  # it may have ended between the two looks
        ended = not alive
        cancel = read_record(work / CANCEL_FILE)
        secrets = [v for k, v in self._settings.env.items() if _SECRET_NAME.search(k) and len(v) >= 4]
        log = work / LOG_FILE
        start = resume_offset(last_event_id, previous.get("log_offset"))
        events, offset = log_events(log, start, final=ended, secrets=secrets)
        details: dict[str, Any] = {
            name: record.get(name)
            for name in ("pid", "pgid", "process_start", "started_at", "command", "cwd", "log_file")
        }
        details |= {name: record.get(name) for name in ("data_dir", "config", "output_dir")}
        details["log_offset"] = offset
        if cancel is not None:
            details["cancel_requested_at"] = cancel.get("requested_at")
        output_dir = str(record.get("output_dir") or work / "output")
        status, model, error = "running", None, None
        if exit_status is not None:
            details |= {
                "exit_code": exit_status.get("returncode"),
                "signal": exit_status.get("signal"),
                "ended_at": exit_status.get("ended_at"),
            }
        if ended and cancel is not None:
            status = "cancelled"
        elif exit_status is not None and exit_status.get("returncode") == 0:
            if _has_files(Path(output_dir)):
                status, model = "succeeded", output_dir
            else:
                status, error = "failed", f"the trainer exited with code 0 but wrote nothing to {output_dir}"
        elif exit_status is not None:
            how = (
                f"was killed by {exit_status['signal']}"
                if exit_status.get("signal")
                else f"exited with code {exit_status.get('returncode')}"
            )
            status, error = "failed", f"the trainer {how}" + log_tail(log, secrets)
        elif ended:
            status = "failed"
            error = (
                f"the trainer process (runner pid {record.get('pid')}) disappeared without an exit status "
                "(the runner was killed, or the machine restarted)" + log_tail(log, secrets)
            )
            size = log.stat().st_size if log.exists() else 0
            if resume_offset(last_event_id, None) < size:
                events.append(JobEvent(_now(), error, level="error", provider_event_id=str(size)))
        return JobState(
            provider_job_id=str(record.get("job_id") or f"local-{record.get('pid')}"),
            status=status,
            fine_tuned_model=model,
            error=error,
            events=tuple(events),
            details=details,
        )


def _alive(record: Mapping[str, Any]) -> bool:
    """Whether the runner ``record`` describes is still running: same pid, start time and boot."""
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    recorded_boot = record.get("boot_id")
    if recorded_boot is not None and recorded_boot != _detached.boot_id():
        return False
    start = record.get("process_start")
    return _detached.process_running(pid, start if isinstance(start, int) else None)


def _has_files(directory: Path) -> bool:
    try:
        return any(directory.iterdir())
    except OSError:
        return False


def _ended(work: Path, record: Mapping[str, Any], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while True:
        if read_record(work / EXIT_FILE) is not None or not _alive(record):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _last_json_line(stdout: bytes) -> dict[str, Any]:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            loaded = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(loaded, dict):
            return loaded
    return {}


def _now() -> datetime:
    return datetime.now(UTC)


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
