"""The ``command`` provider: generated trainer configs, and real detached trainer processes.

The trainers are small scripts in ``tests/trainers/`` run through the provider exactly as a user's
``trl sft --config {config}`` would be: a runner in a session of its own, its log and status in
real files under ``tmp_path``. Waits poll with a deadline; nothing sleeps for a guessed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from flywheel.train.providers import JobEvent, JobHandle, JobRequest, JobState, ProviderError, TrainingFiles
from flywheel.train.providers._detached import process_identity
from flywheel.train.providers.command import CommandProvider, CommandSettings
from flywheel.train.providers.registry import provider_class
from flywheel.train.providers.trainer_configs import (
    BASE_LEARNING_RATE,
    TrainerLayout,
    learning_rate,
    to_yaml,
    trainer_config,
    undocumented_keys,
)

TRAINERS = Path(__file__).parent / "trainers"
PYTHON = shlex.quote(sys.executable)
CHAT = {
    "messages": [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
}
PAIR = {
    "input": {
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "tools": [{"type": "function"}],
    },
    "preferred_output": [{"role": "assistant", "content": "Paris"}],
    "non_preferred_output": [{"role": "assistant", "content": "Lyon"}],
}
# PyYAML's (YAML 1.1) float pattern: a float without a dot is read back as a string.
YAML11_FLOAT = re.compile(r"^[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?$")


def export(directory: Path, *, test_lines: int = 1) -> TrainingFiles:
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "train.jsonl", [CHAT, CHAT])
    write_jsonl(directory / "test.jsonl", [CHAT] * test_lines)
    write_jsonl(directory / "preference_train.jsonl", [PAIR, PAIR])
    write_jsonl(directory / "preference_test.jsonl", [PAIR] * test_lines)
    manifest = {"dataset": "support", "version": 3}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return TrainingFiles(directory, manifest)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_request(
    work_dir: Path,
    settings: CommandSettings,
    *,
    method: str = "supervised",
    validation: bool = False,
    hyperparameters: dict[str, Any] | None = None,
    seed: int | None = 7,
) -> JobRequest:
    return JobRequest(
        key=f"support-v3-{work_dir.name}",
        pipeline="support",
        dataset="support",
        dataset_version=3,
        base_model="tiny/model",
        method=method,  # type: ignore[arg-type]
        hyperparameters=hyperparameters or {"n_epochs": "auto", "batch_size": "auto"},
        suffix=None,
        seed=seed,
        validation=validation,
        settings=settings,
        work_dir=work_dir,
        metadata={"flywheel_job": f"support-v3-{work_dir.name}"},
    )


def handle_of(request: JobRequest, state: JobState, last_event_id: str | None = None) -> JobHandle:
    return JobHandle(state.provider_job_id, request.settings, request.work_dir, state.details, last_event_id)


def wait_until(
    check: Callable[[], JobState], done: Callable[[JobState], bool], within_s: float = 30
) -> JobState:
    deadline = time.monotonic() + within_s
    while True:
        state = check()
        if done(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


def wait_for_log(work_dir: Path, text: str, within_s: float = 30) -> None:
    """Until the trainer has written ``text`` (so it is past its start-up)."""
    log, deadline = work_dir / "train.log", time.monotonic() + within_s
    while text not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def started_groups() -> Iterator[list[int]]:
    """Process groups a test started; any still running at the end are killed (ours only)."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def launched(
    tmp_path: Path, command: str, groups: list[int], name: str = "job", **settings: Any
) -> tuple[CommandProvider, JobRequest, JobState]:
    config = CommandSettings(command=command, **settings)
    work = tmp_path / name
    provider = CommandProvider(config)
    request = make_request(work, config)
    prepared = provider.prepare(request, export(work / "export"))
    state = provider.launch(request, prepared)
    groups.append(int(state.details["pgid"]))
    return provider, request, state


def finished(provider: CommandProvider, request: JobRequest, state: JobState) -> JobState:
    return wait_until(lambda: provider.poll(handle_of(request, state)), lambda s: s.finished)


# --- settings ---------------------------------------------------------------------------------


def test_the_registry_finds_the_command_provider() -> None:
    assert provider_class("command") is CommandProvider
    assert CommandProvider.Settings is CommandSettings


