"""A stable fingerprint of what a request asks the model, for dedup, caching and drift.

Two requests get the same ``input_hash`` when they send the same messages, tools and sampling
settings, whatever the key order, the model they went to, or how the answer is delivered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["IGNORED_KEYS", "input_hash"]

IGNORED_KEYS = frozenset(
    {
        # Which model answers: the same input sent to two models hashes the same, so their
        # answers can be compared (evals, drift, candidate vs current).
        "model",
        # How the answer is delivered, not what is asked.
        "stream",
        "stream_options",
        "background",
        "n",
        "service_tier",
        # Bookkeeping for the caller or the provider.
        "user",
        "metadata",
        "store",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
"""Top-level request keys left out of the hash."""

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def input_hash(request: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical input of a request body.

    The canonical input is the body without ``IGNORED_KEYS``, serialized as compact JSON with
    keys sorted at every level. Left out: ``model``; delivery (``stream``, ``stream_options``,
    ``background``, ``n``: more samples of the same question, ``service_tier``); bookkeeping
    (``user``, ``metadata``, ``store``, ``safety_identifier``, ``prompt_cache_key``,
    ``prompt_cache_retention``). Everything else counts, including sampling settings
    (``temperature``, ``seed``, ``max_tokens``, ``response_format``, ``tools``, ``tool_choice``) and
    context references such as ``previous_response_id``. A top-level whole-number float
    (``temperature: 1.0``) is treated as the integer (``1``), since SDKs serialize either.
    Message content is hashed as sent: ``"hi"`` and ``[{"type": "text", "text": "hi"}]`` differ.
    """
    canonical: dict[Any, Any] = {}
    for key, value in request.items():
        if key in IGNORED_KEYS:
            continue
        if type(value) is float and value.is_integer():
            value = int(value)
        canonical[key] = value
    return hashlib.sha256(orjson.dumps(canonical, option=_OPTIONS, default=_fallback)).hexdigest()


def _fallback(value: Any) -> Any:
    # Hashing must not fail on a Mapping/sequence type orjson does not know (callers may pass any).
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (tuple, list)):
        return list(value)
    return str(value)
