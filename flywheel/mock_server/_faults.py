"""Fault injection and the headers every response carries, as one pure ASGI middleware.

Per request (headers the caller sets, e.g. through ``extra_headers=`` in the openai client):

- ``x-mock-latency-ms: N``: wait N ms before answering (overrides the server-wide latency).
- ``x-mock-status: S``: answer with status S (>= 400) and an OpenAI error body.
- ``x-mock-fail-attempts: N``: fail (500, or ``x-mock-status``) while the client's
  ``x-stainless-retry-count`` is below N, then succeed. Stateless, so tests can share a server.

Server-wide: ``latency_ms`` before every request and ``error_rate``, a seeded random share of
500s. Injected 408/409/429/5xx answers carry ``retry-after-ms: 10`` so client retries are quick.
Every response, injected or not, gets ``x-request-id`` and ``openai-processing-ms``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._http import MockAPIError, error_body, header_number

_RETRY_AFTER_MS = b"10"
_log = logging.getLogger("flywheel.mock_server")


class FaultInjection:
    """ASGI middleware: latency, injected errors, request ids and processing time."""

    def __init__(self, app: ASGIApp, *, latency_ms: float, error_rate: float, seed: int) -> None:
        self.app = app
        self.latency_s = latency_ms / 1000
        self.error_rate = error_rate
        self._rng = random.Random(seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = b"req_" + os.urandom(16).hex().encode()
        response_started = False

        async def send_with_ids(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                elapsed_ms = int((time.perf_counter() - started) * 1000)
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id),
                    (b"openai-processing-ms", str(elapsed_ms).encode()),
                ]
            await send(message)

        try:
            status = await self._inject(scope)
        except MockAPIError as exc:  # a malformed x-mock-* header
            await _drain(receive)
            await exc.to_response()(scope, receive, send_with_ids)
            return
        if status is None:
            try:
                await self.app(scope, receive, send_with_ids)
            except Exception:
                if response_started:
                    raise
                # A bug in the mock: log it, but still answer in OpenAI's shape with a request id.
                _log.exception("mock server error on %s %s", scope["method"], scope["path"])
                await MockAPIError(500, "The mock server had an error.").to_response()(
                    scope, receive, send_with_ids
                )
            return
        await _drain(receive)
        headers = [(b"content-type", b"application/json")]
        if status in (408, 409, 429) or status >= 500:
            headers.append((b"retry-after-ms", _RETRY_AFTER_MS))
        message = f"Mock error: injected status {status}."
        await send_with_ids({"type": "http.response.start", "status": status, "headers": headers})
        await send_with_ids({"type": "http.response.body", "body": error_body(status, message)})

    async def _inject(self, scope: Scope) -> int | None:
        """Sleep as configured; return the status to fail with, or ``None`` to serve normally."""
        mock: dict[bytes, str] = {}
        for key, value in scope["headers"]:
            if key.startswith(b"x-mock-") or key == b"x-stainless-retry-count":
                mock[key] = value.decode("latin-1")
        latency_s = self.latency_s
        if b"x-mock-latency-ms" in mock:
            latency_s = header_number("x-mock-latency-ms", mock[b"x-mock-latency-ms"]) / 1000
        if latency_s:
            await asyncio.sleep(latency_s)

        status: int | None = None
        if b"x-mock-status" in mock:
            status = int(header_number("x-mock-status", mock[b"x-mock-status"]))
            if not 400 <= status <= 599:
                raise MockAPIError(400, f"Header x-mock-status must be 400-599, got {status}.")
        if b"x-mock-fail-attempts" in mock:
            attempts = header_number("x-mock-fail-attempts", mock[b"x-mock-fail-attempts"])
            retry_count = header_number("x-stainless-retry-count", mock.get(b"x-stainless-retry-count", "0"))
            return (status or 500) if retry_count < attempts else None
        if status is not None:
            return status
        if self.error_rate and self._rng.random() < self.error_rate:
            return 500
        return None


async def _drain(receive: Receive) -> None:
    """Read the unused request body so the keep-alive connection stays usable."""
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False) and message["type"] == "http.request"
