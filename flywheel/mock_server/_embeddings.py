"""``POST /v1/embeddings``: deterministic unit vectors derived from a hash of each input.

Vectors are float32 (64 dimensions unless ``dimensions`` says otherwise), so the ``float`` and
``base64`` encodings (little-endian float32 bytes, what the openai client requests by default)
decode to exactly the same numbers. Equal inputs always get equal vectors.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import sys
from array import array
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ._http import MockAPIError, json_response, optional_int, read_json_object, require
from ._text import estimate_tokens

DEFAULT_DIMENSIONS = 64
_MAX_DIMENSIONS = 8192


def embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """Each input (string, strings, token array, token arrays) as a hashable key and its tokens."""
    if isinstance(value, str):
        return [(value, estimate_tokens(value))]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [(v, estimate_tokens(v)) for v in value]
        if all(isinstance(t, int) for t in value):
            return [_tokens_key(value)]
        if all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value):
            return [_tokens_key(v) for v in value]
    raise MockAPIError(400, "Invalid 'input': expected a string, strings or token arrays.", param="input")


def _tokens_key(tokens: list[int]) -> tuple[str, int]:
    return "\x00tokens:" + ",".join(map(str, tokens)), len(tokens)


@functools.lru_cache(maxsize=4096)
def embedding_vector(text: str, dimensions: int) -> array[float]:
    """A unit-length float32 vector, a pure function of ``text`` and ``dimensions``."""
    raw = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(2 * dimensions)
    values = [int.from_bytes(raw[i : i + 2], "little", signed=True) / 32768 for i in range(0, len(raw), 2)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return array("f", (v / norm for v in values))


@functools.lru_cache(maxsize=4096)
def _encoded(text: str, dimensions: int, as_base64: bool) -> list[float] | str:
    vector = embedding_vector(text, dimensions)
    if not as_base64:
        return vector.tolist()
    if sys.byteorder == "big":
        vector = array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode("ascii")


async def create_embedding(request: Request) -> Response:
    body = await read_json_object(request)
    model = require(body, "model", str)
    inputs = embedding_inputs(require(body, "input", (str, list)))
    dimensions = optional_int(body, "dimensions") or DEFAULT_DIMENSIONS
    if dimensions > _MAX_DIMENSIONS:
        raise MockAPIError(400, f"Invalid 'dimensions': at most {_MAX_DIMENSIONS}.", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise MockAPIError(
            400, "Invalid 'encoding_format': expected 'float' or 'base64'.", param="encoding_format"
        )
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(key, dimensions, encoding == "base64")}
        for i, (key, _) in enumerate(inputs)
    ]
    tokens = sum(count for _, count in inputs)
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
