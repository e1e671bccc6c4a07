"""What ``model="flywheel:NAME"`` adds to a call, against a plain model name in the same run.

Two layers, each timed plain vs alias, interleaved (the variants take turns going first):

- the tag-aware resource method alone, around a no-op: exactly the code routing adds to (the
  lookup, the ``flywheel_route`` tag into the private header), in batches, so that microseconds
  show;
- whole ``client.chat.completions.create`` calls with recording on, against ``flywheel
  mock-server`` in its own process, one call at a time, as ``bench/sdk_overhead.py`` measures;
  beside plain and alias, the plain call again (the noise floor, in the same run) and the plain
  call with the per-call tag an alias adds (what any ``tags=`` costs).

The routes come from a real SQLite store with one promotion row; the refresher runs every 0.5 s
during the run, so resolving is measured while the table is being replaced.

    python bench/sdk_routing.py --write     # updates docs/performance.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import openai
import sqlalchemy as sa
from _report import PERFORMANCE_DOC as DOC
from _report import update_section
from sdk_overhead import _free_port, _serve, _wait_for, percentile

SECTION = "## Routing overhead"
MESSAGES = [
    {"role": "system", "content": "You are a support assistant. Classify the ticket into one category."},
    {"role": "user", "content": "My invoice for October shows a charge twice, can you check? " * 8},
]
PLAIN = "gpt-4o-mini"
PROMOTED = PLAIN
"""The alias resolves to the very model the plain call names: the upstream does the same work for both."""


def batched(rounds: int, batch: int, plain: Callable[[], Any], alias: Callable[[], Any]) -> dict[str, float]:
    """Median over rounds of the per-call mean of a batch, in µs."""
    for _ in range(batch):  # warm-up
        plain()
        alias()
    timings: dict[str, list[float]] = {"plain": [], "alias": []}
    for n in range(rounds):
        order = (("plain", plain), ("alias", alias)) if n % 2 == 0 else (("alias", alias), ("plain", plain))
        for name, fn in order:
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            timings[name].append((time.perf_counter() - start) / batch * 1e6)
    return {name: statistics.median(values) for name, values in timings.items()}


def one_by_one(calls: int, variants: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
    """Each call timed on its own, in µs; the variants take turns going first."""
    named = list(variants.items())
    for _ in range(min(200, calls)):  # warm-up: connections, the writer's first batch
        for _name, fn in named:
            fn()
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for n in range(calls):
        for name, fn in named[n % len(named) :] + named[: n % len(named)]:
            start = time.perf_counter()
            fn()
            timings[name].append((time.perf_counter() - start) * 1e6)
    return timings


def wrapper_only(store: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The tag-aware method around a no-op, on an object shaped like a resource of a client."""
    from sdk._clients import _tagging_method
    from sdk._exchange import RecordOptions

    class Client:
        _flywheel_options = RecordOptions(database_url=store)

    class Resource:
        _client = Client()

        def create(self, **kwargs: Any) -> Any:
            return kwargs

    method = _tagging_method(Resource.create)
    resource = Resource()
    return (
        lambda: method(resource, model="gpt-4o-mini", messages=MESSAGES),
        lambda: method(resource, model="flywheel:classify", messages=MESSAGES),
    )


def full_calls(client: Any) -> dict[str, Callable[[], Any]]:
    """The whole-call variants; "plain again" measures the noise floor, "tagged" a per-call tag alone."""
    create = client.chat.completions.create
    words = {"x-mock-words": "40"}
    tag = {"flywheel_route": "classify"}
    return {
        "plain": lambda: create(model=PLAIN, messages=MESSAGES, extra_headers=words),
        "plain again": lambda: create(model=PLAIN, messages=MESSAGES, extra_headers=words),
        "tagged": lambda: create(model=PLAIN, messages=MESSAGES, extra_headers=words, tags=tag),
        "alias": lambda: create(model="flywheel:classify", messages=MESSAGES, extra_headers=words),
    }


