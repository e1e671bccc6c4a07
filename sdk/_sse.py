"""Server-sent events decoding for recorded stream bodies.

``iter_sse_events`` turns the body chunks exactly as they crossed the wire (split anywhere, even
inside a ``\\r\\n`` pair or a multi-byte character) into ``(event, data)`` pairs, following the
WHATWG event-stream rules: CR, LF and CRLF all end a line; ``data:`` lines of one event are joined
with ``\\n``; lines starting with ``:`` are comments; one leading space after the colon is dropped;
a blank line dispatches the event. ``id`` and ``retry`` are accepted and ignored.

Like the ``openai`` client, decoding stops at the ``[DONE]`` sentinel (which is not yielded), and an
event still pending when the body ends (no closing blank line) is discarded: the app never saw it.
Invariant: never raises on malformed input; invalid UTF-8 is replaced, not rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["iter_sse_events"]

_BOM = b"\xef\xbb\xbf"


def iter_sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[str | None, str]]:
    """Yield ``(event name or None, data)`` for each event dispatched by the byte stream.

    Incremental: an event is yielded as soon as the chunk holding its closing blank line has been
    consumed. Callers holding the whole body may pass it as one chunk, which is faster.
    """
    event: str | None = None
    data: list[str] = []
    for lines in _line_blocks(chunks):
        for line in lines:
            if not line:
                if data:
                    joined = data[0] if len(data) == 1 else "\n".join(data)
                    if joined.startswith("[DONE]"):
                        return
                    yield event, joined
                    data = []
                event = None
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif line[0] != ":":
                field, _, value = line.partition(":")
                if field == "event":
                    event = value[1:] if value.startswith(" ") else value
                elif field == "data":  # a bare "data" line: an empty data line
                    data.append("")


def _line_blocks(chunks: Iterable[bytes]) -> Iterator[list[str]]:
    """Yield the complete lines available after each chunk, without their terminators."""
    pending = b""  # bytes after the last complete line
    first = True
    for chunk in chunks:
        if not chunk:
            continue
        buf = pending + chunk if pending else chunk
        if first:
            first = False
            if buf.startswith(_BOM):
                buf = buf[3:]
        held = b""
        if b"\r" in buf:
            # A trailing CR may be the first half of a CRLF split across chunks: hold it back.
            if buf.endswith(b"\r"):
                held = b"\r"
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = buf.rfind(b"\n")
        if cut < 0:
            pending = buf + held
            continue
        if cut == len(buf) - 1:
            pending = held
            buf = buf[:-1]
        else:
            pending = buf[cut + 1 :] + held
            buf = buf[:cut]
        # Only whole lines are decoded, so a multi-byte character is never split here.
        yield buf.decode("utf-8", "replace").split("\n")
    if pending.endswith(b"\r"):
        # The body ended on a CR: it terminates the last line after all.
        yield pending[:-1].decode("utf-8", "replace").split("\n")
