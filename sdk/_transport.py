"""The recording transport: wraps the client's own transport and tees the bytes the caller reads.

This is the only module that touches ``httpx`` / ``httpx2``. It never imports either: it finds the
family a client belongs to from the client's class and subclasses that family's base classes on
first use, so ``openai`` 3.x (``httpx2``) and 2.x (``httpx``) clients are wrapped alike.

Invariant: the caller gets the same response object, the same bytes and the same exceptions as
without recording. On the caller's path this module only timestamps, keeps references to the
chunks already read, and enqueues an ``Exchange``; parsing and I/O happen in the background writer.
Any failure inside recording is caught, counted and logged, never raised.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from functools import cache
from types import ModuleType
from typing import Any

from . import _health
from ._exchange import Exchange, RecordOptions
from ._writer import get_recorder

__all__ = ["EXTENSION", "http_family", "install"]

EXTENSION = "flywheel"
"""``request.extensions`` key carrying ``(RecordOptions, tags)`` from the client to the transport."""

_JSON_TYPES = ("application/json", "text/event-stream", "text/plain")


def http_family(http_client: object) -> ModuleType | None:
    """The ``httpx`` or ``httpx2`` module that ``http_client``'s class comes from."""
    for klass in type(http_client).__mro__:
        root = klass.__module__.partition(".")[0]
        if root in ("httpx", "httpx2"):
            return sys.modules[root]
    return None


def install(http_client: Any) -> bool:
    """Wrap the transports of an ``httpx``/``httpx2`` client in place (idempotent)."""
    family = http_client and http_family(http_client)
    if family is None:
        _health.warn_once("transport:unknown", "flywheel: unknown http client %r; not recording", http_client)
        return False
    sync_cls, async_cls = _transport_classes(family)
    recording = (sync_cls, async_cls)

    def wrapped(transport: Any) -> Any:
        if transport is None or isinstance(transport, recording):
            return transport
        if hasattr(transport, "handle_async_request"):
            return async_cls(transport)
        return sync_cls(transport)

    http_client._transport = wrapped(http_client._transport)
    mounts = getattr(http_client, "_mounts", None)
    if mounts:
        for pattern, transport in list(mounts.items()):
            mounts[pattern] = wrapped(transport)
    return True


def _start(request: Any) -> Exchange | None:
    """Capture the request side. Returns ``None`` (record nothing) if that fails."""
    try:
        headers = request.headers
        content_type = headers.get("content-type", "")
        body: bytes | None = None
        size: int | None = None
        if content_type.startswith("application/json"):
            body = request.content  # already bytes: openai serializes JSON bodies up front
        else:
            length = headers.get("content-length")
            size = int(length) if length else None
        carried = request.extensions.get(EXTENSION)
        options, tags = carried if carried is not None else (None, {})
        retry = headers.get("x-stainless-retry-count")
        return Exchange(
            started_at=time.time(),
            method=request.method,
            url=request.url,  # immutable; turned into text by the writer
            request_content_type=content_type,
            request_body=body,
            request_size=size,
            attempt=int(retry) if retry and retry.isdigit() else 0,
            idempotency_key=headers.get("idempotency-key"),
            tags=tags,
            options=options,
        )
    except Exception as exc:
        _health.report_error("transport.request", exc)
        return None


def _submit(exchange: Exchange) -> None:
    try:
        options: RecordOptions | None = exchange.options
        get_recorder(options.database_url if options else None).submit(exchange)
    except Exception as exc:
        _health.report_error("transport.submit", exc)


def _failed(exchange: Exchange, started: float, exc: BaseException) -> None:
    """No response arrived (timeout, connection refused, ...): record the failure."""
    try:
        exchange.latency_ms = (time.perf_counter() - started) * 1000.0
        exchange.error = f"{type(exc).__name__}: {exc}"
        exchange.complete = False
        _submit(exchange)
    except Exception as inner:
        _health.report_error("transport.failure", inner)


def _responded(exchange: Exchange, response: Any) -> bool:
    """Fill in the response head; True if the body should be kept (JSON or SSE)."""
    headers = response.headers
    content_type = headers.get("content-type", "")
    exchange.status_code = response.status_code
    exchange.response_content_type = content_type
    exchange.response_content_encoding = headers.get("content-encoding")
    exchange.request_id = headers.get("x-request-id")
    return content_type.startswith(_JSON_TYPES) or not content_type


def _reads_lazily(request: Any) -> bool:
    """``with_streaming_response``: the app, not ``openai``, reads (and closes) the body."""
    return bool(request.headers.get("x-stainless-raw-response") == "stream")


