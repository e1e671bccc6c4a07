"""``model="flywheel:NAME"``: apps reach a pipeline's current model, from a cache refreshed off the call path.

End to end with real processes: an app in a subprocess loops on ``flywheel:classify`` against the
mock server while the test promotes and rolls back (``flywheel.evaluate.promote``, what ``flywheel
promote`` calls) in the real store (SQLite and PostgreSQL), stops the store (SQLite: the file
replaced by a directory; PostgreSQL: the TCP forwarder between the app and the server killed) and
starts new processes while it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from sdk_helpers import fetch_calls

import sdk
from flywheel.evaluate.promote import promote, rollback
from flywheel.train.config import load_config
from sdk import _route_store, _routing
from sdk._migrate import upgrade
from sdk._tags import TAG_HEADER, per_call_layer

REPO = Path(__file__).resolve().parent.parent
REFRESH_S = 0.2
LAG_MARGIN_S = 1.0
"""Slack over one refresh interval for a promotion to show in the app's responses (a busy CI box)."""
BASE_MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "My invoice shows a double charge."}]

CONFIG = f"""
[pipelines.classify]
filter = {{ tags = {{ prompt_id = "classify" }} }}

[pipelines.classify.train]
provider = "openai"
base_model = "{BASE_MODEL}"
min_examples = 10
"""

APP = """
import json, logging, os, sys, time
import sdk

logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="LOG %(name)s %(message)s")
client = sdk.OpenAI(
    api_key="sk-test", base_url=os.environ["APP_BASE_URL"], max_retries=0,
    database_url=os.environ["APP_STORE"],
)
stop = os.environ["APP_STOP_FILE"]
i = 0
while not os.path.exists(stop):
    response = client.chat.completions.create(
        model="flywheel:classify", messages=[{"role": "user", "content": f"ticket {i}"}]
    )
    print(json.dumps({"i": i, "model": response.model, "t": time.time()}), flush=True)
    i += 1
    time.sleep(0.02)
print(json.dumps({"counters": sdk.stats()["counters"]}), flush=True)
"""


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _routing_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    config = tmp_path / "flywheel.toml"
    config.write_text(CONFIG)
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(config))
    monkeypatch.setenv("FLYWHEEL_ROUTE_REFRESH", str(REFRESH_S))
    monkeypatch.setenv("FLYWHEEL_FLUSH_INTERVAL", "0.05")
    yield config
    _routing.close_all(timeout=10)


def ask(client: Any, model: str = "flywheel:classify") -> str:
    """The model that answered one chat completion sent with ``model``."""
    answered: str = client.chat.completions.create(model=model, messages=MESSAGES).model
    return answered


def migrated(db_url: str) -> str:
    upgrade(db_url)
    return db_url


def add_promotion(db_url: str, model: str, previous: str | None, action: str = "promote") -> float:
    """``flywheel promote classify MODEL`` (or ``--rollback``) through the library, as the CLI does;
    returns the wall-clock time of its commit."""
    pipeline = load_config(os.environ["FLYWHEEL_CONFIG"]).pipeline("classify")
    change = rollback(db_url, pipeline) if action == "rollback" else promote(db_url, pipeline, model)
    assert (change.model, change.previous_model) == (model, previous)
    return time.time()


class App:
    """The APP script in its own process; its printed responses collected as they arrive."""

    def __init__(self, tmp_path: Path, name: str, base_url: str, store: str, script: str = APP) -> None:
        self.stop_file = tmp_path / f"{name}.stop"
        self.stderr_path = tmp_path / f"{name}.stderr"
        env = {
            **os.environ,
            "APP_BASE_URL": base_url,
            "APP_STORE": store,
            "APP_STOP_FILE": str(self.stop_file),
        }
        self._stderr = self.stderr_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._arrived:
                self.lines.append(json.loads(line))
                self._arrived.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The first printed line (from now on) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            start = len(self.lines)
            while True:
                for line in self.lines[start:]:
                    if predicate(line):
                        return line
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"not seen in {timeout} s; stderr: {self.stderr_path.read_text()}")
                self._arrived.wait(min(left, 0.1))

    def wait_for_model(self, model: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for(lambda line: line.get("model") == model, timeout)

    def stop(self) -> dict[str, int]:
        """Stop the loop, let the process exit (the SDK flushes at exit); its counters."""
        self.stop_file.touch()
        try:
            assert self.process.wait(timeout=60) == 0, self.stderr_path.read_text()
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(10)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self._stderr.close()
        counters: dict[str, int] = self.lines[-1]["counters"]
        return counters

    @property
    def models(self) -> list[str]:
        return [line["model"] for line in self.lines if "model" in line]

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.stderr_path.read_text().splitlines() if text in line]


