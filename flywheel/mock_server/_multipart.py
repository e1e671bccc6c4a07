"""A minimal ``multipart/form-data`` parser for file uploads.

Starlette's own form parsing needs the ``python-multipart`` package, which the flywheel does not
depend on. Bodies are split on the boundary exactly (file bytes are never re-encoded); part
headers are read with the stdlib ``email`` parser, which handles quoting and RFC 2231 names.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import collapse_rfc2231_value

from ._http import MockAPIError


@dataclass(frozen=True, slots=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or a 400."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise MockAPIError(400, "Expected a multipart/form-data body with a boundary.")
    return boundary.encode("latin-1")


def parse_multipart(content_type: str, body: bytes) -> dict[str, FormPart]:
    """The parts of a ``multipart/form-data`` body by field name (the last one wins)."""
    delimiter = b"\r\n--" + multipart_boundary(content_type)
    sections = (b"\r\n" + body).split(delimiter)
    parts: dict[str, FormPart] = {}
    for section in sections[1:]:
        if section.startswith(b"--"):  # the closing delimiter
            break
        head, separator, data = section.partition(b"\r\n\r\n")
        if not separator:
            raise MockAPIError(400, "Malformed multipart body: a part has no header block.")
        headers = HeaderParser().parsestr(
            head.lstrip(b" \t").removeprefix(b"\r\n").decode("utf-8", "replace")
        )
        raw_name = headers.get_param("name", header="content-disposition")
        name = None if raw_name is None else collapse_rfc2231_value(raw_name)
        if not name:
            raise MockAPIError(400, "Malformed multipart body: a part has no field name.")
        parts[name] = FormPart(
            name=name,
            filename=headers.get_filename(),
            content_type=headers.get("content-type"),
            data=data,
        )
    return parts