class _Tee:
    """State shared by the sync and async tee streams (kept apart from the stream object so that a
    finalizer can record a stream the caller abandoned without closing it)."""

    __slots__ = ("chunks", "done", "exchange", "exhausted", "keep", "lazy", "started", "streamed")

    def __init__(self, exchange: Exchange, started: float, keep: bool, lazy: bool) -> None:
        self.exchange = exchange
        self.started = started
        self.keep = keep
        content_type = exchange.response_content_type or ""
        self.streamed = content_type.startswith("text/event-stream")
        # Only a body the app reads itself (a stream, or ``with_streaming_response``) can be left
        # unread and unclosed; ``openai`` reads every other body before returning. Only those
        # need a finalizer to be recorded when abandoned.
        self.lazy = lazy or self.streamed
        self.chunks: list[bytes] = []
        self.exhausted = False
        self.done = False

    def first_chunk(self) -> None:
        if self.streamed:
            self.exchange.ttft_ms = (time.perf_counter() - self.started) * 1000.0

    def error(self, exc: BaseException) -> None:
        self.exchange.error = f"{type(exc).__name__}: {exc}"

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            exchange = self.exchange
            exchange.latency_ms = (time.perf_counter() - self.started) * 1000.0
            exchange.complete = self.exhausted
            if self.keep:
                exchange.response_chunks = self.chunks
                exchange.response_size = sum(map(len, self.chunks))
            _submit(exchange)
        except Exception as exc:
            _health.report_error("transport.finish", exc)


def _finish_abandoned(tee: _Tee) -> None:
    if not tee.done:
        _health.count("streams_abandoned")
        tee.finish()


@cache
def _transport_classes(family: ModuleType) -> tuple[type, type]:
    """Build the recording transport classes for one HTTP family (``httpx`` or ``httpx2``)."""

    class TeeStream(family.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, tee: _Tee) -> None:
            self._inner = inner
            self._tee = tee
            self._finalizer = weakref.finalize(self, _finish_abandoned, tee) if tee.lazy else None

        def __iter__(self) -> Iterator[bytes]:
            tee = self._tee
            chunks = tee.chunks
            keep = tee.keep
            first = True
            try:
                for chunk in self._inner:
                    if first:
                        first = False
                        tee.first_chunk()
                    if keep:
                        chunks.append(chunk)
                    else:
                        tee.exchange.response_size += len(chunk)
                    yield chunk
            except GeneratorExit:  # the caller stopped reading: incomplete, not an error
                raise
            except BaseException as exc:
                tee.error(exc)
                raise
            tee.exhausted = True

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                if self._finalizer is not None:
                    self._finalizer.detach()
                self._tee.finish()

    class AsyncTeeStream(family.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, tee: _Tee) -> None:
            self._inner = inner
            self._tee = tee
            self._finalizer = weakref.finalize(self, _finish_abandoned, tee) if tee.lazy else None

        async def __aiter__(self) -> AsyncIterator[bytes]:
            tee = self._tee
            chunks = tee.chunks
            keep = tee.keep
            first = True
            try:
                async for chunk in self._inner:
                    if first:
                        first = False
                        tee.first_chunk()
                    if keep:
                        chunks.append(chunk)
                    else:
                        tee.exchange.response_size += len(chunk)
                    yield chunk
            except GeneratorExit:  # the caller stopped reading: incomplete, not an error
                raise
            except BaseException as exc:
                tee.error(exc)
                raise
            tee.exhausted = True

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                if self._finalizer is not None:
                    self._finalizer.detach()
                self._tee.finish()

    class RecordingTransport(family.BaseTransport):  # type: ignore[name-defined,misc]
        """Wraps a sync transport; records every exchange that goes through it."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def handle_request(self, request: Any) -> Any:
            exchange = _start(request)
            started = time.perf_counter()
            try:
                response = self._inner.handle_request(request)
            except BaseException as exc:
                if exchange is not None:
                    _failed(exchange, started, exc)
                raise
            if exchange is not None:
                try:
                    keep = _responded(exchange, response)
                    tee = _Tee(exchange, started, keep, _reads_lazily(request))
                    response.stream = TeeStream(response.stream, tee)
                except Exception as exc:
                    _health.report_error("transport.response", exc)
            return response

        def close(self) -> None:
            self._inner.close()

        def __getattr__(self, name: str) -> Any:
            # Transport-specific attributes (e.g. ``_pool``) stay reachable through the wrapper.
            return getattr(self._inner, name)

    class AsyncRecordingTransport(family.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """Wraps an async transport; records every exchange that goes through it."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            exchange = _start(request)
            started = time.perf_counter()
            try:
                response = await self._inner.handle_async_request(request)
            except BaseException as exc:
                if exchange is not None:
                    _failed(exchange, started, exc)
                raise
            if exchange is not None:
                try:
                    keep = _responded(exchange, response)
                    tee = _Tee(exchange, started, keep, _reads_lazily(request))
                    response.stream = AsyncTeeStream(response.stream, tee)
                except Exception as exc:
                    _health.report_error("transport.response", exc)
            return response

        async def aclose(self) -> None:
            await self._inner.aclose()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    return RecordingTransport, AsyncRecordingTransport