def test_an_unknown_placeholder_is_a_validation_error_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"unknown placeholder \{model\}"):
        CommandSettings(command="trl sft --config {config} --model {model}")
    with pytest.raises(ValidationError, match=r"unknown placeholder \{config!r\}"):
        CommandSettings(command="trl sft --config {config!r}")
    with pytest.raises(ValidationError, match="literal brace"):
        CommandSettings(command="echo {config")
    with pytest.raises(ValidationError, match="cannot be split"):
        CommandSettings(command="trl sft --config '{config}")
    assert CommandSettings(command="sh -c 'echo {{}}' {config}").command
    with pytest.raises(ValidationError, match="extra"):
        CommandSettings.model_validate({"command": "x", "formats": "trl"})


# --- trainer configs (pure) -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["trl", "axolotl"])
@pytest.mark.parametrize("method", ["supervised", "dpo"])
@pytest.mark.parametrize("validation", [True, False])
def test_every_generated_key_is_one_the_tool_documents(
    tmp_path: Path, fmt: Any, method: Any, validation: bool
) -> None:
    settings = CommandSettings(command="x {config}", format=fmt)
    hyper = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    if method == "dpo":
        hyper["beta"] = 0.2
    request = make_request(tmp_path, settings, method=method, validation=validation, hyperparameters=hyper)
    layout = TrainerLayout(
        tmp_path,
        tmp_path / "data",
        tmp_path / "data/train.jsonl",
        tmp_path / "data/test.jsonl",
        tmp_path / "out",
    )
    if not validation:
        layout = TrainerLayout(tmp_path, layout.data_dir, layout.train_file, None, layout.output_dir)
    config = trainer_config(fmt, request, layout)
    assert undocumented_keys(fmt, method, config) == []
    assert config["output_dir"] == str(tmp_path / "out")
    assert config["learning_rate"] == pytest.approx(0.5 * BASE_LEARNING_RATE[method])
    assert config["seed"] == 7
    if fmt == "trl":
        assert config["model_name_or_path"] == "tiny/model"
        assert config["dataset_name"] == str(tmp_path / "data")
        assert config["num_train_epochs"] == 2 and config["per_device_train_batch_size"] == 4
        assert config["eval_strategy"] == ("epoch" if validation else "no")
        assert ("beta" in config) == (method == "dpo")
    else:
        assert config["base_model"] == "tiny/model"
        assert config["num_epochs"] == 2 and config["micro_batch_size"] == 4
        assert config["datasets"][0]["data_files"] == [str(layout.train_file)]
        assert config["datasets"][0]["type"] == (
            "chat_template.default" if method == "dpo" else "chat_template"
        )
        assert ("test_datasets" in config) == validation
        assert ("val_set_size" in config) == (not validation)
        assert (config.get("rl"), "rl_beta" in config) == (
            ("dpo", True) if method == "dpo" else (None, False)
        )


def test_an_undocumented_key_is_reported(tmp_path: Path) -> None:
    assert undocumented_keys("trl", "supervised", {"output_dir": "x", "epochs": 3}) == ["epochs"]
    config = {"datasets": [{"path": "x", "fields": "messages"}]}
    assert undocumented_keys("axolotl", "supervised", config) == ["datasets[].fields"]


def test_learning_rate_is_the_multiplier_times_a_base() -> None:
    assert learning_rate("supervised", {"learning_rate_multiplier": "auto"}) == 2e-5
    assert learning_rate("dpo", {}) == 1e-6
    assert learning_rate("supervised", {"learning_rate_multiplier": 3}) == pytest.approx(6e-5)
    assert learning_rate("supervised", {"learning_rate_multiplier": 2}, base=1e-4) == pytest.approx(2e-4)
    with pytest.raises(ProviderError, match="positive"):
        learning_rate("supervised", {"learning_rate_multiplier": -1})


def test_auto_hyperparameters_are_left_to_the_trainer_and_unknown_ones_refused(tmp_path: Path) -> None:
    settings = CommandSettings(command="x", trainer={"use_peft": True, "num_train_epochs": 9})
    layout = TrainerLayout(tmp_path, tmp_path, tmp_path / "t.jsonl", None, tmp_path / "o")
    config = trainer_config(
        "trl", make_request(tmp_path, settings, seed=None), layout, extra=settings.trainer
    )
    assert "per_device_train_batch_size" not in config and "seed" not in config
    assert config["use_peft"] is True and config["num_train_epochs"] == 9
    odd = make_request(tmp_path, settings, hyperparameters={"prompt_loss_weight": 0.1})
    with pytest.raises(ProviderError, match="prompt_loss_weight"):
        trainer_config("trl", odd, layout)
    with pytest.raises(ProviderError, match="dpo"):
        trainer_config("trl", make_request(tmp_path, settings, hyperparameters={"beta": 0.1}), layout)


