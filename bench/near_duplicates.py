"""Time, peak memory and accuracy of near-duplicate clustering on synthetic templated inputs.

Each input is a chat request as an app sends it: a 9-line system prompt (about 700 characters,
the same in every input), then a user message ``"Classify this support ticket:\\n{ticket}"``
whose ticket is 12-40 words drawn from a 3,000-word vocabulary. One input in ten is a near-copy
of an earlier one, with one or two words replaced. Inputs are generated lazily and fed as a
one-pass iterator, as ``flywheel dedup`` streams them from the store.

Reported per size: the time to build the compared texts (``input_text``), the time of
``near_duplicate_clusters`` (boilerplate learning, sketching, LSH, components), peak RSS of the
process, the share of near-copies found in their original's cluster (recall), and the number of
clusters holding two originals (false merges). Each size runs in its own process so that peak
RSS (``ru_maxrss``) is that run's. Prints a markdown table; writes nothing.

    python bench/near_duplicates.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flywheel.near_duplicates import DEFAULT_THRESHOLD, input_text, near_duplicate_clusters  # noqa: E402

SYSTEM = "\n".join(
    [
        "You are the ticket triage assistant of Acme Parcel Services.",
        "Read the customer's ticket and answer with exactly one queue name.",
        "Queues: billing, delivery, damage, returns, account, other.",
        "Use billing for charges, invoices, refunds of fees and payment methods.",
        "Use delivery for late, missing or misrouted parcels and tracking questions.",
        "Use damage for parcels that arrived broken, wet, opened or incomplete.",
        "Use returns for sending items back and return labels.",
        "Use account for logins, addresses, notification settings and personal data.",
        "Answer other when none fits. Never explain your answer.",
    ]
)
NEAR_COPY_SHARE = 0.1


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)]


def requests(count: int, seed: int = 7) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    """``(index, original_index, messages)``; ``original_index`` is where a near-copy comes from."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    recent: list[tuple[int, list[str]]] = []
    for index in range(count):
        if recent and rng.random() < NEAR_COPY_SHARE:
            original, ticket = rng.choice(recent)
            ticket = list(ticket)
            for _ in range(rng.randint(1, 2)):
                ticket[rng.randrange(len(ticket))] = rng.choice(words)
        else:
            original, ticket = index, [rng.choice(words) for _ in range(rng.randint(12, 40))]
            recent.append((index, ticket))
            if len(recent) > 1000:
                recent.pop(0)
        user = "Classify this support ticket:\n" + " ".join(ticket)
        yield index, original, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def run(count: int) -> dict[str, Any]:
    originals: list[int] = []
    seconds = {"generating": 0.0, "input_text": 0.0}

    def items() -> Iterator[tuple[int, str]]:
        generated = requests(count)
        while True:
            started = time.perf_counter()
            try:
                index, original, messages = next(generated)
            except StopIteration:
                return
            middle = time.perf_counter()
            text = input_text(messages)
            seconds["generating"] += middle - started
            seconds["input_text"] += time.perf_counter() - middle
            originals.append(original)
            yield index, text

    started = time.perf_counter()
    clusters = near_duplicate_clusters(items())
    total = time.perf_counter() - started
    cluster_of = {key: number for number, cluster in enumerate(clusters) for key in cluster}
    copies = [index for index, original in enumerate(originals) if original != index]
    found = sum(
        1 for index in copies if index in cluster_of and cluster_of.get(originals[index]) == cluster_of[index]
    )
    false_merges = sum(1 for cluster in clusters if len({originals[key] for key in cluster}) > 1)
    return {
        "inputs": count,
        "input_text_s": round(seconds["input_text"], 1),
        # The synthetic generator runs inside the call; its time is not dedup's.
        "clustering_s": round(total - seconds["generating"] - seconds["input_text"], 1),
        "clusters": len(clusters),
        "recall": round(found / max(1, len(copies)), 4),
        "false_merges": false_merges,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(run(arguments.child)))
        return 0
    rows = []
    for size in arguments.sizes:
        output = subprocess.run(
            [sys.executable, __file__, "--child", str(size)], check=True, capture_output=True, text=True
        ).stdout
        rows.append(json.loads(output))
    machine = platform.processor() or platform.machine()
    print(f"Near-duplicate clustering, threshold {DEFAULT_THRESHOLD}, {machine}, {os.cpu_count()} cores")
    print()
    print(
        "| inputs | input_text (s) | clustering (s) | clusters | near-copy recall | false merges "
        "| peak RSS (MiB) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['inputs']:,} | {row['input_text_s']} | {row['clustering_s']} | {row['clusters']:,} | "
            f"{row['recall']:.2%} | {row['false_merges']} | {row['peak_rss_mib']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
