"""The mock server's fine-tuning lifecycle: timeline, request checks, list/events/checkpoints, the
tuned model's answers, and the create-answer delay that crash tests rely on.

The pure pieces (timeline at a moment, request parsing, the example index) are tested without a
server. The endpoints are driven through the real ``openai`` client against a real ``MockServer``
on loopback whose clock the test holds (``ManualClock``), so every state is reached exactly, with
no sleeping; a few tests run on the real clock with short timings and only wait for an outcome.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from flywheel.cli import cli
from flywheel.mock_server import FineTuneTiming, MockServer
from flywheel.mock_server._fine_tune_request import (
    parse_fine_tune_request,
    resolve_hyperparameters,
    training_file_problem,
)
from flywheel.mock_server._fine_tune_timeline import (
    MAX_METRIC_EVENTS,
    TrainingProblem,
    metric_steps,
    plan_timeline,
)
from flywheel.mock_server._http import MockAPIError
from flywheel.mock_server._tuned_models import ExampleIndex

START = 1_700_000_000.0
# 10 s validating, 20 s queued, 100 s running: the test moves the clock, so long phases cost nothing.
SLOW = FineTuneTiming(validating_s=10, queued_s=20, running_s=100)
FT_NAME = re.compile(r"^ft:(?P<base>[^:]+):flywheel-mock:(?P<suffix>[^:]*):(?P<id>[A-Za-z0-9]{8})$")


class ManualClock:
    """A clock the test moves by hand (read by the server's thread: a float read is atomic)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chat_line(user: str, reply: str, system: str = "Classify the ticket.") -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply},
        ]
    }


def dpo_line(user: str, preferred: str, other: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": user}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": other}],
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


TICKETS = [
    chat_line("My invoice shows the wrong amount", "billing"),
    chat_line("The app crashes when I open settings", "bug"),
    chat_line("How do I export my data to CSV?", "how-to"),
    chat_line("I was charged twice this month", "billing"),
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[MockServer]:
    with MockServer(fine_tune=SLOW, clock=clock) as running:
        yield running


@pytest.fixture
def client(server: MockServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0) as c:
        yield c


def upload(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes, name: str = "train.jsonl") -> str:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=(name, data), purpose="fine-tune").id


# --- the timeline, at chosen moments (pure) ------------------------------------------------------


def _timeline(problem: TrainingProblem | None = None, *, n_epochs: int = 3, steps_per_epoch: int = 4) -> Any:
    return plan_timeline(
        job_id="ftjob-test",
        created_at=START,
        timing=SLOW,
        training_file="file-train",
        validation_file=None,
        problem=problem,
        n_epochs=n_epochs,
        steps_per_epoch=steps_per_epoch,
        fine_tuned_model="ft:m:flywheel-mock::AbCdEf12",
    )


def test_status_follows_the_clock_through_every_phase() -> None:
    timeline = _timeline()
    moments = {
        START: "validating_files",
        START + 9.99: "validating_files",
        START + 10: "queued",
        START + 29.99: "queued",
        START + 30: "running",
        START + 129.99: "running",
        START + 130: "succeeded",
        START + 10_000: "succeeded",
    }
    assert {t: timeline.status_at(t) for t in moments} == moments
    assert timeline.finished_at(START + 129) is None
    assert timeline.finished_at(START + 500) == START + 130


def test_a_bad_file_fails_at_the_end_of_validation() -> None:
    timeline = _timeline(TrainingProblem("training_file", "Line 1 is not valid JSON."))
    assert timeline.status_at(START + 9) == "validating_files"
    assert timeline.status_at(START + 10) == "failed"
    assert timeline.finished_at(START + 99) == START + 10
    assert timeline.events_at(START + 99)[-1].level == "error"
    assert timeline.checkpoints_at(START + 1000) == []


