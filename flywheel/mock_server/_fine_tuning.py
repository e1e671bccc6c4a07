"""``/v1/fine_tuning/jobs``: fine-tuning jobs that progress one state per retrieve.

A job starts ``validating_files``; each ``GET /v1/fine_tuning/jobs/{id}`` moves it one step
(``queued``, ``running``, then ``succeeded`` with a ``fine_tuned_model`` and a results file), so
polling loops finish quickly and tests are deterministic without clocks. A training file that is
not JSONL of objects with a ``messages`` array makes the job ``failed`` at validation, like
upstream. Jobs live in memory next to the app's ``FileStore``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._files import FileStore
from ._http import MockAPIError, json_response, read_json_object, require

_NEXT_STATUS = {"validating_files": "queued", "queued": "running", "running": "succeeded"}
_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def training_file_problem(data: bytes) -> str | None:
    """Why ``data`` is not valid chat fine-tuning JSONL, or ``None`` if it is."""
    lines = [line for line in data.splitlines() if line.strip()]
    if not lines:
        return "The training file is empty."
    for number, line in enumerate(lines, start=1):
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError:
            return f"Line {number} is not valid JSON."
        if not isinstance(example, dict) or not isinstance(example.get("messages"), list):
            return f"Line {number} has no 'messages' array."
    return None


class FineTuningJobs:
    """The jobs of one app and their events."""

    def __init__(self, files: FileStore) -> None:
        self._files = files
        self._jobs: dict[str, dict[str, Any]] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        model = require(body, "model", str)
        training_file = require(body, "training_file", str)
        for field in ("training_file", "validation_file"):
            if body.get(field) is not None:
                try:
                    self._files.get(body[field])
                except MockAPIError:
                    raise MockAPIError(
                        400, f"Invalid file '{body[field]}': no such file.", param=field, code="invalid_file"
                    ) from None
        job_id = "ftjob-" + os.urandom(12).hex()
        hyperparameters = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
        hyperparameters.update(body.get("hyperparameters") or {})
        job = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "hyperparameters": hyperparameters,
            "model": model,
            "organization_id": "org-mock",
            "result_files": [],
            "seed": body.get("seed") if isinstance(body.get("seed"), int) else 42,
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": training_file,
            "validation_file": body.get("validation_file"),
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "method": body.get("method")
            or {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
            "user_provided_suffix": body.get("suffix"),
        }
        self._jobs[job_id] = job
        self._events[job_id] = []
        self._event(job_id, f"Validating training file: {training_file}")
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise MockAPIError(404, f"Fine-tuning job {job_id} not found.", param="id") from None

    def advance(self, job_id: str) -> dict[str, Any]:
        """Move the job one state forward (the mock's notion of time passing)."""
        job = self.get(job_id)
        status = job["status"]
        if status in _TERMINAL:
            return job
        if status == "validating_files":
            problem = training_file_problem(self._files.get(job["training_file"]).data)
            if problem is not None:
                return self._finish(job, "failed", error=problem)
            self._event(job_id, "Files validated, moving job to queued state")
        elif status == "queued":
            self._event(job_id, "Fine-tuning job started")
        elif status == "running":
            return self._succeed(job)
        job["status"] = _NEXT_STATUS[status]
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] in _TERMINAL:
            raise MockAPIError(400, f"Job {job_id} has already {job['status']}.", param="id")
        return self._finish(job, "cancelled")

    def list_jobs(self) -> dict[str, Any]:
        return _newest_first(list(self._jobs.values()))

    def list_events(self, job_id: str) -> dict[str, Any]:
        return _newest_first(list(self._events[self.get(job_id)["id"]]))

    def _succeed(self, job: dict[str, Any]) -> dict[str, Any]:
        data = self._files.get(job["training_file"]).data
        suffix = job["user_provided_suffix"] or ""
        job["fine_tuned_model"] = f"ft:{job['model']}:flywheel-mock:{suffix}:{job['id'][-8:]}"
        job["trained_tokens"] = (len(data) + 3) // 4 * 3
        results = self._files.add("step_metrics.csv", "fine-tune-results", b"step,train_loss\n1,1.0\n2,0.5\n")
        job["result_files"] = [results.id]
        self._event(job["id"], f"New fine-tuned model created: {job['fine_tuned_model']}")
        return self._finish(job, "succeeded")

    def _finish(self, job: dict[str, Any], status: str, error: str | None = None) -> dict[str, Any]:
        job["status"] = status
        job["finished_at"] = int(time.time())
        if error is not None:
            job["error"] = {"code": "invalid_training_file", "message": error, "param": "training_file"}
            self._event(job["id"], f"Training file validation failed: {error}", level="error")
        else:
            done = "successfully completed" if status == "succeeded" else status
            self._event(job["id"], f"The job has {done}")
        return job

    def _event(self, job_id: str, message: str, level: str = "info") -> None:
        self._events[job_id].append(
            {
                "id": "ftevent-" + os.urandom(12).hex(),
                "object": "fine_tuning.job.event",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": {},
                "type": "message",
            }
        )


def _newest_first(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items[::-1], "has_more": False}


def fine_tuning_routes(jobs: FineTuningJobs) -> list[Route]:
    async def create(request: Request) -> Response:
        return json_response(jobs.create(await read_json_object(request)))

    async def list_jobs(request: Request) -> Response:
        return json_response(jobs.list_jobs())

    async def retrieve(request: Request) -> Response:
        return json_response(jobs.advance(request.path_params["job_id"]))

    async def cancel(request: Request) -> Response:
        return json_response(jobs.cancel(request.path_params["job_id"]))

    async def list_events(request: Request) -> Response:
        return json_response(jobs.list_events(request.path_params["job_id"]))

    return [
        Route("/v1/fine_tuning/jobs", create, methods=["POST"]),
        Route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}", retrieve, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/fine_tuning/jobs/{job_id}/events", list_events, methods=["GET"]),
    ]
