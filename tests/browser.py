"""Open a local HTML file in real headless Chromium and report what a reader would get.

``render_in_chromium(path)`` returns the DOM after the page's scripts ran, every console error
(``console.error``, uncaught exceptions, browser-side errors such as Content-Security-Policy
violations, and any ``alert`` dialog, which is dismissed) and every URL the page asked for (a
request the CSP then blocks included). ``dom_numbers`` reads the machine-checkable numbers
(``data-key``/``data-model``/``data-value``) out of a DOM, and ``report_numbers`` lists the numbers
of a report object in the same shape, so a test can compare an HTML report with its ``--json``.

Why the DevTools protocol and not ``--dump-dom --enable-logging=stderr``: with this Chromium (156)
the stderr log prints every console message as ``INFO:CONSOLE`` whatever its level, so an error
cannot be told from a ``console.log``, and nothing said after the dump is seen. Through
``--remote-debugging-pipe`` (the protocol's JSON messages, NUL-separated, on fds 3 and 4: stdlib
only, no websocket client) each message comes with its level, and we wait for the load event and a
short settle time before reading the DOM.

Each run gets its own ``--user-data-dir`` in a temporary directory. Chromium missing is a test
failure under ``CI=true`` (``.ci/run`` installs it) and a skip elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--remote-debugging-pipe",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

Number = int | float
NumberKey = tuple[str | None, str]


def chromium_binary() -> str:
    """The Chromium to run; fails the test under ``CI=true`` when there is none, skips it elsewhere."""
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if found is None:
        message = f"Chromium not found at {CHROMIUM} (Debian package `chromium`; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class RenderedPage:
    """What Chromium made of a page: its DOM, its console errors, the URLs it asked for."""

    dom: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    evaluated: list[Any] = field(default_factory=list)
    """The values of the ``evaluate`` expressions, in order, taken before the DOM."""


class _DevToolsPipe:
    """A blocking client for the DevTools protocol over Chromium's debugging pipe."""

    def __init__(self, to_browser: int, from_browser: int, stderr_path: Path) -> None:
        self._out, self._in, self._stderr_path = to_browser, from_browser, stderr_path
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _failure(self, what: str) -> RuntimeError:
        tail = self._stderr_path.read_text(errors="replace")[-2000:] if self._stderr_path.exists() else ""
        return RuntimeError(f"Chromium: {what}; its stderr ends with:\n{tail}")

    def send(self, method: str, params: Mapping[str, Any] | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": dict(params or {})}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        return self._next_id

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """The next message, or ``None`` when none came before ``deadline`` (a monotonic time)."""
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise self._failure("the debugging pipe closed")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        if parsed.get("method") == "Page.javascriptDialogOpening":
            # An alert() would block the page until answered; dismiss it (console_errors reports it).
            self.send("Page.handleJavaScriptDialog", {"accept": False}, parsed.get("sessionId"))
        return parsed

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Send a command and wait for its reply, keeping the events that arrive meanwhile."""
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(deadline)
            if message is None:
                raise self._failure(f"no reply to {method} within {timeout} s")
            if message.get("id") != wanted:
                self.events.append(message)
                continue
            if "error" in message:
                raise self._failure(f"{method} failed: {message['error']}")
            result: dict[str, Any] = message.get("result", {})
            return result

    def wait_for(self, method: str, deadline: float) -> None:
        while not any(event.get("method") == method for event in self.events):
            message = self.receive(deadline)
            if message is None:
                raise self._failure(f"no {method} before the deadline")
            self.events.append(message)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (message := self.receive(deadline)) is not None:
            self.events.append(message)


def _remote_object_text(value: Mapping[str, Any]) -> str:
    return str(value.get("value", value.get("description", value.get("type", ""))))


def console_errors(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """The error-level messages among DevTools events, as one line each."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                "console.error: " + " ".join(_remote_object_text(a) for a in params.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception") or {}
            errors.append("uncaught: " + str(exception.get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".rstrip())
        elif method == "Page.javascriptDialogOpening":
            errors.append(f"dialog {params.get('type')}: {params.get('message')}")
    return errors


def render_in_chromium(
    path: Path, *, evaluate: Sequence[str] = (), settle_seconds: float = 0.3, timeout: float = 30
) -> RenderedPage:
    """Load ``path`` in a fresh headless Chromium; return its DOM, console errors and requests.

    ``evaluate`` holds JavaScript expressions run after the load (and ``settle_seconds`` of quiet
    for timers), e.g. to click something; errors they cause are in ``console_errors`` too.
    """
    binary = chromium_binary()
    url = path.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="flywheel-chromium-") as scratch:
        stderr_path = Path(scratch) / "stderr.log"
        to_browser_read, to_browser_write = os.pipe()
        from_browser_read, from_browser_write = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4; the shell puts our pipe ends
        # there (subprocess itself may use those numbers while it sets the child up). bash, not sh:
        # dash cannot redirect from a two-digit descriptor.
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    "/bin/bash",
                    "-c",
                    f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}',
                    binary,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={Path(scratch) / 'profile'}",
                    "about:blank",
                ],
                pass_fds=(to_browser_read, from_browser_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        os.close(to_browser_read)
        os.close(from_browser_write)
        pipe = _DevToolsPipe(to_browser_write, from_browser_read, stderr_path)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.events.clear()  # about:blank's own events are not the page's
            navigation = pipe.call("Page.navigate", {"url": url}, session=session)
            if navigation.get("errorText"):
                raise RuntimeError(f"Chromium could not open {url}: {navigation['errorText']}")
            pipe.wait_for("Page.loadEventFired", time.monotonic() + timeout)
            pipe.drain(settle_seconds)
            evaluated = []
            for expression in evaluate:
                reply = pipe.call(
                    "Runtime.evaluate",
                    {"expression": expression, "returnByValue": True, "awaitPromise": True},
                    session=session,
                )
                if "exceptionDetails" in reply:
                    raise RuntimeError(f"evaluating {expression!r} failed: {reply['exceptionDetails']}")
                evaluated.append(reply.get("result", {}).get("value"))
            if evaluate:
                pipe.drain(settle_seconds)
            dom_reply = pipe.call(
                "Runtime.evaluate",
                {"expression": "document.documentElement.outerHTML", "returnByValue": True},
                session=session,
            )
            requests = [
                str(event["params"]["request"]["url"])
                for event in pipe.events
                if event.get("method") == "Network.requestWillBeSent"
            ]
            page = RenderedPage(
                dom=str(dom_reply["result"]["value"]),
                console_errors=console_errors(pipe.events),
                requests=requests,
                evaluated=evaluated,
            )
            pipe.send("Browser.close")
            process.wait(timeout=timeout)
            return page
        finally:
            os.close(to_browser_write)
            os.close(from_browser_read)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # the group this run started, nothing else
                process.wait()


class _NumberCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.numbers: dict[NumberKey, Number] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        raw, key = attributes.get("data-value"), attributes.get("data-key")
        if raw is None or key is None:
            return
        value: Number = int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
        where = (attributes.get("data-model"), key)
        if where in self.numbers and self.numbers[where] != value:
            raise ValueError(f"{where} is shown as both {self.numbers[where]!r} and {value!r}")
        self.numbers[where] = value


def dom_numbers(dom: str) -> dict[NumberKey, Number]:
    """``{(model or None, key): value}`` for every element with ``data-key`` and ``data-value``."""
    collector = _NumberCollector()
    collector.feed(dom)
    collector.close()
    return collector.numbers


def _collect(value: Any, model: str | None, path: str, into: dict[NumberKey, Number]) -> None:
    # Lists (latencies, metric groups, warnings) are not single numbers a page shows; nulls neither.
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        into[(model, path)] = value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _collect(item, model, f"{path}.{key}" if path else str(key), into)


def report_numbers(report: Mapping[str, Any]) -> dict[NumberKey, Number]:
    """The numbers of a report object keyed as ``dom_numbers`` keys them, to compare the two."""
    numbers: dict[NumberKey, Number] = {}
    for key, value in report.items():
        if key not in ("models", "worst"):
            _collect(value, None, str(key), numbers)
    for model in report.get("models") or []:
        _collect(model, str(model["model"]), "", numbers)
    for example in report.get("worst") or []:
        for model, score in (example.get("scores") or {}).items():
            _collect(score, str(model), f"worst.{example['call_id']}.score", numbers)
    return numbers
