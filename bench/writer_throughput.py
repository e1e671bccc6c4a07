"""Sustained throughput and memory of the SDK's background writer, into SQLite and PostgreSQL.

The whole writer path runs as in production: ``Recorder.submit`` on the producing thread, then on
the writer thread ``build_record`` (parse, assemble streams, hash, price) and ``insert_batch``.
Records are chat completions with 2-4 KB bodies: 80 % plain JSON, 20 % streamed (SSE, assembled by
the writer). The producer submits as fast as the queue takes them, pausing while it is
three-quarters full (an app would otherwise see drops), so the rate measured is the writer's.

Each store runs in its own process so that peak RSS (``ru_maxrss``) is that run's. The PostgreSQL
run creates its own database (migrated with ``sdk._migrate.upgrade``) and drops it afterwards.
For the breakdown, ``build_record`` alone and ``insert_batch`` alone are timed on the same records.

    python bench/writer_throughput.py --records 100000 --write   # updates docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import PERFORMANCE_DOC as DOC  # noqa: E402  (bench/ is on sys.path when run as a script)
from _report import update_section  # noqa: E402
from _stores import run_child, scratch_store  # noqa: E402

SECTION = "## Writer throughput"
TARGET = 20_000
VARIANTS = 64

SYSTEM = "You are the support assistant of Acme Billing. Answer briefly, cite the invoice number. "
QUESTIONS = [
    "I was charged twice for invoice INV-{n} and the second charge is still pending. ",
    "Please switch my plan for account {n} to annual billing starting next month. ",
    "The PDF of invoice {n} shows the wrong VAT number, can you send a corrected one? ",
    "Why did my usage-based charge for project {n} double compared to last month? ",
]


def make_exchanges(count: int) -> list[Any]:
    """``count`` distinct bodies (2-4 KB): 4 in 5 plain JSON, 1 in 5 streamed as SSE chunks."""
    from sdk._exchange import Exchange

    exchanges = []
    for n in range(count):
        question = QUESTIONS[n % len(QUESTIONS)].format(n=1000 + n) * (4 + n % 5)
        messages = [{"role": "system", "content": SYSTEM * 8}, {"role": "user", "content": question}]
        stream = n % 5 == 0
        request = {"model": "gpt-4o-mini", "messages": messages, "temperature": 0.3, "stream": stream}
        answer = (
            f"Thanks for writing about {1000 + n}. I checked the account and the charge was reversed. "
            * (6 + n % 5)
        )
        usage = {"prompt_tokens": 380 + n, "completion_tokens": 90 + n % 50, "total_tokens": 470 + n + n % 50}
        if stream:
            pieces = answer.split(" ")
            words = [" ".join(pieces[i : i + 8]) + " " for i in range(0, len(pieces), 8)]
            events: list[dict[str, Any]] = [
                {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion.chunk",
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
                }
                for w in words
            ]
            events.append({"id": f"chatcmpl-{n}", "choices": [], "usage": usage, "model": "gpt-4o-mini"})
            body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
            content_type = "text/event-stream"
        else:
            response = {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
            chunks = [orjson.dumps(response)]
            content_type = "application/json"
        exchanges.append(
            Exchange(
                started_at=time.time(),
                method="POST",
                url="https://api.openai.com/v1/chat/completions",
                request_content_type="application/json",
                request_body=orjson.dumps(request),
                tags={"prompt_id": f"support-{n % 7}", "feature": "billing"},
                status_code=200,
                response_content_type=content_type,
                request_id=f"req_{n}",
                response_chunks=chunks,
                response_size=sum(map(len, chunks)),
                latency_ms=640.0,
                ttft_ms=80.0 if stream else None,
            )
        )
    return exchanges


def clone(ex: Any, n: int) -> Any:
    """A new exchange with its own copy of ``ex``'s body bytes, as each call of an app has."""
    from sdk._exchange import Exchange

    return Exchange(
        started_at=time.time(),
        method=ex.method,
        url=ex.url,
        request_content_type=ex.request_content_type,
        request_body=bytes(bytearray(ex.request_body)),
        tags={**ex.tags, "n": str(n)},
        status_code=ex.status_code,
        response_content_type=ex.response_content_type,
        request_id=ex.request_id,
        response_chunks=[bytes(bytearray(chunk)) for chunk in ex.response_chunks],
        response_size=ex.response_size,
        latency_ms=ex.latency_ms,
        ttft_ms=ex.ttft_ms,
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_store(url: str, records: int, spool_dir: Path) -> dict[str, Any]:
    """One measurement in this process: writer throughput, then the two stages on their own."""
    from sdk import _health
    from sdk._migrate import upgrade
    from sdk._pricing import PriceTable
    from sdk._records import build_record
    from sdk._store import create_store_engine, insert_batch
    from sdk._writer import Recorder

    upgrade(url)
    templates = make_exchanges(VARIANTS)
    body_bytes = sum(len(t.request_body) + sum(map(len, t.response_chunks)) for t in templates) / VARIANTS
    recorder = Recorder(url, spool_dir=spool_dir)
    recorder.submit(clone(templates[0], -1))  # engine, schema check, price table: not measured
    assert recorder.flush(timeout=60)
    rss_before = peak_rss_mb()
    pause_at = recorder.max_queue_records * 3 // 4
    pauses = 0
    started = time.perf_counter()
    for n in range(records):
        while recorder.queued_records >= pause_at:
            pauses += 1
            time.sleep(0.002)
        recorder.submit(clone(templates[n % VARIANTS], n))
    assert recorder.flush(timeout=600)
    elapsed = time.perf_counter() - started
    peak_rss = peak_rss_mb()
    counters = _health.snapshot()
    recorder.shutdown(timeout=60)

    # The stages alone, on the same records, in batches as the writer makes them.
    prices = PriceTable.load()
    sample = [clone(templates[n % VARIANTS], n) for n in range(min(records, 20_000))]
    t0 = time.perf_counter()
    rows = [build_record(ex, prices) for ex in sample]
    build_rate = len(sample) / (time.perf_counter() - t0)
    engine = create_store_engine(url)
    t0 = time.perf_counter()
    for start in range(0, len(rows), 2000):
        insert_batch(engine, rows[start : start + 2000])  # type: ignore[arg-type]
    insert_rate = len(rows) / (time.perf_counter() - t0)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM calls")).scalar_one()
    engine.dispose()
    return {
        "records": records,
        "seconds": elapsed,
        "rate": records / elapsed,
        "peak_rss_mb": peak_rss,
        "rss_before_mb": rss_before,
        "avg_body_bytes": body_bytes,
        "stored": stored - len(rows) - 1,
        "dropped": counters.get("dropped_queue_full", 0),
        "spooled": counters.get("rows_spooled", 0),
        "producer_pauses": pauses,
        "build_rate": build_rate,
        "insert_rate": insert_rate,
    }


def child(store: str, records: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, scratch_store(store, Path(tmp)) as url:
        return run_store(url, records, Path(tmp) / "spool")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--write", action="store_true", help=f"update '{SECTION}' in docs/performance.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.records)))
        return 0

    results: dict[str, dict[str, Any]] = {}
    for store in args.stores.split(","):
        result = run_child(__file__, store, "--records", str(args.records))
        if result is None:
            return 1
        results[store] = result

    lines = [
        "| store | records | records/s | peak RSS (MB) | RSS before (MB) | dropped | "
        "`build_record` alone (rec/s) | `insert_batch` alone (rec/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for store, r in results.items():
        lines.append(
            f"| {store} | {r['records']:,} | {r['rate']:,.0f} | {r['peak_rss_mb']:.0f} |"
            f" {r['rss_before_mb']:.0f} | {r['dropped']} | {r['build_rate']:,.0f} | {r['insert_rate']:,.0f} |"
        )
    body_bytes = next(iter(results.values()))["avg_body_bytes"]
    import sqlalchemy

    body = (
        f"{SECTION}\n\n"
        f"`python bench/writer_throughput.py --records {args.records}`: chat completions with "
        f"{body_bytes / 1024:.1f} KB of request + response body on average (2-3.6 KB), 1 in 5 streamed "
        "(SSE, assembled by the writer), submitted as fast as the queue takes them (the producer pauses at "
        "3/4 of `FLYWHEEL_MAX_QUEUE_RECORDS`, default 10,000) and written through `build_record` and "
        "`insert_batch` (2,000 rows per transaction) until `flush()` returns. Peak RSS is the benchmark "
        'process at the end of the run; "RSS before" is after imports and set-up, so the difference is '
        "what the queue, the batches in flight and the drivers hold. The last two columns time each "
        "stage alone, on one thread, on the same records; the writer runs them on two threads, building "
        "a batch while the last one is inserted. "
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"{os.cpu_count()} CPUs shared with the database server. Target: >= {TARGET:,} records/s with "
        "bounded memory.\n\n" + "\n".join(lines) + "\n"
    )
    print(body)
    if args.write:
        update_section(DOC, SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