def test_events_appear_when_their_time_comes_with_stable_ids() -> None:
    timeline = _timeline()
    at_start = [e.message for e in timeline.events_at(START)]
    assert at_start == ["Validating training file: file-train", "Created fine-tuning job: ftjob-test"]
    mid_run = timeline.events_at(START + 30 + 50)  # half of the 12 steps are done
    steps = [e.data["step"] for e in mid_run if e.kind == "metrics"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "Checkpoint created at step 4" in [e.message for e in mid_run]
    done = timeline.events_at(START + 130)
    assert [e.message for e in done[-4:]] == [
        "New fine-tuned model created: ft:m:flywheel-mock::AbCdEf12",
        "Evaluating model against our usage policies",
        "Usage policy evaluations completed, model is now enabled for sampling",
        "The job has successfully completed",
    ]
    assert [e.at for e in done] == sorted(e.at for e in done)
    # The same event has the same id on every read: clients page and resume by event id.
    ids_then = {e.index: timeline.event_id(e) for e in mid_run}
    assert all(timeline.event_id(e) == ids_then[e.index] for e in done if e.index in ids_then)
    assert len({timeline.event_id(e) for e in done}) == len(done)


def test_metrics_events_carry_the_step_data() -> None:
    timeline = _timeline()
    metrics = [e for e in timeline.events_at(START + 130) if e.kind == "metrics"]
    assert len(metrics) == 12
    first, last = metrics[0], metrics[-1]
    assert first.message.startswith("Step 1/12: training loss=")
    assert set(first.data) == {"step", "train_loss", "train_mean_token_accuracy", "total_steps"}
    assert first.data["total_steps"] == 12
    assert last.data["train_loss"] < first.data["train_loss"]
    assert last.data["train_mean_token_accuracy"] > first.data["train_mean_token_accuracy"]
    assert first.at == START + 30 + 100 / 12 and last.at == START + 130
    # Deterministic: planning the same job again gives the same numbers.
    again = [e.data for e in _timeline().events_at(START + 130) if e.kind == "metrics"]
    assert again == [e.data for e in metrics]


def test_checkpoints_of_the_last_three_epochs_appear_while_running() -> None:
    timeline = _timeline(n_epochs=5, steps_per_epoch=2)  # 10 steps, epochs end at 2, 4, 6, 8, 10
    assert timeline.checkpoints_at(START + 30 + 59) == []
    assert [c.step for c in timeline.checkpoints_at(START + 30 + 60)] == [6]
    assert [c.step for c in timeline.checkpoints_at(START + 130)] == [6, 8, 10]
    assert timeline.checkpoints_at(START + 130)[0].metrics["step"] == 6.0


def test_a_cancel_cuts_the_timeline_off() -> None:
    timeline = _timeline()
    cancelled_at = START + 40
    assert timeline.status_at(START + 39, cancelled_at) == "running"
    assert timeline.status_at(START + 1000, cancelled_at) == "cancelled"
    assert timeline.finished_at(START + 1000, cancelled_at) == cancelled_at
    events = timeline.events_at(START + 1000, cancelled_at)
    assert events[-1].message == "The job has been cancelled"
    assert all(e.at <= cancelled_at for e in events)
    assert timeline.checkpoints_at(START + 1000, cancelled_at) == []


def test_long_jobs_get_at_most_a_hundred_metrics_events() -> None:
    assert metric_steps(7) == [1, 2, 3, 4, 5, 6, 7]
    steps = metric_steps(25_001)
    assert len(steps) <= MAX_METRIC_EVENTS + 1 and steps[-1] == 25_001
    assert steps == sorted(set(steps))


def test_timing_rejects_negative_or_infinite_durations() -> None:
    with pytest.raises(ValueError, match="running_s"):
        FineTuneTiming(running_s=-1)
    with pytest.raises(ValueError, match="create_answer_delay_s"):
        FineTuneTiming(create_answer_delay_s=float("inf"))


# --- the create request (pure) -------------------------------------------------------------------


BASE = {"model": "gpt-4o-mini", "training_file": "file-x"}


def _rejected(body: dict[str, Any]) -> MockAPIError:
    with pytest.raises(MockAPIError) as caught:
        parse_fine_tune_request(body)
    assert caught.value.status == 400
    return caught.value


def test_metadata_is_checked_like_upstream() -> None:
    seventeen = {f"k{i}": "v" for i in range(17)}
    assert _rejected({**BASE, "metadata": seventeen}).code == "object_above_max_properties"
    assert _rejected({**BASE, "metadata": {"k" * 65: "v"}}).param == "metadata"
    assert _rejected({**BASE, "metadata": {"k": "v" * 513}}).code == "string_above_max_length"
    assert _rejected({**BASE, "metadata": {"k": 1}}).param == "metadata.k"
    assert _rejected({**BASE, "metadata": ["k"]}).code == "invalid_type"
    sixteen = {f"k{i}": "v" * 512 for i in range(16)}
    assert parse_fine_tune_request({**BASE, "metadata": sixteen}).metadata == sixteen


def test_methods_and_hyperparameters() -> None:
    supervised = parse_fine_tune_request({**BASE, "hyperparameters": {"n_epochs": 2}})
    assert supervised.method == "supervised"
    assert supervised.hyperparameters == {
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "n_epochs": 2,
    }
    dpo = parse_fine_tune_request(
        {**BASE, "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}}}
    )
    assert dpo.method == "dpo"
    assert dpo.hyperparameters == {
        "batch_size": "auto",
        "beta": 0.2,
        "learning_rate_multiplier": "auto",
        "n_epochs": 1,
    }
    assert _rejected({**BASE, "method": {"type": "reinforcement"}}).param == "method.type"
    assert _rejected({**BASE, "method": {"type": "magic"}}).code == "invalid_value"
    assert _rejected({**BASE, "hyperparameters": {"n_epochs": 0}}).param == "hyperparameters.n_epochs"
    assert _rejected({**BASE, "hyperparameters": {"beta": 0.1}}).code == "unknown_parameter"
    bad_lr = {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 0}}}
    assert (
        _rejected({**BASE, "method": bad_lr}).param
        == "method.supervised.hyperparameters.learning_rate_multiplier"
    )
    assert _rejected({**BASE, "suffix": "s" * 65}).code == "string_above_max_length"
    assert _rejected({**BASE, "seed": -1}).param == "seed"


