"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning lifecycle on the server's clock.

A job goes ``validating_files`` → ``queued`` → ``running`` → ``succeeded`` as time passes (the
durations are the app's ``FineTuneTiming``), or ``failed`` at the end of validation when its
training or validation file is not valid JSONL for its method, or ``cancelled`` by the cancel
endpoint. Each job's life is planned once at creation (``_fine_tune_timeline``); every read
(retrieve, list, events, checkpoints) shows the plan at the clock's ``now``, so no background task
runs and the clock can be injected.

A succeeded job's ``fine_tuned_model`` (and its checkpoints' models) then answer chat requests
from its training examples (``_tuned_models``). Jobs live in memory next to the app's ``FileStore``;
everything runs on the app's single event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._files import FileStore
from ._fine_tune_request import (
    FineTuneRequest,
    count_examples,
    parse_fine_tune_request,
    resolve_hyperparameters,
    training_file_problem,
)
from ._fine_tune_timeline import FineTuneTiming, Timeline, TrainingProblem, plan_timeline
from ._http import MockAPIError, json_response, read_json_object
from ._text import estimate_tokens, stable_seed
from ._tuned_models import ExampleIndex

__all__ = ["FineTuningJobs", "fine_tuning_routes", "training_file_problem"]

ORGANIZATION = "flywheel-mock"
_ALPHANUMERIC = string.ascii_letters + string.digits
_CHECKPOINT_MODEL = re.compile(r"^(?P<model>ft:.+):ckpt-step-(?P<step>\d+)$")
_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_RESOLVED_FROM = frozenset({"running", "succeeded"})


@dataclass(slots=True)
class _Job:
    request: FineTuneRequest
    timeline: Timeline
    fine_tuned_model: str
    resolved: dict[str, Any]
    trained_tokens: int
    seed: int
    training_data: bytes
    cancelled_at: float | None = None
    result_file: str | None = None
    examples: ExampleIndex | None = None


