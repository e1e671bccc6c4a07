"""Wall time and peak memory of the flywheel's steps over many logged calls, on SQLite and PostgreSQL.

Synthetic traffic, as the SDK records it: chat completions of a support app with one long system
prompt (~560 characters) and a user message of a templated opening and 12-40 words of the
customer's own (from a 3,000-word vocabulary); one call in ten is a near-copy of an earlier one
(a word or two changed) and one in twenty an exact repeat; two
``prompt_id`` tags, of which the dataset takes one (~80 % of the calls). Rows are written straight
into the store with ``sdk._store.insert_batch`` (not timed), then analyzed on PostgreSQL (what
autovacuum does a minute after such a load; it is off on this machine's server). Then, timed one
after the other, as a user runs them (with the CLI's default of one worker process per CPU):

    flywheel dataset create  (the filter, pushed down to the database: INSERT ... SELECT)
    flywheel dedup           (exact and near-duplicate clusters; non-representatives removed)
    flywheel export          (stable split, chat-format lines, validation with token counts, manifest)

Each size and store runs in its own process, so peak RSS (``ru_maxrss``) is that run's; it is taken
after loading (the baseline) and at the end.

    python bench/flywheel_scale.py --sizes 100000 1000000 --stores sqlite,postgresql --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import PERFORMANCE_DOC as DOC  # noqa: E402  (bench/ is on sys.path when run as a script)
from _report import update_section  # noqa: E402
from _stores import run_child, scratch_store  # noqa: E402

SECTION = "## Flywheel steps at scale"
LOAD_BATCH = 5000
T0 = datetime(2026, 10, 1, tzinfo=UTC)

SYSTEM = (
    "You are the support assistant of Acme Parcel Services. Answer the customer in two or three "
    "short sentences. Be friendly and precise. Never promise a delivery date you cannot see in the "
    "tracking data. If the customer asks for a refund, explain the refund policy: parcels lost for "
    "more than 10 days are refunded in full, damaged parcels need a photo. Sign with 'Acme Support'. "
    "Do not answer questions about other companies. Reply in the customer's language."
)
OPENINGS = [
    "Hello, about my parcel {n}:",
    "Hi team, parcel {n} again.",
    "Question on shipment {n}.",
    "Order {n} problem:",
]
SYLLABLES = ["ka", "lo", "mi", "ne", "so", "ta", "ri", "vu", "pe", "do", "gi", "ba", "zu", "fe", "ho"]
VOCABULARY = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES][:3000]
"""3,000 made-up words: the customers' own words, so that two messages share little by chance."""
REPLY = "Thanks for reaching out about parcel {n}. I have checked the tracking data and {what}. Acme Support"
WHAT = ["opened a search with the depot", "booked a redelivery", "started a refund", "updated the address"]


def synthetic_rows(count: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """``count`` ``calls`` rows (with tags) as the SDK's writer makes them, oldest first."""
    rng = random.Random(seed)
    seen: list[str] = []
    for index in range(count):
        roll = rng.random()
        if seen and roll < 0.05:
            prompt = rng.choice(seen)  # an exact repeat
        elif seen and roll < 0.15:
            words = rng.choice(seen).split(" ")
            for _ in range(rng.choice((1, 2))):
                words[rng.randrange(len(words))] = rng.choice(VOCABULARY)
            prompt = " ".join(words)  # a near-copy
        else:
            words = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randrange(12, 40)))
            prompt = rng.choice(OPENINGS).format(n=f"AP{rng.randrange(10**8):08d}") + " " + words
        if len(seen) < 50_000:
            seen.append(prompt)
        else:
            seen[rng.randrange(len(seen))] = prompt
        request = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
            "temperature": 0.2,
        }
        reply = REPLY.format(n=f"AP{index:08d}", what=rng.choice(WHAT))
        response = {
            "id": f"chatcmpl-{index}",
            "object": "chat.completion",
            "created": 1_790_000_000 + index,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 160, "completion_tokens": 30, "total_tokens": 190},
        }
        at = T0 + timedelta(seconds=index)
        request_text = orjson.dumps(request)
        yield {
            "id": f"{int(at.timestamp() * 1000):012x}{index:020x}",
            "created_at": at,
            "method": "POST",
            "base_url": "https://api.openai.com",
            "endpoint": "/chat/completions",
            "model": "gpt-4o-mini",
            "request": request_text.decode(),
            "response": orjson.dumps(response).decode(),
            "status_code": 200,
            "stream": False,
            "complete": True,
            "attempt": 0,
            "latency_ms": 420.0,
            "prompt_tokens": 160,
            "completion_tokens": 30,
            "total_tokens": 190,
            "cost_usd": 0.0000420,
            "input_hash": _input_hash(request),
            "tags": {"prompt_id": "support-v3" if rng.random() < 0.8 else "support-v2", "app": "parcels"},
        }