def test_the_yaml_is_json_whose_floats_yaml_reads_as_floats() -> None:
    config = {"learning_rate": 2e-5, "big": 1e16, "plain": 0.5, "n": 3, "flag": True, "s": "é", "l": [1e-6]}
    text = to_yaml(config)
    assert json.loads(text) == config
    floats = re.findall(r"[-+]?[0-9][0-9.]*[eE][-+]?[0-9]+|[0-9]+\.[0-9]+", text)
    assert floats and all(YAML11_FLOAT.match(number) for number in floats)
    assert "2.0e-05" in text


# --- prepare ----------------------------------------------------------------------------------


def test_prepare_lays_out_data_config_and_output(tmp_path: Path) -> None:
    settings = CommandSettings(command="x {config}", base_learning_rate=1e-4)
    provider = CommandProvider(settings)
    request = make_request(tmp_path / "work", settings, validation=True)
    files = export(tmp_path / "work" / "export")
    prepared = provider.prepare(request, files)
    work = tmp_path / "work"
    assert prepared == {
        "data_dir": str(work / "data"),
        "config": str(work / "config.yaml"),
        "output_dir": str(work / "output"),
    }
    assert (work / "data/train.jsonl").read_bytes() == files.training_file("supervised").read_bytes()
    assert (work / "data/test.jsonl").read_bytes() == files.validation_file("supervised").read_bytes()
    assert (work / "output").is_dir()
    config = json.loads((work / "config.yaml").read_text())
    assert config["dataset_name"] == str(work / "data") and config["learning_rate"] == 1e-4
    # Without validation (or without test lines), no test file and no evaluation.
    provider.prepare(make_request(work, settings, validation=False), files)
    assert not (work / "data/test.jsonl").exists()
    assert json.loads((work / "config.yaml").read_text())["eval_strategy"] == "no"


@pytest.mark.parametrize("fmt", ["trl", "axolotl"])
def test_prepare_converts_preference_pairs_for_the_trainer(tmp_path: Path, fmt: Any) -> None:
    settings = CommandSettings(command="x {config}", format=fmt)
    request = make_request(tmp_path / "work", settings, method="dpo", validation=True)
    CommandProvider(settings).prepare(request, export(tmp_path / "work" / "export"))
    lines = (tmp_path / "work/data/train.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    assert len(lines) == 2 and (tmp_path / "work/data/test.jsonl").exists()
    if fmt == "trl":
        assert row == {
            "prompt": PAIR["input"]["messages"],
            "chosen": PAIR["preferred_output"],
            "rejected": PAIR["non_preferred_output"],
            "tools": PAIR["input"]["tools"],
        }
    else:
        assert row == {
            "messages": PAIR["input"]["messages"],
            "chosen": PAIR["preferred_output"][0],
            "rejected": PAIR["non_preferred_output"][0],
        }


# --- processes --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_trainer_that_succeeds_gives_its_output_dir_as_the_model(
    tmp_path: Path, started_groups: list[int]
) -> None:
    command = f"{PYTHON} {TRAINERS / 'ok_trainer.py'} --config {{config}}"
    provider, request, state = launched(
        tmp_path, command, started_groups, env={"FLYWHEEL_TEST_TOKEN": "tok-very-secret"}
    )
    assert state.status == "running" and state.provider_job_id.startswith("local-")
    job = json.loads((request.work_dir / "job.json").read_text())
    assert job["key"] == request.key and {"pid", "pgid", "started_at", "command"} <= job.keys()
    assert job["pgid"] == job["pid"]  # a session and process group of its own
    assert "tok-very-secret" not in (request.work_dir / "job.json").read_text()
    assert "tok-very-secret" not in (request.work_dir / "command.json").read_text()
    assert "tok-very-secret" not in json.dumps(dict(state.details))
    # The runner is not the launching process's child: nothing here holds it as a zombie.
    stat = Path(f"/proc/{job['pid']}/stat")
    if stat.exists():
        parent = int(stat.read_text().rpartition(")")[2].split()[1])
        assert parent != os.getpid()
    done = finished(provider, request, state)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == str(request.work_dir / "output")
    assert done.details["exit_code"] == 0
    model = json.loads((request.work_dir / "output/model.json").read_text())
    assert model["config"]["output_dir"] == done.fine_tuned_model
    assert model["secret_seen"] == "tok-very-secret"  # the env reached the trainer
    assert [e.kind for e in done.events].count("metrics") == 2


