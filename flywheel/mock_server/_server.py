"""Running the app: ``serve`` (blocking, for the CLI) and ``MockServer`` (a background thread).

``MockServer`` binds its own socket on 127.0.0.1 port 0 before starting uvicorn, so the port is
known and free with no race, and ``__enter__`` returns only once uvicorn accepts connections.
``__exit__`` stops uvicorn, joins the thread and closes the socket, leaving nothing open.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import uvicorn
from starlette.applications import Starlette

from ._app import create_app
from ._fine_tune_timeline import FineTuneTiming

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def _config(
    app: Starlette, host: str = "127.0.0.1", port: int = 0, *, embedded: bool = False
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        # Inside someone else's process, leave their logging setup alone (records propagate).
        log_config=None if embedded else uvicorn.config.LOGGING_CONFIG,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    latency_ms: float = 0,
    error_rate: float = 0.0,
    seed: int = 0,
    *,
    fine_tune: FineTuneTiming | None = None,
) -> None:
    """Serve the mock API on ``host:port`` until interrupted (Ctrl+C / SIGTERM).

    ``fine_tune``: how long fine-tuning jobs take (see ``create_app``).
    """
    app = create_app(latency_ms=latency_ms, error_rate=error_rate, seed=seed, fine_tune=fine_tune)
    uvicorn.Server(_config(app, host, port)).run()


class MockServer:
    """The mock API on 127.0.0.1 with an OS-chosen port, served from a daemon thread.

    >>> with MockServer() as server:
    ...     client = openai.OpenAI(api_key="sk-test", base_url=server.base_url)

    The options are ``create_app``'s: ``MockServer(fine_tune=FineTuneTiming(0.1, 0.1, 0.5))``
    makes fine-tuning jobs finish in 0.7 s; ``clock=`` lets a test move their time by hand.
    """

    def __init__(
        self,
        latency_ms: float = 0,
        error_rate: float = 0.0,
        seed: int = 0,
        *,
        fine_tune: FineTuneTiming | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app = create_app(
            latency_ms=latency_ms, error_rate=error_rate, seed=seed, fine_tune=fine_tune, clock=clock
        )
        self.host = "127.0.0.1"
        self.port = 0
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The URL to give an openai client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("MockServer is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this. Without it, a response written as headers then body waits
        # for the client's delayed ACK (~40 ms per call) when uvicorn is handed a pre-bound socket.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, 0))
        sock.listen(1024)
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(_config(self.app, embedded=True))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"mock-server:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mock server on port {self.port} failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