def _input_hash(request: dict[str, Any]) -> str:
    from sdk._hashing import input_hash

    return str(input_hash(request))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load(url: str, count: int) -> float:
    import sqlalchemy as sa

    from sdk._migrate import upgrade
    from sdk._store import create_store_engine, insert_batch

    upgrade(url)
    engine = create_store_engine(url)
    started = time.perf_counter()
    batch: list[dict[str, Any]] = []
    try:
        for row in synthetic_rows(count):
            batch.append(row)
            if len(batch) == LOAD_BATCH:
                insert_batch(engine, batch)
                batch = []
        if batch:
            insert_batch(engine, batch)
        if engine.dialect.name == "postgresql":
            # What autovacuum does on a default server a minute after such a load (it is off on
            # this machine's): without statistics the planner takes `calls` for a small table.
            with engine.connect() as conn:
                conn.execute(sa.text("ANALYZE calls, call_tags"))
                conn.commit()
    finally:
        engine.dispose()
    return time.perf_counter() - started


def run_steps(url: str, count: int, out_dir: Path) -> dict[str, Any]:
    from flywheel.datasets import create_dataset
    from flywheel.dedup import dedup_dataset
    from flywheel.export import export_dataset
    from flywheel.parallel import default_workers
    from flywheel.query import CallFilter

    load_s = load(url, count)
    baseline = peak_rss_mb()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    created = create_dataset(url, "support", CallFilter(tags={"prompt_id": "support-v3"}, status="ok"))
    timings["dataset create"] = time.perf_counter() - started
    entries = created.added
    started = time.perf_counter()
    removed = dedup_dataset(url, "support", workers=default_workers()).removed
    timings["dedup"] = time.perf_counter() - started
    started = time.perf_counter()
    exported = export_dataset(
        url, "support", out_dir, base_model="gpt-4o-mini-2024-07-18", workers=default_workers()
    )
    timings["export"] = time.perf_counter() - started
    return {
        "calls": count,
        "entries": entries,
        "removed": removed,
        "train": exported.counts["train"],
        "test": exported.counts["test"],
        "load_s": load_s,
        "timings": timings,
        "total_s": sum(timings.values()),
        "rss_baseline_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
    }


def child(store: str, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, scratch_store(store, Path(tmp)) as url:
        return run_steps(url, count, Path(tmp) / "export")


def render(results: list[dict[str, Any]]) -> str:
    """The performance.md section for these runs."""
    steps = list(results[0]["timings"])
    lines = [
        "| store | calls | entries | removed by dedup | train / test | "
        + " | ".join(f"{step} (s)" for step in steps)
        + " | total (s) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(steps) + "---:|---:|",
    ]
    for r in results:
        cells = " | ".join(f"{r['timings'][step]:.1f}" for step in steps)
        lines.append(
            f"| {r['store']} | {r['calls']:,} | {r['entries']:,} | {r['removed']:,} "
            f"| {r['train']:,} / {r['test']:,} | {cells} | **{r['total_s']:.1f}** | {r['peak_rss_mb']:.0f} |"
        )
    sizes = " ".join(str(size) for size in sorted({r["calls"] for r in results}))
    return (
        f"{SECTION}\n\n"
        f"`python bench/flywheel_scale.py --sizes {sizes}`: synthetic support traffic (one long system "
        "prompt, a templated opening and 12-40 words of the customer's own, 10 % near-copies, 5 % exact "
        "repeats), loaded into the store untimed; then `dataset create` (a tag and status filter, ~80 % of "
        "the calls), `dedup` (exact and near-duplicates, the sketches in one worker process per CPU) and "
        "`export` (split, chat-format lines, validation with exact token counts, manifest; one worker "
        "process per CPU), as the CLI runs them, timed one after the other, each size and store in its "
        "own process; on PostgreSQL `ANALYZE` runs after the load, as autovacuum would. Peak RSS is the "
        f"whole process's. Python {platform.python_version()}, {os.cpu_count()} CPUs shared with the "
        "database server. Target at 1,000,000 calls: <= 120 s and <= 2 GiB.\n\n" + "\n".join(lines) + "\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--write", action="store_true", help=f"update '{SECTION}' in docs/performance.md")
    parser.add_argument(
        "--results", metavar="FILE", help="also append each run's figures to FILE (JSON Lines)"
    )
    parser.add_argument(
        "--render", action="store_true", help="print (and --write) the section from --results"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sizes[0])))
        return 0
    results = (
        [json.loads(line) for line in Path(args.results).read_text().splitlines()] if args.render else []
    )
    for size in [] if args.render else args.sizes:
        for store in args.stores.split(","):
            result = run_child(__file__, store, "--sizes", str(size))
            if result is None:
                return 1
            result["store"] = store
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
            if args.results:
                with Path(args.results).open("a") as saved:
                    saved.write(json.dumps(result) + "\n")
    body = render(sorted(results, key=lambda r: (r["calls"], r["store"] != "sqlite")))
    print(body)
    if args.write:
        update_section(DOC, SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
