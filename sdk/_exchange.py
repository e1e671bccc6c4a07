"""What the recording transport captures on the caller's path: raw, unparsed, cheap to build.

An ``Exchange`` is filled in by the transport (``sdk/_transport.py``) while the app's request and
response flow, then handed to the background writer. Everything expensive (JSON parsing, stream
assembly, redaction, cost) happens later, off the caller's thread, in ``build_record``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Exchange", "RecordOptions"]


@dataclass(slots=True, frozen=True)
class RecordOptions:
    """Per-client recording options carried on each request (survive ``copy()``/``with_options()``)."""

    tags: Mapping[str, str | None] = field(default_factory=dict)
    """Client-level tags; ``None`` values remove a tag (see ``_tags.merge_tags``)."""
    database_url: str | None = None
    redact: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None


@dataclass(slots=True)
class Exchange:
    """One HTTP request/response pair as it crossed the wire."""

    started_at: float
    """Wall-clock time (``time.time()``) when the request was handed to the transport."""
    method: str
    url: object
    """Full request URL, query included: an ``httpx``/``httpx2`` ``URL`` (``str()`` gives the text)."""
    request_content_type: str
    request_body: bytes | None
    """Body bytes for JSON requests; ``None`` for binary/multipart bodies (see ``request_size``)."""
    request_size: int | None = None
    attempt: int = 0
    idempotency_key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    options: RecordOptions | None = None

    status_code: int | None = None
    response_content_type: str | None = None
    response_content_encoding: str | None = None
    """``content-encoding`` of the body: the chunks are teed before decompression (gzip, br, ...)."""
    request_id: str | None = None
    response_chunks: list[bytes] | None = None
    """Body chunks as read by the caller; ``None`` for binary bodies (see ``response_size``)."""
    response_size: int = 0
    error: str | None = None
    """Client-side failure (``TimeoutException: ...``) when no response arrived."""
    complete: bool = True
    """False when the caller closed or abandoned the body before the end."""
    latency_ms: float | None = None
    ttft_ms: float | None = None
    """Milliseconds from sending to the first body chunk of a streamed (SSE) response."""
