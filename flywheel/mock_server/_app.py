"""``create_app``: the starlette application that routes ``/v1`` to the endpoint modules."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._audio import create_speech
from ._chat import chat_completion_endpoint
from ._completions import create_completion
from ._embeddings import create_embedding
from ._faults import FaultInjection
from ._files import FileStore, file_routes
from ._fine_tune_timeline import FineTuneTiming
from ._fine_tuning import FineTuningJobs, fine_tuning_routes
from ._http import MockAPIError
from ._models import list_models, retrieve_model
from ._responses import create_response


def create_app(
    latency_ms: float = 0,
    error_rate: float = 0.0,
    seed: int = 0,
    *,
    fine_tune: FineTuneTiming | None = None,
    clock: Callable[[], float] | None = None,
) -> Starlette:
    """A fresh mock OpenAI API (own file and job stores).

    ``latency_ms`` delays every request; ``error_rate`` (0..1) answers that share of requests
    with a 500, drawn from a ``random.Random(seed)`` so a run is reproducible. ``fine_tune`` sets
    how long fine-tuning jobs spend in each state (default ``FineTuneTiming()``); ``clock``
    (unix seconds, default ``time.time``) is the time jobs move on, so a test can set it by hand.
    """
    if latency_ms < 0:
        raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be between 0 and 1, got {error_rate}")
    files = FileStore()
    jobs = FineTuningJobs(files, fine_tune, clock or time.time)
    chat = chat_completion_endpoint(jobs.examples_for_model)
    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/completions", create_completion, methods=["POST"]),
        Route("/v1/embeddings", create_embedding, methods=["POST"]),
        Route("/v1/audio/speech", create_speech, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        # Azure OpenAI's deployment-scoped paths (``AzureOpenAI(azure_endpoint=..., azure_deployment=...)``).
        Route("/openai/deployments/{deployment}/chat/completions", chat, methods=["POST"]),
        Route("/openai/deployments/{deployment}/completions", create_completion, methods=["POST"]),
        Route("/openai/deployments/{deployment}/embeddings", create_embedding, methods=["POST"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        *file_routes(files),
        *fine_tuning_routes(jobs),
    ]
    faults = Middleware(FaultInjection, latency_ms=latency_ms, error_rate=error_rate, seed=seed)
    return Starlette(
        routes=routes,
        middleware=[faults],
        exception_handlers={MockAPIError: _api_error, 404: _invalid_url, 405: _invalid_url},
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MockAPIError)
    return exc.to_response()


async def _invalid_url(request: Request, exc: Exception) -> Response:
    # Upstream answers unknown paths and wrong methods alike with 404 "Invalid URL".
    return MockAPIError(404, f"Invalid URL ({request.method} {request.url.path})").to_response()