def test_auto_hyperparameters_resolve_to_numbers() -> None:
    auto = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
    assert resolve_hyperparameters(auto, 10) == {
        "batch_size": 1,
        "learning_rate_multiplier": 1.8,
        "n_epochs": 10,
    }
    assert resolve_hyperparameters(auto, 500)["n_epochs"] == 3
    assert resolve_hyperparameters(auto, 20_000)["n_epochs"] == 1
    assert resolve_hyperparameters({**auto, "n_epochs": 7}, 10)["n_epochs"] == 7
    assert resolve_hyperparameters({"beta": "auto"}, 10) == {"beta": 0.1}


def test_training_file_checks_per_method() -> None:
    assert training_file_problem(jsonl(TICKETS)) is None
    assert training_file_problem(b"") == "The training file is empty."
    assert training_file_problem(b"{}\nnot json\n") == "Line 1 has no 'messages' array."
    assert training_file_problem(b'{"messages": [{"role": "user", "content": "x"}]}') == (
        "Line 1 has no assistant message to learn from."
    )
    dpo = jsonl([dpo_line("hi", "Hello!", "go away")])
    assert training_file_problem(dpo, "dpo") is None
    assert (
        training_file_problem(jsonl(TICKETS), "dpo")
        == "Line 1 has no 'input' object with a 'messages' array."
    )
    no_other = jsonl(
        [{"input": {"messages": []}, "preferred_output": [{"role": "assistant", "content": "a"}]}]
    )
    assert (
        training_file_problem(no_other, "dpo")
        == "Line 1 has no 'non_preferred_output' array of assistant messages."
    )


# --- what a tuned model answers (pure) ------------------------------------------------------------


def test_the_most_similar_example_answers_and_ties_go_to_the_first() -> None:
    index = ExampleIndex.from_training_file(jsonl(TICKETS))
    assert index.reply_for([{"role": "user", "content": "the app crashes on start"}]) == "bug"
    assert index.reply_for([{"role": "user", "content": "charged twice!"}]) == "billing"
    assert index.reply_for([{"role": "user", "content": "export CSV"}]) == "how-to"
    # Nothing in common: every example ties at zero, so the first one answers.
    assert index.reply_for([{"role": "user", "content": "zzz"}]) == "billing"
    # The last user message decides, not the shared system prompt or earlier turns.
    conversation = [
        {"role": "system", "content": "Classify the ticket."},
        {"role": "user", "content": "My invoice shows the wrong amount"},
        {"role": "assistant", "content": "billing"},
        {"role": "user", "content": [{"type": "text", "text": "also the app crashes"}]},
    ]
    assert index.reply_for(conversation) == "bug"
    assert ExampleIndex([]).reply_for([{"role": "user", "content": "x"}]) is None