class TcpForwarder:
    """127.0.0.1:<port> -> 127.0.0.1:<target>; ``close()`` kills it and every connection through it.

    With ``stall=True`` it accepts connections and never forwards a byte: a store that hangs.
    """

    def __init__(self, target_port: int, port: int = 0, stall: bool = False) -> None:
        self.target_port = target_port
        self.stall = stall
        self._listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    client.close()
                    return
                self._sockets.append(client)
            if self.stall:
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def through(forwarder: TcpForwarder, db_url: str) -> str:
    return sa.make_url(db_url).set(port=forwarder.port).render_as_string(hide_password=False)


class StoreSwitch:
    """Stop and restart the store the way the app sees it, for either backend."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        url = sa.make_url(db_url)
        self.forwarder: TcpForwarder | None = None
        self.path: Path | None = None
        if url.get_backend_name() == "sqlite":
            assert url.database is not None
            self.path = Path(url.database)
            self.app_url = db_url
        else:
            self.forwarder = TcpForwarder(url.port or 5432)
            self.app_url = through(self.forwarder, db_url)

    def stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
        else:
            assert self.path is not None
            # A directory where the file was: nobody can open it, and nobody can create it anew.
            self.path.rename(self.path.with_name(self.path.name + ".away"))
            self.path.mkdir()

    def start(self) -> None:
        if self.forwarder is not None:
            self.forwarder = TcpForwarder(self.forwarder.target_port, port=self.forwarder.port)
        else:
            assert self.path is not None
            self.path.rmdir()
            self.path.with_name(self.path.name + ".away").rename(self.path)

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()


@pytest.fixture
def switch(db_url: str) -> Iterator[StoreSwitch]:
    store = StoreSwitch(migrated(db_url))
    yield store
    store.close()


# --- a running app follows promotions -------------------------------------------------------------


@pytest.mark.slow
def test_running_app_follows_promotions_and_rollback(db_url: str, mock_server: Any, tmp_path: Path) -> None:
    migrated(db_url)
    app = App(tmp_path, "app", mock_server.base_url, db_url)
    try:
        app.wait_for_model(BASE_MODEL)  # no promotion yet: the configured base model
        lags = []
        for model, previous, action in (
            ("ft:gpt-4o-mini:acme:classify:a", BASE_MODEL, "promote"),
            ("ft:gpt-4o-mini:acme:classify:b", "ft:gpt-4o-mini:acme:classify:a", "promote"),
            ("ft:gpt-4o-mini:acme:classify:a", "ft:gpt-4o-mini:acme:classify:b", "rollback"),
        ):
            committed = add_promotion(db_url, model, previous, action)
            seen = app.wait_for_model(model)
            lags.append(seen["t"] - committed)
        counters = app.stop()
    finally:
        if app.process.poll() is None:
            app.process.kill()
    assert max(lags) <= REFRESH_S + LAG_MARGIN_S, lags
    # Once a model shows, it stays until the next row: each load is one consistent table.
    changes = [m for i, m in enumerate(app.models) if i == 0 or app.models[i - 1] != m]
    assert changes == [
        BASE_MODEL,
        "ft:gpt-4o-mini:acme:classify:a",
        "ft:gpt-4o-mini:acme:classify:b",
        "ft:gpt-4o-mini:acme:classify:a",
    ]
    assert counters.get("routes_unknown", 0) == 0 and counters["routes_loaded"] >= 3
    stored = fetch_calls(db_url)
    assert [c["model"] for c in stored] == app.models
    assert all(c["request"]["model"] == c["model"] for c in stored)  # the body as sent
    assert all(c["tags"] == {"flywheel_route": "classify"} for c in stored)


@pytest.mark.slow
def test_keeps_resolving_with_the_store_down(switch: StoreSwitch, mock_server: Any, tmp_path: Path) -> None:
    promoted = "ft:gpt-4o-mini:acme:classify:a"
    add_promotion(switch.db_url, promoted, BASE_MODEL)
    app = App(tmp_path, "app", mock_server.base_url, switch.app_url)
    late: App | None = None
    try:
        app.wait_for_model(promoted)
        switch.stop()
        down_at = time.time()
        # Several refresh intervals with the store gone: every call still goes to the promoted model.
        app.wait_for(lambda line: line.get("t", 0) > down_at + 8 * REFRESH_S)
        assert all(m == promoted for m in app.models), set(app.models)
        assert len(app.log_lines("cannot load model routes")) == 1  # once per outage, not per refresh

        # A process started while the store is down resolves from the routes saved by the first one.
        late = App(tmp_path, "late", mock_server.base_url, switch.app_url)
        first = late.wait_for(lambda line: "model" in line)
        assert first["i"] == 0 and first["model"] == promoted
        assert "keeping the last known routes" in late.log_lines("cannot load model routes")[0]

        # The store is back: both pick up the next promotion.
        switch.start()
        newer = "ft:gpt-4o-mini:acme:classify:b"
        committed = add_promotion(switch.db_url, newer, promoted)
        for process in (app, late):
            assert process.wait_for_model(newer)["t"] - committed <= REFRESH_S + LAG_MARGIN_S
        counters = app.stop()
        late_counters = late.stop()
    finally:
        for process in (app, late):
            if process is not None and process.process.poll() is None:
                process.process.kill()
    assert counters["routes_refresh_failed"] >= 5
    assert late_counters["routes_refresh_failed"] >= 1
    assert set(late.models) == {promoted, newer} and set(app.models) == {promoted, newer}


FORKING_APP = """
import json, os, sys, time
import sdk

