"""Per-call latency of ``sdk.OpenAI`` vs plain ``openai.OpenAI`` against the mock server.

One interleaved run: each round makes one call with each client, in an order that alternates, so
both see the same machine state. Non-streaming and streaming chat completions; median and p99 of
each, and their ratio. The mock server runs in its own process; the SDK records into a SQLite
file (or ``--database-url``) with its background writer running as in production.

    python bench/sdk_overhead.py --calls 3000 --write   # updates docs/performance.md
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import openai
from _report import PERFORMANCE_DOC as DOC
from _report import update_section

MESSAGES = [
    {"role": "system", "content": "You are a support assistant. Classify the ticket into one category."},
    {"role": "user", "content": "My invoice for October shows a charge twice, can you check? " * 8},
]
SECTION = "## SDK overhead"


def _serve(port: int) -> None:
    from flywheel.mock_server import serve

    serve(host="127.0.0.1", port=port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mock server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure(
    calls: int, plain: Any, recording: Any, make_call: Callable[[Any], None]
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"plain": [], "sdk": []}
    for _ in range(min(200, calls)):  # warm-up: connections, caches, the writer's first batch
        make_call(plain)
        make_call(recording)
    for i in range(calls):
        order = (
            (("plain", plain), ("sdk", recording)) if i % 2 == 0 else (("sdk", recording), ("plain", plain))
        )
        for name, client in order:
            start = time.perf_counter()
            make_call(client)
            timings[name].append((time.perf_counter() - start) * 1000.0)
    return timings


def non_streaming(client: Any) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-words": "40"}
    )


def streaming(client: Any) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-words": "40"},
    )
    for _ in stream:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per client and mode")
    parser.add_argument("--database-url", help="store for the SDK (default: a temporary SQLite file)")
    parser.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {DOC.name}")
    args = parser.parse_args()

    import sdk

    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    _wait_for(port)
    base_url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        store = args.database_url or f"sqlite:///{tmp}/bench.db"
        os.environ["FLYWHEEL_SPOOL_DIR"] = f"{tmp}/spool"
        plain = openai.OpenAI(api_key="sk-bench", base_url=base_url, max_retries=0)
        recording = sdk.OpenAI(api_key="sk-bench", base_url=base_url, max_retries=0, database_url=store)
        results = {}
        gc.collect()
        for mode, fn in (("non-streaming", non_streaming), ("streaming", streaming)):
            results[mode] = measure(args.calls, plain, recording, fn)
        assert sdk.flush(timeout=120)
        recorded = sdk.stats()
    server.terminate()

    rows = []
    for mode, timings in results.items():
        p50 = {k: statistics.median(v) for k, v in timings.items()}
        p99 = {k: percentile(v, 0.99) for k, v in timings.items()}
        rows.append(
            f"| {mode} | {p50['plain']:.3f} | {p50['sdk']:.3f} | **{p50['sdk'] / p50['plain']:.3f}** "
            f"| {p99['plain']:.3f} | {p99['sdk']:.3f} | **{p99['sdk'] / p99['plain']:.3f}** |"
        )
    table = "\n".join(
        [
            "| mode | plain median ms | sdk median ms | median ratio"
            " | plain p99 ms | sdk p99 ms | p99 ratio |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    store_kind = "PostgreSQL" if store.startswith("postgresql") else "SQLite"
    body = (
        f"{SECTION}\n\n"
        f"`python bench/sdk_overhead.py --calls {args.calls}`: {args.calls} measured calls per client"
        " and mode, interleaved, after 200 warm-up calls each; chat completions of ~40 words against"
        f" `flywheel mock-server` in its own process; the SDK writes to {store_kind}."
        f" openai {openai.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs."
        " Target: median ratio <= 1.02, p99 <= 1.05.\n\n"
        f"{table}\n\nWriter counters after the run: `{recorded}`\n"
    )
    print(body)
    if args.write:
        update_section(DOC, SECTION, body)


if __name__ == "__main__":
    sys.exit(main())
