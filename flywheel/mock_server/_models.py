"""``GET /v1/models`` and ``GET /v1/models/{model}``: a fixed catalogue.

The mock serves any model name on the generating endpoints, so retrieving an id that is not in
the catalogue also succeeds (``owned_by: "user"``, as for a fine-tuned model).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ._http import json_response

_CREATED = 1_700_000_000
CATALOGUE = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-3.5-turbo-instruct",
    "o3-mini",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "tts-1",
    "gpt-4o-mini-tts",
)


def model_object(model_id: str) -> dict[str, Any]:
    owner = "system" if model_id in CATALOGUE else "user"
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": owner}


_LISTING = {"object": "list", "data": [model_object(m) for m in CATALOGUE]}


async def list_models(request: Request) -> Response:
    return json_response(_LISTING)


async def retrieve_model(request: Request) -> Response:
    return json_response(model_object(request.path_params["model"]))