class FineTuningJobs:
    """The jobs of one app; ``clock`` (unix seconds) is what moves them along."""

    def __init__(
        self, files: FileStore, timing: FineTuneTiming | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._files = files
        self.timing = timing or FineTuneTiming()
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._by_model: dict[str, str] = {}

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        request = parse_fine_tune_request(body)
        training = self._file(request.training_file, "training_file")
        problem = _problem(training, request.method, "training_file")
        if request.validation_file is not None:
            validation = self._file(request.validation_file, "validation_file")
            problem = problem or _problem(validation, request.method, "validation_file")
        job_id = "ftjob-" + _random_id(24)
        base = request.model.split(":")[1] if request.model.startswith("ft:") else request.model
        model_name = f"ft:{base}:{ORGANIZATION}:{request.suffix or ''}:{_random_id(8)}"
        n_examples = count_examples(training)
        resolved = resolve_hyperparameters(request.hyperparameters, n_examples)
        steps_per_epoch = math.ceil(max(1, n_examples) / resolved["batch_size"])
        timeline = plan_timeline(
            job_id=job_id,
            created_at=self._clock(),
            timing=self.timing,
            training_file=request.training_file,
            validation_file=request.validation_file,
            problem=problem,
            n_epochs=resolved["n_epochs"],
            steps_per_epoch=steps_per_epoch,
            fine_tuned_model=model_name,
        )
        tokens = estimate_tokens(training.decode("utf-8", "replace")) * resolved["n_epochs"]
        seed = request.seed if request.seed is not None else stable_seed(job_id) % 2**31
        job = _Job(request, timeline, model_name, resolved, tokens, seed, training)
        self._jobs[job_id] = job
        self._by_model[model_name] = job_id
        return self._view(job, self._clock())

    def retrieve(self, job_id: str) -> dict[str, Any]:
        return self._view(self._job(job_id), self._clock())

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self._job(job_id)
        now = self._clock()
        status = job.timeline.status_at(now, job.cancelled_at)
        if status in _TERMINAL:
            raise MockAPIError(400, f"Job has already {status}: {job_id}", param="fine_tuning_job_id")
        job.cancelled_at = now
        return self._view(job, now)

    def list_jobs(self, query: Mapping[str, str], filters: Mapping[str, str] | None) -> dict[str, Any]:
        """Newest first; ``filters`` are ``metadata[KEY]=VALUE`` pairs, all of which must match,
        or ``None`` for ``metadata=null`` (jobs without metadata)."""
        now = self._clock()
        jobs = list(self._jobs.values())[::-1]
        if filters is None:
            jobs = [job for job in jobs if not job.request.metadata]
        else:
            jobs = [job for job in jobs if _matches(job.request.metadata or {}, filters)]
        return _cursor_page([self._view(job, now) for job in jobs], query, default_limit=20)

    def list_events(self, job_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        job = self._job(job_id)
        timeline = job.timeline
        events = [
            {
                "id": timeline.event_id(event),
                "object": "fine_tuning.job.event",
                "created_at": int(event.at),
                "level": event.level,
                "message": event.message,
                "data": dict(event.data),
                "type": event.kind,
            }
            for event in timeline.events_at(self._clock(), job.cancelled_at)
        ]
        return _cursor_page(events[::-1], query, default_limit=20)

    def list_checkpoints(self, job_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        job = self._job(job_id)
        timeline = job.timeline
        checkpoints = [
            {
                "id": timeline.checkpoint_id(checkpoint),
                "object": "fine_tuning.job.checkpoint",
                "created_at": int(checkpoint.at),
                "fine_tuned_model_checkpoint": f"{job.fine_tuned_model}:ckpt-step-{checkpoint.step}",
                "fine_tuning_job_id": job_id,
                "metrics": dict(checkpoint.metrics),
                "step_number": checkpoint.step,
            }
            for checkpoint in timeline.checkpoints_at(self._clock(), job.cancelled_at)
        ]
        return _cursor_page(checkpoints[::-1], query, default_limit=10)

    def examples_for_model(self, model: str) -> ExampleIndex | None:
        """The training examples behind ``model``, if it is a model (or checkpoint) made here."""
        step: int | None = None
        checkpoint = _CHECKPOINT_MODEL.match(model)
        if checkpoint is not None:
            model, step = checkpoint["model"], int(checkpoint["step"])
        job = self._jobs.get(self._by_model.get(model, ""))
        if job is None:
            return None
        now = self._clock()
        if step is None:
            if job.timeline.status_at(now, job.cancelled_at) != "succeeded":
                return None
        elif step not in {c.step for c in job.timeline.checkpoints_at(now, job.cancelled_at)}:
            return None
        if job.examples is None:
            job.examples = ExampleIndex.from_training_file(job.training_data, job.request.method)
        return job.examples

    def _view(self, job: _Job, now: float) -> dict[str, Any]:
        """The ``fine_tuning.job`` object as it is at ``now``."""
        request, timeline = job.request, job.timeline
        status = timeline.status_at(now, job.cancelled_at)
        finished_at = timeline.finished_at(now, job.cancelled_at)
        succeeded = status == "succeeded"
        hyperparameters = job.resolved if status in _RESOLVED_FROM else dict(request.hyperparameters)
        error = None
        if status == "failed" and timeline.problem is not None:
            problem = timeline.problem
            error = {"code": problem.code, "message": problem.message, "param": problem.param}
        return {
            "id": timeline.job_id,
            "object": "fine_tuning.job",
            "created_at": int(timeline.created_at),
            "error": error,
            "estimated_finish": None if status in _TERMINAL else math.ceil(timeline.finishes_at),
            "fine_tuned_model": job.fine_tuned_model if succeeded else None,
            "finished_at": None if finished_at is None else int(finished_at),
            "hyperparameters": {k: v for k, v in hyperparameters.items() if k != "beta"},
            "integrations": [],
            "metadata": request.metadata,
            "method": {"type": request.method, request.method: {"hyperparameters": hyperparameters}},
            "model": request.model,
            "organization_id": "org-" + ORGANIZATION,
            "result_files": [self._result_file(job)] if succeeded else [],
            "seed": job.seed,
            "status": status,
            "trained_tokens": job.trained_tokens if succeeded else None,
            "training_file": request.training_file,
            "user_provided_suffix": request.suffix,
            "validation_file": request.validation_file,
        }

    def _result_file(self, job: _Job) -> str:
        """The job's ``step_metrics.csv`` (the steps that had a metrics event), written the first
        time the succeeded job is seen, as upstream adds it at the end."""
        if job.result_file is None:
            rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
            for event in job.timeline.events:
                if event.kind == "metrics":
                    m = event.data
                    values = (
                        int(m["step"]),
                        m["train_loss"],
                        m["train_mean_token_accuracy"],
                        m.get("valid_loss", ""),
                        m.get("valid_mean_token_accuracy", ""),
                    )
                    rows.append(",".join(str(v) for v in values))
            data = ("\n".join(rows) + "\n").encode()
            job.result_file = self._files.add("step_metrics.csv", "fine-tune-results", data).id
        return job.result_file

    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise MockAPIError(
                404, f"Fine-tuning job {job_id} not found.", param="fine_tuning_job_id"
            ) from None

    def _file(self, file_id: str, param: str) -> bytes:
        try:
            return self._files.get(file_id).data
        except MockAPIError:
            raise MockAPIError(
                400, f"Invalid file '{file_id}': no such file.", param=param, code="invalid_file"
            ) from None


def _problem(data: bytes, method: str, param: str) -> TrainingProblem | None:
    problem = training_file_problem(data, method)
    if problem is None:
        return None
    kind = param.removesuffix("_file")
    return TrainingProblem(param, f"The job failed due to an invalid {kind} file. {problem}")


def _matches(metadata: Mapping[str, str], filters: Mapping[str, str]) -> bool:
    return all(key in metadata and metadata[key] == value for key, value in filters.items())


def metadata_filters(request: Request) -> dict[str, str] | None:
    """``metadata[KEY]=VALUE`` query parameters as a dict; ``None`` for ``metadata=null``."""
    params = request.query_params
    if params.get("metadata") == "null":
        return None
    filters: dict[str, str] = {}
    for key, value in params.multi_items():
        if key.startswith("metadata[") and key.endswith("]"):
            filters[key[len("metadata[") : -1]] = value
    return filters


def _cursor_page(
    items: list[dict[str, Any]], query: Mapping[str, str], *, default_limit: int
) -> dict[str, Any]:
    """Upstream's cursor page over ``items`` (already in list order): ``after`` an id, ``limit``."""
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    raw = query.get("limit")
    try:
        limit = default_limit if raw is None else int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise MockAPIError(400, f"Invalid 'limit': expected a positive integer, got {raw!r}.", param="limit")
    page = items[:limit]
    return {"object": "list", "data": page, "has_more": len(items) > len(page)}


async def _client_left_within(request: Request, seconds: float) -> bool:
    """Wait up to ``seconds``, watching the connection: whether the client hung up (then the
    wait ends at once).

    A handler is not cancelled when its client goes away, so the holds check for themselves: a
    real server never acts on a request that did not fully arrive."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if await request.is_disconnected():
            return True
        await asyncio.sleep(min(0.01, left))
    return await request.is_disconnected()


def _random_id(length: int) -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def fine_tuning_routes(jobs: FineTuningJobs) -> list[Route]:
    async def create(request: Request) -> Response:
        body = await read_json_object(request)
        if jobs.timing.create_hold_s > 0 and await _client_left_within(request, jobs.timing.create_hold_s):
            return Response(status_code=499)  # nobody is listening, and no job was made
        job = jobs.create(body)
        # The job is stored before the answer is held back: a client killed meanwhile must find it.
        # The hold ends early when the client is gone, so no handler outlives its (killed) client
        # and holds up the server's shutdown.
        if jobs.timing.create_answer_delay_s > 0:
            await _client_left_within(request, jobs.timing.create_answer_delay_s)
        return json_response(job)

    async def list_jobs(request: Request) -> Response:
        return json_response(jobs.list_jobs(request.query_params, metadata_filters(request)))

    async def retrieve(request: Request) -> Response:
        return json_response(jobs.retrieve(request.path_params["job_id"]))

    async def cancel(request: Request) -> Response:
        return json_response(jobs.cancel(request.path_params["job_id"]))

    async def list_events(request: Request) -> Response:
        return json_response(jobs.list_events(request.path_params["job_id"], request.query_params))

    async def list_checkpoints(request: Request) -> Response:
        return json_response(jobs.list_checkpoints(request.path_params["job_id"], request.query_params))

    return [
        Route("/v1/fine_tuning/jobs", create, methods=["POST"]),
        Route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}", retrieve, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/fine_tuning/jobs/{job_id}/events", list_events, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints, methods=["GET"]),
    ]