def test_dpo_models_answer_with_the_preferred_output() -> None:
    index = ExampleIndex.from_training_file(jsonl([dpo_line("say hi", "Hello!", "Go away.")]), "dpo")
    assert index.reply_for([{"role": "user", "content": "hi"}]) == "Hello!"


# --- the endpoints, on a clock the test holds ----------------------------------------------------


def test_a_job_lives_through_every_state_on_the_clock(client: openai.OpenAI, clock: ManualClock) -> None:
    training = upload(client, TICKETS)
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18",
        training_file=training,
        suffix="classify",
        seed=7,
        metadata={"team": "a"},
    )
    assert job.status == "validating_files"
    assert job.created_at == int(START)
    assert job.estimated_finish == int(START + 130)
    assert (job.fine_tuned_model, job.finished_at, job.trained_tokens, job.result_files) == (
        None,
        None,
        None,
        [],
    )
    assert job.hyperparameters.n_epochs == "auto"
    assert (job.seed, job.user_provided_suffix, job.metadata) == (7, "classify", {"team": "a"})
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"  # reads do not move it

    clock.advance(10)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    clock.advance(20)
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running"
    # Four examples: "auto" is 25 epochs (about 100 example passes) of batch size 1.
    assert running.hyperparameters.model_dump() == {
        "batch_size": 1,
        "learning_rate_multiplier": 1.8,
        "n_epochs": 25,
    }
    assert running.method is not None and running.method.type == "supervised"
    assert running.method.supervised is not None
    assert running.method.supervised.hyperparameters.n_epochs == 25
    assert running.fine_tuned_model is None

    clock.advance(100)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded"
    assert done.finished_at == int(START + 130) and done.estimated_finish is None
    assert done.fine_tuned_model is not None
    name = FT_NAME.match(done.fine_tuned_model)
    assert name is not None and (name["base"], name["suffix"]) == ("gpt-4o-mini-2024-07-18", "classify")
    assert done.trained_tokens is not None and done.trained_tokens > 0
    assert done.error is None
    (results,) = done.result_files
    csv = client.files.content(results).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv) == 1 + MAX_METRIC_EVENTS
    assert client.fine_tuning.jobs.retrieve(job.id).result_files == [results]  # written once


def test_without_a_suffix_the_suffix_part_is_empty(client: openai.OpenAI, clock: ManualClock) -> None:
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, TICKETS))
    clock.advance(130)
    model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert model is not None and re.fullmatch(r"ft:gpt-4o-mini:flywheel-mock::[A-Za-z0-9]{8}", model)
    assert client.fine_tuning.jobs.retrieve(job.id).user_provided_suffix is None


def test_events_are_newest_first_and_page_by_id(client: openai.OpenAI, clock: ManualClock) -> None:
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=upload(client, TICKETS[:2]), hyperparameters={"n_epochs": 3}
    )
    first = client.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in first.data] == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {job.training_file}",
    ]
    assert all(e.object == "fine_tuning.job.event" and e.type == "message" for e in first.data)
    clock.advance(30 + 50)  # half way through 6 steps
    page = client.fine_tuning.jobs.list_events(job.id, limit=100)
    metrics = [e for e in page.data if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [3, 2, 1]
    assert metrics[0].data == {
        "step": 3,
        "train_loss": metrics[0].data["train_loss"],
        "train_mean_token_accuracy": metrics[0].data["train_mean_token_accuracy"],
        "total_steps": 6,
    }
    assert metrics[0].created_at == int(START + 30 + 50)
    assert page.data[0].message == "Step 3/6: training loss=" + f"{metrics[0].data['train_loss']:.2f}"
    clock.advance(50)
    everything = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert everything[0].message == "The job has successfully completed"
    assert "Fine-tuning job started" in [e.message for e in everything]
    assert "Files validated, moving job to queued state" in [e.message for e in everything]
    # Pages of 3 (the client follows ``after``) give the same events in the same order.
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=3)] == [e.id for e in everything]
    after_the_third = client.fine_tuning.jobs.list_events(job.id, after=everything[2].id, limit=2)
    assert [e.id for e in after_the_third.data] == [everything[3].id, everything[4].id]
    assert after_the_third.has_more is True