@pytest.mark.slow
def test_a_trainer_that_exits_3_is_a_failed_job_with_the_log_tail(
    tmp_path: Path, started_groups: list[int]
) -> None:
    command = f"{PYTHON} {TRAINERS / 'failing_trainer.py'}"
    provider, request, state = launched(
        tmp_path, command, started_groups, env={"FLYWHEEL_TEST_TOKEN": "tok-very-secret"}
    )
    done = finished(provider, request, state)
    assert done.status == "failed" and done.fine_tuned_model is None
    assert done.error is not None and "exited with code 3" in done.error
    assert "RuntimeError: boom" in done.error
    assert "tok-very-secret" not in done.error and "using token ***" in done.error
    assert done.details["exit_code"] == 3


@pytest.mark.slow
def test_a_runner_killed_with_its_group_reads_as_disappeared(
    tmp_path: Path, started_groups: list[int]
) -> None:
    provider, request, state = launched(
        tmp_path, f"{PYTHON} {TRAINERS / 'sleeping_trainer.py'}", started_groups
    )
    wait_for_log(request.work_dir, "training for a long time")
    assert provider.poll(handle_of(request, state)).status == "running"
    os.killpg(int(state.details["pgid"]), signal.SIGKILL)
    done = finished(provider, request, state)
    assert done.status == "failed"
    assert done.error is not None and "disappeared without an exit status" in done.error
    assert "training for a long time" in done.error
    assert done.events[-1].level == "error"


@pytest.mark.slow
def test_a_restarted_watcher_finds_the_job_and_never_starts_a_second_trainer(
    tmp_path: Path, started_groups: list[int]
) -> None:
    _provider, request, state = launched(
        tmp_path, f"{PYTHON} {TRAINERS / 'sleeping_trainer.py'}", started_groups
    )
    restarted = CommandProvider(CommandSettings(command=f"{PYTHON} {TRAINERS / 'sleeping_trainer.py'}"))
    found = restarted.find(request)
    assert found is not None and found.provider_job_id == state.provider_job_id
    assert found.status == "running"
    again = restarted.launch(request, {"data_dir": "x", "config": "y", "output_dir": "z"})
    assert again.details["pid"] == state.details["pid"]
    other = make_request(tmp_path / "elsewhere", request.settings)  # type: ignore[arg-type]
    assert restarted.find(other) is None
    # Cancel: SIGTERM to the group, and the ended job reads as cancelled, not failed.
    cancelled = restarted.cancel(handle_of(request, found))
    assert cancelled.status == "cancelled", cancelled.error
    assert "cancel_requested_at" in cancelled.details
    assert cancelled.details["signal"] == "SIGTERM"
    assert (request.work_dir / "cancel_requested.json").exists()


@pytest.mark.slow
def test_cancel_escalates_to_sigkill_after_the_grace_time(tmp_path: Path, started_groups: list[int]) -> None:
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ignoring', flush=True)\n"
        "while True:\n    time.sleep(3600)\n"
    )
    provider, request, state = launched(tmp_path, f"{PYTHON} {stubborn}", started_groups, cancel_grace_s=0.3)
    wait_for_log(request.work_dir, "ignoring")
    cancelled = provider.cancel(handle_of(request, state))
    assert cancelled.status == "cancelled"


