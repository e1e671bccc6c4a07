"""Tags: client defaults, ``with sdk.tags(...)`` context, and per-call ``tags=``.

Precedence is per call > context > client. Keys and values are stored as strings: ``str`` as is,
``bool`` as ``"true"``/``"false"``, numbers via ``str()``. ``None`` removes a tag set at a lower level.
Anything else is dropped with one warning and counted; a bad tag never fails the app's call.

The context lives in a ``ContextVar``, so each thread and each asyncio task sees its own tags.
Per-call tags travel with the request as the private header ``x-flywheel-tags`` (so they survive
retries and lazily sent requests such as ``with_streaming_response``); the client removes that
header in ``_prepare_request``, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

import orjson

from . import _health

__all__ = [
    "TAG_HEADER",
    "coerce_tags",
    "context_tags",
    "merge_tags",
    "per_call_layer",
    "tag_header_value",
    "tag_headers",
    "tags",
]

TAG_HEADER = "x-flywheel-tags"
MAX_KEY_LENGTH = 256

TagLayer = Mapping[str, str | None]
"""A layer of tags: ``None`` values remove the tag from the layers below."""

_EMPTY: TagLayer = MappingProxyType({})
_context: ContextVar[TagLayer] = ContextVar("flywheel_tags", default=_EMPTY)


def _drop(key: object, value: object, why: str) -> None:
    _health.count("tags_dropped")
    _health.warn_once(
        f"tag:{key!r}:{type(value).__name__}",
        "flywheel: tag %r dropped: %s (tags are stored as strings; use str, int, float or bool)",
        key,
        why,
    )


def coerce_tags(raw: Mapping[str, object] | None) -> dict[str, str | None]:
    """Convert user-supplied tags to a layer of ``str`` values (``None`` kept as a removal marker)."""
    if not raw:
        return {}
    if not isinstance(raw, Mapping):
        _drop("<tags>", raw, f"expected a mapping, got {type(raw).__name__}")
        return {}
    layer: dict[str, str | None] = {}
    for key, value in raw.items():
        if isinstance(key, bool) or not isinstance(key, str | int | float):
            _drop(key, value, f"key of type {type(key).__name__}")
            continue
        skey = str(key)
        if not skey or len(skey) > MAX_KEY_LENGTH:
            _drop(key, value, f"key must be 1 to {MAX_KEY_LENGTH} characters")
            continue
        if value is None or isinstance(value, str):
            layer[skey] = value
        elif isinstance(value, bool):
            layer[skey] = "true" if value else "false"
        elif isinstance(value, int | float):
            layer[skey] = str(value)
        else:
            _drop(key, value, f"value of type {type(value).__name__}")
    return layer


def merge_tags(*layers: TagLayer | None) -> dict[str, str]:
    """Merge layers from lowest to highest precedence; ``None`` values remove the key."""
    merged: dict[str, str | None] = {}
    for layer in layers:
        if layer:
            merged.update(layer)
    return {k: v for k, v in merged.items() if v is not None}


def context_tags() -> TagLayer:
    """The tags of the enclosing ``with sdk.tags(...)`` blocks in this thread or task."""
    return _context.get()


@contextmanager
def tags(mapping: Mapping[str, object] | None = None, /, **kwargs: object) -> Iterator[None]:
    """Add tags to every call made inside the block (nested blocks override outer ones).

    ``with sdk.tags(feature="search"):`` or ``with sdk.tags({"feature": "search"}):``.
    """
    layer = coerce_tags({**(mapping or {}), **kwargs})
    outer = _context.get()
    token = _context.set(MappingProxyType({**outer, **layer}) if layer else outer)
    try:
        yield
    finally:
        _context.reset(token)


def per_call_layer(tags: object, extra_headers: object) -> dict[str, str | None]:
    """A call's per-call tags: those already in its ``extra_headers`` (``sdk.tag_headers(...)``, or
    an outer helper call such as ``.stream()``), with ``tags=`` above them, so neither is lost."""
    layer = coerce_tags(tags)  # type: ignore[arg-type]  # coerce_tags reports non-mappings itself
    header = extra_headers.get(TAG_HEADER) if isinstance(extra_headers, Mapping) else None
    if isinstance(header, str):
        layer = {**parse_tag_header(header), **layer}
    return layer


def tag_header_value(raw: object) -> str | None:
    """Serialize per-call ``tags=`` for the private header; ``None`` if nothing is left to send."""
    layer = coerce_tags(raw)  # type: ignore[arg-type]  # coerce_tags reports non-mappings itself
    if not layer:
        return None
    return orjson.dumps(layer).decode()


def tag_headers(mapping: Mapping[str, object] | None = None, /, **kwargs: object) -> dict[str, str]:
    """Per-call tags as ``extra_headers``, for code checked by a type checker.

    ``create(..., tags={"k": "v"})`` works at run time, but ``openai``'s type stubs do not know the
    keyword; ``create(..., extra_headers=sdk.tag_headers(k="v"))`` is the same call, typed. The
    header is removed before the request is sent.
    """
    value = tag_header_value({**(mapping or {}), **kwargs})
    return {TAG_HEADER: value} if value is not None else {}


def parse_tag_header(value: str) -> TagLayer:
    """Inverse of ``tag_header_value``; a malformed header yields no tags."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _EMPTY
    if not isinstance(parsed, dict):
        return _EMPTY
    return {str(k): (v if v is None else str(v)) for k, v in parsed.items()}