def test_checkpoints_appear_during_running(client: openai.OpenAI, clock: ManualClock) -> None:
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini",
        training_file=upload(client, TICKETS),
        validation_file=upload(client, TICKETS[:1], "valid.jsonl"),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}},
    )
    # 4 epochs of 2 steps: checkpoints at the end of epochs 2, 3 and 4 (steps 4, 6, 8).
    clock.advance(30 + 50)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4]
    clock.advance(50)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [8, 6, 4]  # newest first
    model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    newest = checkpoints[0]
    assert newest.id.startswith("ftckpt_") and newest.object == "fine_tuning.job.checkpoint"
    assert newest.fine_tuned_model_checkpoint == f"{model}:ckpt-step-8"
    assert newest.fine_tuning_job_id == job.id
    assert newest.metrics.step == 8.0
    assert newest.metrics.train_loss is not None and newest.metrics.valid_loss is not None
    assert newest.metrics.full_valid_loss == newest.metrics.valid_loss
    assert [c.id for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=1)] == [
        c.id for c in checkpoints
    ]
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Checkpoint created at step 4" in events and "Step 8/8: training loss=" in events[4]
    assert "validation loss=" in events[4]


def test_bad_training_or_validation_files_fail_after_validating(
    client: openai.OpenAI, clock: ManualClock
) -> None:
    bad = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, b"not json\n"))
    good = upload(client, TICKETS)
    bad_validation = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=good, validation_file=upload(client, b'{"messages": 1}\n')
    )
    dpo_on_chat_data = client.fine_tuning.jobs.create(
        model="gpt-4o-mini",
        training_file=good,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
    )
    assert client.fine_tuning.jobs.retrieve(bad.id).status == "validating_files"
    clock.advance(10)
    failed = client.fine_tuning.jobs.retrieve(bad.id)
    assert failed.status == "failed" and failed.finished_at == int(START + 10)
    assert failed.error is not None
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert failed.error.message == "The job failed due to an invalid training file. Line 1 is not valid JSON."
    latest = client.fine_tuning.jobs.list_events(bad.id).data[0]
    assert (latest.level, latest.message) == ("error", failed.error.message)
    validation_error = client.fine_tuning.jobs.retrieve(bad_validation.id).error
    assert validation_error is not None and validation_error.param == "validation_file"
    dpo_error = client.fine_tuning.jobs.retrieve(dpo_on_chat_data.id).error
    assert dpo_error is not None and "'input'" in dpo_error.message
    clock.advance(1000)
    assert client.fine_tuning.jobs.retrieve(bad.id).status == "failed"


def test_dpo_jobs_echo_their_method_and_answer_with_preferred_outputs(
    client: openai.OpenAI, clock: ManualClock
) -> None:
    training = upload(
        client, [dpo_line("Say hello", "Hello there!", "no."), dpo_line("Say bye", "Goodbye!", "meh")]
    )
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini",
        training_file=training,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25}}},
    )
    assert job.method is not None and job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None and job.method.dpo.hyperparameters.beta == 0.25
    clock.advance(130)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded"
    assert (
        done.method is not None
        and done.method.dpo is not None
        and done.method.dpo.hyperparameters is not None
    )
    assert isinstance(done.method.dpo.hyperparameters.n_epochs, int)
    assert done.fine_tuned_model is not None
    answer = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "bye"}]
    )
    assert answer.choices[0].message.content == "Goodbye!"