@pytest.mark.slow
def test_cancel_of_a_finished_job_leaves_it_as_it_ended(tmp_path: Path, started_groups: list[int]) -> None:
    provider, request, state = launched(
        tmp_path, f"{PYTHON} {TRAINERS / 'ok_trainer.py'} --config {{config}}", started_groups
    )
    finished(provider, request, state)
    after = provider.cancel(handle_of(request, state))
    assert after.status == "succeeded"
    assert not (request.work_dir / "cancel_requested.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("shell", [False, True])
def test_placeholders_are_quoted_so_a_path_with_a_space_stays_one_argument(
    tmp_path: Path, started_groups: list[int], shell: bool
) -> None:
    command = f"{PYTHON} {TRAINERS / 'ok_trainer.py'} --config {{config}} {{output_dir}} {{data_dir}}"
    if shell:
        command += " && echo 'shell ran' $((1 + 1))"
    provider, request, state = launched(tmp_path, command, started_groups, name="my jobs", shell=shell)
    assert " " in str(request.work_dir)
    done = finished(provider, request, state)
    assert done.status == "succeeded", done.error
    argv = json.loads((request.work_dir / "output/model.json").read_text())["argv"]
    work = request.work_dir
    assert argv == ["--config", str(work / "config.yaml"), str(work / "output"), str(work / "data")]
    log = (request.work_dir / "train.log").read_text()
    assert ("shell ran 2" in log) == shell
    assert done.details["command"].count("'") >= 2  # the paths were quoted in the command shown


class Follower:
    """Polls the way the flywheel does: keeps every state's events (the launch's first), merges
    the details, and hands back the last event id."""

    def __init__(self, provider: CommandProvider, request: JobRequest, state: JobState) -> None:
        self.provider, self.request = provider, request
        self.job_id, self.details = state.provider_job_id, dict[str, Any]()
        self.last_event_id: str | None = None
        self.events: list[JobEvent] = []
        self.record(state)

    def record(self, state: JobState) -> JobState:
        self.details |= state.details
        self.events += state.events
        ids = [e.provider_event_id for e in state.events if e.provider_event_id]
        self.last_event_id = ids[-1] if ids else self.last_event_id
        return state

    def poll(self) -> JobState:
        handle = JobHandle(
            self.job_id, self.request.settings, self.request.work_dir, self.details, self.last_event_id
        )
        return self.record(self.provider.poll(handle))


@pytest.mark.slow
def test_log_events_are_incremental(tmp_path: Path, started_groups: list[int]) -> None:
    gate = tmp_path / "go"
    command = f"{PYTHON} {TRAINERS / 'ok_trainer.py'} --config {{config}} --wait-for {shlex.quote(str(gate))}"
    provider, request, state = launched(tmp_path, command, started_groups)
    follower = Follower(provider, request, state)
    wait_until(follower.poll, lambda _: any(e.kind == "metrics" for e in follower.events))
    assert [e.kind for e in follower.events] == ["message", "metrics"]
    assert follower.events[0].message.startswith("started (runner pid")
    assert follower.events[1].data == {"loss": 2.5, "grad_norm": 1.25, "learning_rate": 2e-05, "epoch": 0.5}
    # Nothing new: polling again returns no event, by last_event_id alone or by the scanned offset.
    assert follower.poll().events == ()
    bare = JobHandle(follower.job_id, request.settings, request.work_dir, {}, follower.last_event_id)
    assert provider.poll(bare).events == ()
    gate.touch()
    done = wait_until(follower.poll, lambda s: s.finished)
    assert done.status == "succeeded"
    assert [e.kind for e in follower.events] == ["message", "metrics", "metrics", "message"]
    assert follower.events[2].data == {"loss": 1.5, "epoch": 1.0}
    assert follower.events[-1].message == "the trainer exited with code 0"
    ids = [int(e.provider_event_id or -1) for e in follower.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # From the start again, every event comes back once, in order.
    replay = provider.poll(JobHandle(follower.job_id, request.settings, request.work_dir, {}, None))
    assert [e.provider_event_id for e in replay.events] == [e.provider_event_id for e in follower.events]


@pytest.mark.slow
def test_a_command_that_cannot_start_is_a_provider_error(tmp_path: Path, started_groups: list[int]) -> None:
    settings = CommandSettings(command="/nonexistent/trainer --config {config}")
    provider = CommandProvider(settings)
    request = make_request(tmp_path / "job", settings)
    prepared = provider.prepare(request, export(tmp_path / "job" / "export"))
    with pytest.raises(ProviderError, match=r"cannot be started: /nonexistent/trainer: No such file"):
        provider.launch(request, prepared)
    assert provider.find(request) is None


def test_a_reused_pid_is_not_taken_for_the_runner(tmp_path: Path) -> None:
    """A job.json whose pid now belongs to another process (here: this test's own, with another
    start time) reads as a trainer that disappeared, and is never signalled."""
    identity = process_identity(os.getpid())
    assert identity is not None
    work = tmp_path / "job"
    work.mkdir()
    record = {"key": "k", "job_id": "local-x", "pid": os.getpid(), "pgid": os.getpgid(0)}
    (work / "job.json").write_text(json.dumps(record | {"process_start": identity[0] - 1}))
    settings = CommandSettings(command="x")
    provider = CommandProvider(settings)
    handle = JobHandle("local-x", settings, work, {})
    state = provider.poll(handle)
    assert state.status == "failed" and state.error is not None and "disappeared" in state.error
    assert provider.cancel(handle).status == "failed"  # and this process is still alive
    (work / "job.json").write_text(json.dumps(record | {"process_start": identity[0]}))
    assert provider.poll(handle).status == "running"