WHOLE_ROWS = {
    "plain again": "the same plain call again (the noise floor)",
    "tagged": 'plain model with `tags={"flywheel_route": "classify"}`',
    "alias": '`model="flywheel:classify"`',
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=400, help="batches of the resource method alone")
    parser.add_argument("--batch", type=int, default=100, help="calls per batch")
    parser.add_argument("--calls", type=int, default=2000, help="whole calls per variant")
    parser.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {DOC.name}")
    args = parser.parse_args()

    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    _wait_for(port)
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/bench.db"
        os.environ.update(
            FLYWHEEL_SPOOL_DIR=f"{tmp}/spool",
            FLYWHEEL_ROUTE_REFRESH="0.5",
            FLYWHEEL_CONFIG=f"{tmp}/none.toml",
        )
        import sdk
        from sdk import _routing
        from sdk._migrate import upgrade
        from sdk.schema import promotions

        upgrade(store)
        engine = sa.create_engine(store)
        with engine.begin() as conn:
            row = {"pipeline": "classify", "model": PROMOTED, "previous_model": None}
            conn.execute(sa.insert(promotions).values(**row, action="promote", created_at=datetime.now(UTC)))
        engine.dispose()
        client = sdk.OpenAI(
            api_key="sk-bench", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, database_url=store
        )
        variants = full_calls(client)
        assert variants["alias"]().model == PROMOTED  # the cold start happens here, untimed
        method = batched(args.rounds, args.batch, *wrapper_only(store))
        whole = one_by_one(args.calls, variants)
        _routing.close_all()
        assert sdk.flush(timeout=120)
        counters = sdk.stats()["counters"]
        client.close()
    server.terminate()

    p50 = {k: statistics.median(v) for k, v in whole.items()}
    p99 = {k: percentile(v, 0.99) for k, v in whole.items()}
    body = (
        f"{SECTION}\n\n"
        f"`python bench/sdk_routing.py --rounds {args.rounds} --batch {args.batch} --calls {args.calls}`:"
        ' the same call with `model="gpt-4o-mini"` and with `model="flywheel:classify"` (resolved'
        " to a promotion of that same model, so the upstream does the same work), interleaved, in one"
        " process; the routes refresh every 0.5 s meanwhile"
        f" (one SQLite query each). openai {openai.__version__}, Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs.\n\n"
        "| resource method alone, around a no-op | plain model | `flywheel:NAME` | added |\n"
        "|---|---:|---:|---:|\n"
        f"| median of {args.rounds} batches of {args.batch} | {method['plain']:.2f} µs"
        f" | {method['alias']:.2f} µs | **{method['alias'] - method['plain']:+.2f} µs** |\n\n"
        f"Whole calls to `flywheel mock-server`, recording on, {args.calls} of each variant taking turns:\n\n"
        "| variant | median µs | vs plain | p99 µs | vs plain |\n|---|---:|---:|---:|---:|\n"
        f"| plain model | {p50['plain']:.0f} | | {p99['plain']:.0f} | |\n"
        + "".join(
            f"| {label} | {p50[key]:.0f} | {p50[key] - p50['plain']:+.0f} ({p50[key] / p50['plain']:.3f})"
            f" | {p99[key]:.0f} | {p99[key] - p99['plain']:+.0f} ({p99[key] / p99['plain']:.3f}) |\n"
            for key, label in WHOLE_ROWS.items()
        )
        + "\nThe first table is what routing adds on the call path: a dictionary lookup and the"
        " `flywheel_route` tag serialized into the private tag header; no I/O, no lock. On whole calls"
        " the alias costs what any per-call tag costs (the header through `openai`'s request building"
        " and `_prepare_request`, the writer's extra `call_tags` row), plus those microseconds.\n\n"
        f"Counters after the run: `{counters}`\n"
    )
    print(body)
    if args.write:
        update_section(DOC, SECTION, body)


if __name__ == "__main__":
    sys.exit(main())