def test_cancel_running_or_queued_jobs_only(client: openai.OpenAI, clock: ManualClock) -> None:
    training = upload(client, TICKETS)
    queued = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
    clock.advance(15)
    assert client.fine_tuning.jobs.retrieve(queued.id).status == "queued"
    cancelled = client.fine_tuning.jobs.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at == int(START + 15)
    assert cancelled.estimated_finish is None
    clock.advance(1000)
    assert client.fine_tuning.jobs.retrieve(queued.id).status == "cancelled"
    assert client.fine_tuning.jobs.list_events(queued.id).data[0].message == "The job has been cancelled"
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(queued.id)
    finished = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
    clock.advance(130)
    with pytest.raises(openai.BadRequestError, match="already succeeded"):
        client.fine_tuning.jobs.cancel(finished.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.cancel("ftjob-nope")
    running = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
    clock.advance(60)
    assert client.fine_tuning.jobs.cancel(running.id).status == "cancelled"
    assert client.fine_tuning.jobs.retrieve(running.id).fine_tuned_model is None


def test_list_pages_newest_first_and_filters_by_metadata(client: openai.OpenAI, server: MockServer) -> None:
    training = upload(client, TICKETS)
    created = [
        client.fine_tuning.jobs.create(
            model="gpt-4o-mini",
            training_file=training,
            metadata={"flywheel_job": f"key-{i % 3}", "n": str(i)},
        ).id
        for i in range(7)
    ]
    plain = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training).id
    newest_first = [plain, *created[::-1]]
    first_page = client.fine_tuning.jobs.list(limit=3)
    assert [j.id for j in first_page.data] == newest_first[:3] and first_page.has_more is True
    assert [j.id for j in client.fine_tuning.jobs.list(limit=3)] == newest_first  # follows ``after``
    assert [j.id for j in client.fine_tuning.jobs.list(after=newest_first[1], limit=2).data] == newest_first[
        2:4
    ]
    # The lookup a restarted client makes: exactly the jobs carrying its key, across pages too.
    key_1 = [j.id for j in client.fine_tuning.jobs.list(limit=1, metadata={"flywheel_job": "key-1"})]
    assert key_1 == [created[4], created[1]]
    both = client.fine_tuning.jobs.list(metadata={"flywheel_job": "key-1", "n": "4"}).data
    assert [j.id for j in both] == [created[4]]
    assert client.fine_tuning.jobs.list(metadata={"flywheel_job": "key-"}).data == []
    extra = client.fine_tuning.jobs.list(extra_query={"metadata[flywheel_job]": "key-2"}).data
    assert [j.id for j in extra] == [created[5], created[2]]
    with urllib.request.urlopen(server.base_url + "/fine_tuning/jobs?metadata=null", timeout=10) as answer:
        assert [j["id"] for j in json.load(answer)["data"]] == [plain]
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.fine_tuning.jobs.list(limit=0)


def test_create_rejects_bad_requests_with_400s(client: openai.OpenAI) -> None:
    training = upload(client, TICKETS)
    with pytest.raises(openai.BadRequestError, match="too many properties") as too_many:
        client.fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=training, metadata={f"k{i}": "v" for i in range(17)}
        )
    assert too_many.value.code == "object_above_max_properties"
    with pytest.raises(openai.BadRequestError, match="no such file"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-missing")
    with pytest.raises(openai.BadRequestError, match="no such file") as missing:
        client.fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=training, validation_file="file-missing"
        )
    assert missing.value.param == "validation_file"
    with pytest.raises(openai.BadRequestError, match="n_epochs"):
        client.fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=training, hyperparameters={"n_epochs": 51}
        )
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert client.fine_tuning.jobs.list().data == []  # nothing was created by the failures


# --- the model a job produced --------------------------------------------------------------------