client = sdk.OpenAI(api_key="sk-test", base_url=os.environ["APP_BASE_URL"], max_retries=0,
                    database_url=os.environ["APP_STORE"])
def call():
    messages = [{"role": "user", "content": "x"}]
    return client.chat.completions.create(model="flywheel:classify", messages=messages)
print(json.dumps({"who": "parent", "model": call().model, "t": time.time()}), flush=True)
client.close()  # no HTTP connection crosses the fork
pid = os.fork()
if pid == 0:
    client = sdk.OpenAI(api_key="sk-test", base_url=os.environ["APP_BASE_URL"], max_retries=0,
                        database_url=os.environ["APP_STORE"])
    while not os.path.exists(os.environ["APP_STOP_FILE"]):
        print(json.dumps({"who": "child", "model": call().model, "t": time.time()}), flush=True)
        time.sleep(0.02)
    sdk.flush(10)
    os._exit(0)
os.waitpid(pid, 0)
print(json.dumps({"counters": sdk.stats()["counters"]}), flush=True)
"""


@pytest.mark.slow
def test_a_forked_child_refreshes_on_its_own(db_url: str, mock_server: Any, tmp_path: Path) -> None:
    migrated(db_url)
    add_promotion(db_url, "ft:a", BASE_MODEL)
    app = App(tmp_path, "fork", mock_server.base_url, db_url, script=FORKING_APP)
    try:
        assert app.wait_for(lambda line: line.get("who") == "parent")["model"] == "ft:a"
        assert app.wait_for(lambda line: line.get("who") == "child")["model"] == "ft:a"  # inherited
        committed = add_promotion(db_url, "ft:b", "ft:a")
        seen = app.wait_for(lambda line: line.get("who") == "child" and line["model"] == "ft:b")
        app.stop()
    finally:
        if app.process.poll() is None:
            app.process.kill()
    assert seen["t"] - committed <= REFRESH_S + LAG_MARGIN_S


# --- fallback, unknown names, no store at all ------------------------------------------------------


class StrictUpstream(http.server.ThreadingHTTPServer):
    """Answers chat completions for the models it serves and OpenAI's 404 for any other model."""

    daemon_threads = True

    def __init__(self, models: set[str]) -> None:
        self.models = models
        super().__init__(("127.0.0.1", 0), _StrictHandler)
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _StrictHandler(http.server.BaseHTTPRequestHandler):
    server: StrictUpstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        model = body["model"]
        if model in self.server.models:
            status, answer = (
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "billing"},
                        }
                    ],
                },
            )
        else:
            message = f"The model `{model}` does not exist or you do not have access to it."
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
            status, answer = 404, {"error": error}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def strict_upstream() -> Iterator[StrictUpstream]:
    server = StrictUpstream({BASE_MODEL})
    yield server
    server.close()


