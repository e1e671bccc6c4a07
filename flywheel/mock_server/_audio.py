"""``POST /v1/audio/speech``: deterministic bytes standing in for synthesised audio.

Not real audio: a format-appropriate magic prefix followed by bytes derived from the input
text, about 64 bytes per 4 characters, so longer input gives a longer body.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

from ._http import MockAPIError, read_json_object, require

_FORMATS: dict[str, tuple[str, bytes]] = {
    "mp3": ("audio/mpeg", b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64"),
    "opus": ("audio/ogg", b"OggS\x00\x02"),
    "aac": ("audio/aac", b"\xff\xf1\x50\x80"),
    "flac": ("audio/flac", b"fLaC"),
    "wav": ("audio/wav", b"RIFF\x00\x00\x00\x00WAVEfmt "),
    "pcm": ("audio/pcm", b""),
}


def speech_bytes(text: str, voice: str, response_format: str = "mp3") -> bytes:
    """The mock audio for ``text``: a pure function of its arguments."""
    _, magic = _FORMATS[response_format]
    size = 64 * max(1, (len(text) + 3) // 4)
    return magic + hashlib.shake_256(f"{voice}\x1f{text}".encode()).digest(size)


async def create_speech(request: Request) -> Response:
    body = await read_json_object(request)
    require(body, "model", str)
    text = require(body, "input", str)
    voice = require(body, "voice", (str, dict))
    response_format = body.get("response_format") or "mp3"
    if response_format not in _FORMATS:
        raise MockAPIError(400, f"Invalid 'response_format': {response_format!r}.", param="response_format")
    voice_key = voice if isinstance(voice, str) else str(voice.get("id", ""))
    media_type, _ = _FORMATS[response_format]
    return Response(speech_bytes(text, voice_key, response_format), media_type=media_type)