def test_the_tuned_model_answers_from_its_training_data(client: openai.OpenAI, clock: ManualClock) -> None:
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=upload(client, TICKETS), suffix="triage"
    )
    ask = [
        {"role": "system", "content": "Classify the ticket."},
        {"role": "user", "content": "app crashes on open"},
    ]
    clock.advance(129)
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None
    clock.advance(1)
    tuned = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert tuned is not None
    answer = client.chat.completions.create(model=tuned, messages=ask)
    assert answer.model == tuned
    assert answer.choices[0].message.content == "bug" and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 1
    again = client.chat.completions.create(model=tuned, messages=ask)
    assert again.choices[0].message.content == "bug"
    billing = [{"role": "user", "content": "why was I charged twice"}]
    assert (
        client.chat.completions.create(model=tuned, messages=billing).choices[0].message.content == "billing"
    )
    stream = client.chat.completions.create(model=tuned, messages=ask, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == "bug"
    # Its checkpoints answer too; a model this server never made keeps the generic mock reply.
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    assert client.chat.completions.create(model=checkpoint, messages=ask).choices[0].message.content == "bug"
    unknown = client.chat.completions.create(
        model="ft:gpt-4o-mini:flywheel-mock:triage:00000000", messages=ask
    )
    assert (unknown.choices[0].message.content or "").startswith("Mock reply:")
    unseen_checkpoint = client.chat.completions.create(model=f"{tuned}:ckpt-step-99999", messages=ask)
    assert (unseen_checkpoint.choices[0].message.content or "").startswith("Mock reply:")


def test_long_learned_replies_stream_word_by_word_and_respect_max_tokens(
    client: openai.OpenAI, clock: ManualClock
) -> None:
    reply = "Thanks for reporting this.\nWe are  looking into the crash now."
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=upload(client, [chat_line("the app crashes", reply)])
    )
    clock.advance(130)
    tuned = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert tuned is not None
    ask = [{"role": "user", "content": "crashes"}]
    stream = client.chat.completions.create(model=tuned, messages=ask, stream=True)
    pieces = [
        chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content
    ]
    assert "".join(pieces) == reply and len(pieces) == len(reply.split())
    short = client.chat.completions.create(model=tuned, messages=ask, max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content == reply[:12]


def test_learned_json_replies_serve_json_modes(client: openai.OpenAI, clock: ManualClock) -> None:
    lines = [chat_line("the app crashes", '{"label": "bug"}'), chat_line("say hello", "Hello!")]
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, lines))
    clock.advance(130)
    tuned = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert tuned is not None
    as_json = client.chat.completions.create(
        model=tuned,
        messages=[{"role": "user", "content": "crashes"}],
        response_format={"type": "json_object"},
    )
    assert as_json.choices[0].message.content == '{"label": "bug"}'
    # Prose learned, JSON asked for: the format wins, as the mock does for any model.
    prose = client.chat.completions.create(
        model=tuned, messages=[{"role": "user", "content": "hello"}], response_format={"type": "json_object"}
    )
    reply = json.loads(prose.choices[0].message.content or "")
    assert reply["reply"].startswith("Mock reply: hello")


@pytest.mark.anyio
async def test_async_stream_from_a_tuned_model(clock: ManualClock, server: MockServer) -> None:
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0) as aclient:
        training = await aclient.files.create(file=("t.jsonl", jsonl(TICKETS)), purpose="fine-tune")
        job = await aclient.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id)
        clock.advance(130)
        tuned = (await aclient.fine_tuning.jobs.retrieve(job.id)).fine_tuned_model
        assert tuned is not None
        stream = await aclient.chat.completions.create(
            model=tuned, messages=[{"role": "user", "content": "export to CSV"}], stream=True
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "how-to"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the real clock, short timings ---------------------------------------------------------------


def test_on_the_real_clock_a_quick_job_succeeds_in_order() -> None:
    quick = FineTuneTiming(validating_s=0.05, queued_s=0.05, running_s=0.2)
    with (
        MockServer(fine_tune=quick) as server,
        openai.OpenAI(api_key="sk", base_url=server.base_url) as client,
    ):
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, TICKETS))
        seen = [job.status]
        deadline = time.monotonic() + 30
        while seen[-1] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            status = client.fine_tuning.jobs.retrieve(job.id).status
            if status != seen[-1]:
                seen.append(status)
            time.sleep(0.01)
        order = ["validating_files", "queued", "running", "succeeded"]
        assert seen[-1] == "succeeded"
        assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)