def test_base_model_fallback_and_unknown_names_pass_through(
    db_url: str, strict_upstream: StrictUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    migrated(db_url)
    recording = sdk.OpenAI(
        api_key="sk-test", base_url=strict_upstream.base_url, max_retries=0, database_url=db_url
    )
    plain = openai.OpenAI(api_key="sk-test", base_url=strict_upstream.base_url, max_retries=0)
    with recording, plain:
        assert ask(recording) == BASE_MODEL
        with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
            for _ in range(2):
                with pytest.raises(openai.NotFoundError) as through_sdk:
                    recording.chat.completions.create(model="flywheel:nosuch", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError) as without_sdk:
            plain.chat.completions.create(model="flywheel:nosuch", messages=MESSAGES)
    # The app sees the upstream's own answer, exactly as without the SDK; the SDK raised nothing.
    assert through_sdk.value.body == without_sdk.value.body
    assert str(through_sdk.value) == str(without_sdk.value)
    unknown = [r for r in caplog.records if "no pipeline 'nosuch'" in r.getMessage()]
    assert len(unknown) == 1
    assert sdk.stats()["counters"]["routes_unknown"] >= 2
    stored = fetch_calls(db_url)
    assert [(c["model"], c["status_code"], c["tags"]) for c in stored] == [
        (BASE_MODEL, 200, {"flywheel_route": "classify"}),
        ("flywheel:nosuch", 404, {"flywheel_route": "nosuch"}),
        ("flywheel:nosuch", 404, {"flywheel_route": "nosuch"}),
    ]


def test_config_changes_reach_unpromoted_pipelines(db_url: str, mock_server: Any, _routing_env: Path) -> None:
    migrated(db_url)
    with sdk.OpenAI(api_key="sk-test", base_url=mock_server.base_url, database_url=db_url) as client:
        assert ask(client) == BASE_MODEL
        _routing_env.write_text(CONFIG.replace(BASE_MODEL, "gpt-4.1-nano"))
        deadline = time.monotonic() + REFRESH_S + LAG_MARGIN_S
        while ask(client) != "gpt-4.1-nano":
            assert time.monotonic() < deadline
        _routing_env.write_text("this is [not toml")  # a broken config keeps the last good base models
        time.sleep(3 * REFRESH_S)
        assert ask(client) == "gpt-4.1-nano"
    assert sdk.stats()["counters"]["routes_config_invalid"] >= 1


def test_no_store_and_no_saved_routes_uses_the_config(
    mock_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_DISABLED", "1")  # so that no writer creates the store meanwhile
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'store.db'}"
    with sdk.OpenAI(api_key="sk-test", base_url=mock_server.base_url, database_url=missing) as client:
        assert ask(client) == BASE_MODEL
    assert sdk.stats()["counters"]["routes_refresh_failed"] >= 1


# --- never a query on the call path ---------------------------------------------------------------


def test_no_query_on_the_call_path(db_url: str, mock_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    migrated(db_url)
    add_promotion(db_url, "ft:a", BASE_MODEL)
    monkeypatch.setenv("FLYWHEEL_DATABASE_URL", db_url)  # the client's store is the default one
    queries: list[str] = []

    def count(*_args: Any) -> None:
        queries.append(threading.current_thread().name)

    async def async_calls(n: int) -> list[str]:
        async with sdk.AsyncOpenAI(api_key="sk-test", base_url=mock_server.base_url) as client:
            return [
                (await client.chat.completions.create(model="flywheel:classify", messages=MESSAGES)).model
                for _ in range(n)
            ]

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        with sdk.OpenAI(api_key="sk-test", base_url=mock_server.base_url) as client:
            started = time.monotonic()
            models = []
            while time.monotonic() - started < 4 * REFRESH_S:  # several refreshes happen meanwhile
                models.append(ask(client))
        models += asyncio.run(async_calls(20))
        assert sdk.flush(timeout=30)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)
    assert set(models) == {"ft:a"} and len(models) > 20
    main = threading.current_thread().name
    assert main not in queries
    assert queries.count("flywheel-routes") >= 3  # the listener does see the refresher's queries


def test_a_hanging_store_never_holds_a_call(
    pg_database_url: str, mock_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL that accepts connections and never answers: only the cold start waits, once."""
    from conftest import pg_schema_url

    monkeypatch.setenv("FLYWHEEL_ROUTE_WAIT", "0.5")
    monkeypatch.setenv("FLYWHEEL_DISABLED", "1")  # routing only: no writer waiting on the same store

    db_url = migrated(pg_schema_url(pg_database_url))
    add_promotion(db_url, "ft:a", BASE_MODEL)
    stalled = TcpForwarder(sa.make_url(db_url).port or 5432, stall=True)
    app_url = through(stalled, db_url)
    client = sdk.OpenAI(api_key="sk-test", base_url=mock_server.base_url, database_url=app_url)
    try:
        started = time.monotonic()
        first = client.chat.completions.create(model="flywheel:classify", messages=MESSAGES)
        cold = time.monotonic() - started
        later = []
        for _ in range(20):
            started = time.monotonic()
            assert ask(client) == BASE_MODEL
            later.append(time.monotonic() - started)
    finally:
        client.close()
        stalled.close()  # the refresher's connection fails; close_all then finds it idle
    assert first.model == BASE_MODEL  # nothing loaded, nothing saved: the configured base model
    assert 0.5 <= cold < 0.5 + LAG_MARGIN_S
    assert max(later) < 0.25, later


# --- every way of calling ----------------------------------------------------------------------


def _stored_routes(db_url: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(c["model"], c["request"]["model"], c["tags"]) for c in fetch_calls(db_url)]


def test_every_call_style_routes(db_url: str, mock_server: Any) -> None:
    migrated(db_url)
    add_promotion(db_url, "ft:a", BASE_MODEL)
    alias = "flywheel:classify"
    base = mock_server.base_url
    models: list[str] = []
    with sdk.OpenAI(api_key="sk-test", base_url=base, database_url=db_url, tags={"app": "bot"}) as client:
        completions = client.chat.completions
        models.append(completions.create(model=alias, messages=MESSAGES, tags={"prompt_id": "p"}).model)
        with sdk.tags(feature="search"):
            stream = completions.create(model=alias, messages=MESSAGES, stream=True)
            models.append({chunk.model for chunk in stream}.pop())
        models.append(completions.with_raw_response.create(model=alias, messages=MESSAGES).parse().model)
        with completions.with_streaming_response.create(model=alias, messages=MESSAGES) as response:
            models.append(response.parse().model)
        with completions.stream(
            model=alias, messages=MESSAGES, extra_headers=sdk.tag_headers(k="v")
        ) as events:
            models.append(events.get_final_completion().model)
        models.append(client.responses.create(model=alias, input="hello").model)
    wrapped = sdk.wrap(openai.OpenAI(api_key="sk-test", base_url=base), database_url=db_url)
    with wrapped:
        models.append(wrapped.chat.completions.create(model=alias, messages=MESSAGES).model)

    async def async_styles() -> list[str]:
        async with sdk.AsyncOpenAI(api_key="sk-test", base_url=base, database_url=db_url) as aclient:
            found = [(await aclient.chat.completions.create(model=alias, messages=MESSAGES)).model]
            stream = await aclient.chat.completions.create(model=alias, messages=MESSAGES, stream=True)
            found.append({chunk.model async for chunk in stream}.pop())
            raw = await aclient.chat.completions.with_raw_response.create(model=alias, messages=MESSAGES)
            found.append(raw.parse().model)
            return found

    models += asyncio.run(async_styles())
    assert models == ["ft:a"] * 10
    route = {"flywheel_route": "classify"}
    assert _stored_routes(db_url) == [
        ("ft:a", "ft:a", {"app": "bot", "prompt_id": "p", **route}),
        ("ft:a", "ft:a", {"app": "bot", "feature": "search", **route}),
        ("ft:a", "ft:a", {"app": "bot", **route}),
        ("ft:a", "ft:a", {"app": "bot", **route}),
        ("ft:a", "ft:a", {"app": "bot", "k": "v", **route}),
        ("ft:a", "ft:a", {"app": "bot", **route}),
        ("ft:a", "ft:a", route),
        ("ft:a", "ft:a", route),
        ("ft:a", "ft:a", route),
        ("ft:a", "ft:a", route),
    ]


def test_routing_works_with_recording_disabled(
    db_url: str, mock_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrated(db_url)
    add_promotion(db_url, "ft:a", BASE_MODEL)
    monkeypatch.setenv("FLYWHEEL_DISABLED", "1")
    with sdk.OpenAI(api_key="sk-test", base_url=mock_server.base_url, database_url=db_url) as client:
        assert ask(client) == "ft:a"
        assert client.chat.completions.create(model=BASE_MODEL, messages=MESSAGES).model == BASE_MODEL
    assert fetch_calls(db_url) == []


# --- the pure parts ------------------------------------------------------------------------------


def test_base_models_reads_only_well_formed_train_tables() -> None:
    document = {
        "pipelines": {
            "classify": {"train": {"base_model": "gpt-4o-mini"}},
            "no_train": {"filter": {}},
            "empty": {"train": {"base_model": ""}},
            "odd": {"train": "gpt-4o"},
        }
    }
    assert _route_store.base_models(document) == {"classify": "gpt-4o-mini"}
    assert _route_store.base_models({"pipelines": ["x"]}) == {}
    assert _route_store.base_models({}) == {}


def test_saved_routes_round_trip_and_reject_anything_else() -> None:
    routes = {"classify": "ft:a", "summarize": "gpt-4o"}
    assert _route_store.decode_cache(_route_store.encode_cache(routes)) == routes
    for bad in (b"", b"[]", b'{"version": 2, "promoted": {}}', b'{"version": 1, "promoted": {"a": 1}}'):
        assert _route_store.decode_cache(bad) is None


def test_routed_tags_keep_header_tags_below_call_tags_and_name_the_route() -> None:
    headers = {TAG_HEADER: json.dumps({"k": "header", "h": "1"}), "x-other": "y"}
    # What every tagging method sends (routed or not): header tags below tags=, neither lost.
    assert per_call_layer(_routing.with_route({"k": "call", "n": 2}, "classify"), headers) == {
        "k": "call",
        "h": "1",
        "n": "2",
        "flywheel_route": "classify",
    }
    assert per_call_layer(_routing.with_route(None, "c"), None) == {"flywheel_route": "c"}
    assert per_call_layer({"k": "call"}, headers) == {"k": "call", "h": "1"}
    assert per_call_layer(None, None) == {}
    # The route tag describes what happened; a caller's own flywheel_route cannot hide it.
    assert _routing.with_route({"flywheel_route": "other"}, "c") == {"flywheel_route": "c"}


def test_saved_routes_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "key.routes.json"
    _route_store.write_cache(path, {"classify": "ft:a"})
    _route_store.write_cache(path, {"classify": "ft:b"})
    assert _route_store.read_cache(path) == {"classify": "ft:b"}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["key.routes.json"]  # no staging file left


def test_per_call_tags_and_header_tags_merge_on_plain_calls(db_url: str, mock_server: Any) -> None:
    migrated(db_url)
    with sdk.OpenAI(api_key="sk-test", base_url=mock_server.base_url, database_url=db_url) as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            tags={"k": "call", "n": 2},  # type: ignore[call-overload]
            extra_headers=sdk.tag_headers(k="header", h="1"),
        )
    assert sdk.flush(timeout=30)
    (stored,) = fetch_calls(db_url)
    assert stored["tags"] == {"k": "call", "h": "1", "n": "2"}
