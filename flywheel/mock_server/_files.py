"""``/v1/files``: upload, list, retrieve, download and delete, in memory per app instance.

Each ``create_app()`` gets its own ``FileStore``; nothing touches the disk and everything is
gone when the server stops.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._http import MockAPIError, json_response
from ._multipart import parse_multipart

UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    created_at: int
    data: bytes

    def to_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """The uploaded files of one app, in insertion order."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}

    def add(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile("file-" + os.urandom(12).hex(), filename, purpose, int(time.time()), data)
        self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile:
        try:
            return self._files[file_id]
        except KeyError:
            raise MockAPIError(404, f"No such File object: {file_id}", param="id") from None

    def delete(self, file_id: str) -> None:
        self.get(file_id)
        del self._files[file_id]

    def listing(self, query: Mapping[str, str]) -> dict[str, Any]:
        """A cursor page like upstream's: ``purpose``, ``order`` (default desc), ``after``, ``limit``."""
        files = [f for f in self._files.values() if query.get("purpose") in (None, f.purpose)]
        if query.get("order", "desc") == "desc":
            files.reverse()
        after = query.get("after")
        if after is not None:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        try:
            limit = int(query.get("limit", "10000"))
        except ValueError:
            raise MockAPIError(400, "Invalid 'limit': expected an integer.", param="limit") from None
        page = files[:limit]
        return {
            "object": "list",
            "data": [f.to_object() for f in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(files) > len(page),
        }


def file_routes(store: FileStore) -> list[Route]:
    async def upload(request: Request) -> Response:
        parts = parse_multipart(request.headers.get("content-type", ""), await request.body())
        for field in ("file", "purpose"):
            if field not in parts:
                raise MockAPIError(
                    400,
                    f"Missing required parameter: '{field}'.",
                    param=field,
                    code="missing_required_parameter",
                )
        purpose = parts["purpose"].data.decode("utf-8", "replace")
        if purpose not in UPLOAD_PURPOSES:
            raise MockAPIError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        upload = parts["file"]
        return json_response(store.add(upload.filename or "upload", purpose, upload.data).to_object())

    async def list_files(request: Request) -> Response:
        return json_response(store.listing(request.query_params))

    async def retrieve(request: Request) -> Response:
        return json_response(store.get(request.path_params["file_id"]).to_object())

    async def content(request: Request) -> Response:
        data = store.get(request.path_params["file_id"]).data
        return Response(data, media_type="application/octet-stream")

    async def delete(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        store.delete(file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
        Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", content, methods=["GET"]),
    ]