def test_the_create_answer_is_held_after_the_job_exists() -> None:
    """What a crash test needs: the client gives up (or is killed) before the answer, and the job
    is there for the next process to find by its metadata."""
    timing = FineTuneTiming(validating_s=0.05, queued_s=0.05, running_s=0.1, create_answer_delay_s=0.6)
    with (
        MockServer(fine_tune=timing) as server,
        openai.OpenAI(api_key="sk", base_url=server.base_url) as client,
    ):
        training = upload(client, TICKETS)
        impatient = client.with_options(timeout=0.15, max_retries=0)
        with pytest.raises(openai.APITimeoutError):
            impatient.fine_tuning.jobs.create(
                model="gpt-4o-mini", training_file=training, metadata={"flywheel_job": "run-1"}
            )
        found = client.fine_tuning.jobs.list(metadata={"flywheel_job": "run-1"}).data
        assert len(found) == 1
        started = time.monotonic()
        answered = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
        assert time.monotonic() - started >= 0.6
        assert answered.id in [j.id for j in client.fine_tuning.jobs.list()]


def test_a_client_killed_while_the_answer_is_held_leaves_its_job_and_a_clean_server() -> None:
    timing = FineTuneTiming(validating_s=5, queued_s=5, running_s=5, create_answer_delay_s=30)
    with (
        MockServer(fine_tune=timing) as server,
        openai.OpenAI(api_key="sk", base_url=server.base_url) as client,
    ):
        training = upload(client, TICKETS)
        creating = (
            "import openai, sys; openai.OpenAI(api_key='sk', base_url=sys.argv[1], max_retries=0)"
            ".fine_tuning.jobs.create(model='gpt-4o-mini', training_file=sys.argv[2],"
            " metadata={'flywheel_job': 'run-2'})"
        )
        process = subprocess.Popen([sys.executable, "-c", creating, server.base_url, training])
        deadline = time.monotonic() + 30
        while not client.fine_tuning.jobs.list(metadata={"flywheel_job": "run-2"}).data:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
        process.kill()
        process.wait(timeout=10)
        assert len(client.fine_tuning.jobs.list(metadata={"flywheel_job": "run-2"}).data) == 1
        stopping = time.monotonic()
    # The held answer ended with its client: the server stops at once, not after the 30 s hold.
    assert time.monotonic() - stopping < 1.5


def test_a_create_held_before_the_job_exists_makes_no_job_when_the_client_leaves() -> None:
    timing = FineTuneTiming(validating_s=0.05, queued_s=0.05, running_s=0.1, create_hold_s=0.5)
    with (
        MockServer(fine_tune=timing) as server,
        openai.OpenAI(api_key="sk", base_url=server.base_url) as client,
    ):
        training = upload(client, TICKETS)
        impatient = client.with_options(timeout=0.1, max_retries=0)
        with pytest.raises(openai.APITimeoutError):
            impatient.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
        time.sleep(0.8)  # past the hold: the server has had its chance to (wrongly) make the job
        assert client.fine_tuning.jobs.list().data == []
        started = time.monotonic()
        patient = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
        assert time.monotonic() - started >= 0.5
        assert [j.id for j in client.fine_tuning.jobs.list()] == [patient.id]


# --- the command line ----------------------------------------------------------------------------


def test_cli_rejects_a_bad_fine_tune_timing() -> None:
    result = CliRunner().invoke(cli, ["mock-server", "--fine-tune-seconds", "1,2"])
    assert result.exit_code == 2
    assert "--fine-tune-seconds" in result.output and "1,1,3" in result.output
    result = CliRunner().invoke(cli, ["mock-server", "--fine-tune-create-delay", "-1"])
    assert result.exit_code == 2


def test_cli_serves_jobs_with_the_timing_it_was_given() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "flywheel", "mock-server", "--port", str(port),
        "--fine-tune-seconds", "0,0,0.2", "--fine-tune-create-delay", "0.2", "--fine-tune-create-hold", "0.1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert f"127.0.0.1:{port}/v1" in process.stdout.readline().decode()
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the mock server did not start"
                time.sleep(0.05)
        with openai.OpenAI(api_key="sk", base_url=base_url) as client:
            started = time.monotonic()
            job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, TICKETS))
            assert time.monotonic() - started >= 0.3  # held before and after the job was made
            # No time validating or queued; the hold came before creation, the delay after it.
            assert client.fine_tuning.jobs.retrieve(job.id).status in ("running", "succeeded")
            while client.fine_tuning.jobs.retrieve(job.id).status != "succeeded":
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        process.terminate()
        process.communicate(timeout=30)
