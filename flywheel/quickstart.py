"""``flywheel quickstart``: an offline tour from app traffic to validated fine-tuning files.

Starts the mock server on loopback, sends a realistic batch of tagged calls through ``sdk.OpenAI``
and ``sdk.AsyncOpenAI`` (plain, streamed, a tool call, structured output, retried and failing
calls, support tickets of which some are near-copies), flushes, and reports what landed in the
store with the SQL to look at it. Then it runs the flywheel on the ``classify-v2`` traffic: a
dataset, dedup, a relabel by a teacher model (the mock server again), and an export of
train/test files that pass validation; and then the training loop (``quickstart_training``):
below the threshold no job, more traffic, one job launched on the mock provider, polled to
success, its model id recorded; and last the eval (``quickstart_eval``): the base model against the
fine-tuned one on the held-out test split, the report, a promotion, and an app call through
``model="flywheel:triage"`` that reaches the new model. Needs no network and no API key.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sdk import _config

from .train.jobs import TrackedJob

if TYPE_CHECKING:
    from .quickstart_eval import EvalTour

TICKETS = [
    ("billing", "I was charged twice for my October invoice."),
    ("billing", "Can I get a refund for the annual plan I bought yesterday?"),
    ("login", "The password reset email never arrives."),
    ("login", "Two-factor codes are rejected on my new phone."),
    ("bug", "Export to CSV crashes when the report has more than 10k rows."),
    ("bug", "The dashboard shows yesterday's numbers even after refresh."),
    ("other", "Do you have an office in Berlin?"),
    ("other", "How do I add a teammate to my workspace?"),
]

# A category question (the mock server's category rule, docs/mock-server.md): a large model reads the
# descriptions, a small one only the names, so the teacher and the app's model answer differently.
SYSTEM = (
    'You are a support triage assistant. Reply in JSON as {"category": ...} with one category: '
    "billing (invoices, charges, refunds, payment, fees, VAT), login (sign in, logged out, password, "
    "SSO, 2FA, two-factor, locked out, reset link), bug (error, crash, broken, fails) or other."
)

# More tickets, varied the way real traffic is (what went wrong, with what, and the customer's own
# words), and now and then a near-copy of an earlier one (a customer writing again, a word
# changed) for dedup to find.
PROBLEMS = [
    "was charged twice for",
    "cannot download the invoice of",
    "see the wrong VAT number on",
    "need a refund for",
    "got a late fee on",
    "want to split the payment of",
]
SUBJECTS = [
    "the October invoice",
    "my annual plan",
    "order 4471",
    "the five team seats we added",
    "last week's upgrade",
    "our Berlin office account",
]
CONTEXTS = [
    "I already emailed support twice about it.",
    "This is urgent because our audit starts on Friday.",
    "We are on the Pro plan since March.",
    "The card on file ends in 4242.",
    "Our finance team keeps asking me for an answer.",
    "It started right after your billing migration.",
]

LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_invoice",
        "description": "Find an invoice by month.",
        "parameters": {
            "type": "object",
            "properties": {"month": {"type": "string"}},
            "required": ["month"],
        },
    },
}


DATASET = "triage"
DEFAULT_OUT_DIR = "flywheel-export"


@dataclass(frozen=True)
class QuickstartResult:
    database_url: str
    base_url: str
    calls_sent: int
    rows_before: int
    rows_after: int
    errors_seen: int
    manifest: dict[str, Any]
    """The export's manifest.json."""
    job: TrackedJob | None = None
    """The training job the loop launched (``None`` when the thresholds were not met)."""
    eval_tour: EvalTour | None = None
    """The eval, promotion and routed call (``None`` when the pipeline has no fine-tuned model)."""


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def _count_rows(url: str) -> int:
    from sdk._store import create_store_engine, ensure_schema
    from sdk.schema import calls

    engine = create_store_engine(url)
    try:
        if not ensure_schema(engine):
            return 0
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(calls)).scalar_one())
    finally:
        engine.dispose()


def _send_batch(base_url: str, url: str) -> tuple[int, int]:
    """Send the tour's calls; return (requests sent, errors the app saw)."""
    import openai

    import sdk

    sent = errors = 0
    client = sdk.OpenAI(
        api_key="sk-quickstart", base_url=base_url, database_url=url, tags={"app": "support-bot"}
    )
    with sdk.tags(feature="triage"):
        for i, (category, text) in enumerate(TICKETS * 2):
            prompt_id = "classify-v2" if i % 3 else "classify-v1"
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=_messages(text),
                tags={"prompt_id": prompt_id, "expected": category},
            )
            sent += 1
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=_messages(TICKETS[4][1]),
            stream=True,
            stream_options={"include_usage": True},
            tags={"prompt_id": "classify-v2", "mode": "stream"},
        )
        for _ in stream:
            pass
        sent += 1
    with sdk.tags(feature="billing-agent"):
        client.chat.completions.create(
            model="gpt-4o",
            messages=_messages(TICKETS[0][1]),
            tools=[LOOKUP_TOOL],
            tags={"prompt_id": "agent-v1"},
        )
        sent += 1
        client.responses.create(
            model="gpt-4.1-mini", input="Summarize: " + TICKETS[1][1], tags={"prompt_id": "sum-v1"}
        )
        sent += 1
    # One call that succeeds on its third attempt (two rows for the failed attempts), and one that fails.
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=_messages(TICKETS[2][1]),
        extra_headers={"x-mock-fail-attempts": "2"},
        tags={"prompt_id": "classify-v2"},
    )
    sent += 3
    try:
        client.with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini",
            messages=_messages(TICKETS[3][1]),
            extra_headers={"x-mock-status": "400"},
            tags={"prompt_id": "classify-v2"},
        )
    except openai.BadRequestError:
        errors += 1
    sent += 1

    async def async_calls() -> int:
        aclient = sdk.AsyncOpenAI(
            api_key="sk-quickstart", base_url=base_url, database_url=url, tags={"app": "support-bot"}
        )
        async with aclient:
            with sdk.tags(feature="triage", runtime="async"):
                await asyncio.gather(
                    *(
                        aclient.chat.completions.create(
                            model="gpt-4o-mini", messages=_messages(text), tags={"prompt_id": "classify-v2"}
                        )
                        for _, text in TICKETS
                    )
                )
        return len(TICKETS)

    sent += asyncio.run(async_calls())
    with sdk.tags(feature="triage"):
        for text in support_tickets():
            client.chat.completions.create(
                model="gpt-4o-mini", messages=_messages(text), tags={"prompt_id": "classify-v2"}
            )
            sent += 1
    client.close()
    return sent, errors


def support_tickets() -> list[str]:
    """36 distinct tickets (any two differ in at least two of their three parts) and 6 near-copies."""
    tickets: list[str] = []
    for n in range(36):
        problem, subject = n % 6, n // 6
        context = (problem + subject) % 6  # a Latin square: two tickets share at most one part
        tickets.append(f"Hi, I {PROBLEMS[problem]} {SUBJECTS[subject]}. {CONTEXTS[context]}")
        if n % 6 == 5:
            tickets.append(tickets[-3].replace("Hi,", "Hello,").replace(" I ", " we "))
    return tickets


def run_quickstart(
    database_url: str | None = None,
    echo: Callable[[str], Any] = print,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
) -> QuickstartResult:
    """Run the tour against ``database_url`` (default: ``FLYWHEEL_DATABASE_URL`` or ``flywheel.db``),
    writing the exported files into ``out_dir``."""
    import sdk
    from flywheel.mock_server import MockServer

    url = database_url or _config.database_url()
    shown = sa.make_url(url).render_as_string(hide_password=True)
    if url.startswith("postgresql"):
        from flywheel.migrate import migrate

        migrate(url)
    before = _count_rows(url)
    with MockServer() as server:
        echo(f"mock OpenAI-compatible server on {server.base_url}")
        echo(f"store: {shown}")
        sent, errors = _send_batch(server.base_url, url)
        sdk.flush(timeout=60)
        after = _count_rows(url)
        echo(f"sent {sent} HTTP requests through sdk.OpenAI / sdk.AsyncOpenAI; the app saw {errors} error(s)")
        echo(f"rows in `calls`: {before} -> {after}")
        exported = _run_flywheel(url, server.base_url, Path(out_dir), echo)
        sdk.flush(timeout=60)
        job = _run_training(url, server.base_url, Path(out_dir), echo)
        tour = _run_eval(url, server.base_url, Path(out_dir), job, echo)
    return QuickstartResult(url, server.base_url, sent, before, after, errors, exported, job, tour)


def _run_training(url: str, base_url: str, out_dir: Path, echo: Callable[[str], Any]) -> TrackedJob | None:
    """The loop: thresholds, one job on the mock provider, its model id, and the model answering."""
    import sdk

    from .quickstart_training import ask_model, run_training_loop

    def send(tickets: list[str]) -> int:
        client = sdk.OpenAI(
            api_key="sk-quickstart", base_url=base_url, database_url=url, tags={"app": "support-bot"}
        )
        with client, sdk.tags(feature="triage"):
            for text in tickets:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=_messages(text), tags={"prompt_id": "classify-v2"}
                )
        assert sdk.flush(timeout=60)
        return len(tickets)

    job = run_training_loop(url, base_url, out_dir, echo, send)
    if job is not None and job.fine_tuned_model:
        ticket = support_tickets()[0].replace("Hi,", "Good morning,")
        echo(f"$ ask {job.fine_tuned_model}: {ticket!r}")
        echo(f"  {ask_model(base_url, url, job.fine_tuned_model, ticket, SYSTEM)!r}")
        echo("  (the mock's stand-in model answers with the reply it was trained on for the closest ticket)")
    sdk.flush(timeout=60)
    return job


def _run_eval(
    url: str, base_url: str, out_dir: Path, job: TrackedJob | None, echo: Callable[[str], Any]
) -> EvalTour | None:
    """The last part, on the model this run's job made."""
    from .quickstart_eval import run_eval_tour

    if job is None or not job.fine_tuned_model:
        # An earlier run's model lived in that run's mock server (its models are kept in memory).
        echo("")
        echo("No new fine-tuned model this run, so no eval: start with a fresh store (--db) to see it.")
        return None
    return run_eval_tour(url, base_url, out_dir / "flywheel.toml", job.fine_tuned_model, SYSTEM, echo)


def _run_flywheel(url: str, base_url: str, out_dir: Path, echo: Callable[[str], Any]) -> dict[str, Any]:
    """The flywheel on the classify-v2 traffic: dataset, dedup, relabel, export. The manifest."""
    from flywheel.datasets import create_dataset
    from flywheel.dedup import dedup_dataset
    from flywheel.export import export_dataset
    from flywheel.query import CallFilter
    from flywheel.relabel import relabel_dataset

    echo("")
    echo(f"$ flywheel dataset create {DATASET} --tag prompt_id=classify-v2 --status ok")
    added = create_dataset(url, DATASET, CallFilter(tags=(("prompt_id", "classify-v2"),), status="ok"))
    echo(f"  {added.added} new entries, {added.dataset.entries} in all (version {added.dataset.version})")
    echo(f"$ flywheel dedup {DATASET}")
    deduped = dedup_dataset(url, DATASET)
    echo(
        f"  {deduped.clusters} clusters: took out {deduped.duplicates} exact and "
        f"{deduped.near_duplicates} near-duplicates, {deduped.entries - deduped.removed} entries left"
    )
    echo(f"$ flywheel relabel {DATASET} --model gpt-4o   (the teacher: the mock server again)")
    relabeled = relabel_dataset(url, DATASET, model="gpt-4o", base_url=base_url, api_key="sk-quickstart")
    echo(f"  {relabeled.relabeled} entries relabeled, {relabeled.teacher_calls} teacher calls recorded")
    echo(f"$ flywheel export {DATASET} --out {out_dir} --test-fraction 0.2")
    result = export_dataset(url, DATASET, out_dir, test_fraction=0.2)
    counts = result.counts
    echo(
        f"  {counts['train']} train and {counts['test']} test examples, "
        f"{counts['preference_train'] + counts['preference_test']} preference pairs; validated, "
        f"manifest in {out_dir / 'manifest.json'}"
    )
    return result.manifest


NEXT_STEPS = """
Look at them:
  flywheel logs --limit 10
  flywheel logs --tag prompt_id=classify-v2 --status ok
  flywheel stats --by model --by tag:prompt_id
  flywheel dataset show triage
  head -c 600 flywheel-export/train.jsonl

Or with SQL (sqlite3 flywheel.db):
  SELECT created_at, model, status_code, latency_ms, cost_usd FROM calls ORDER BY created_at DESC LIMIT 10;
  SELECT t.value AS prompt_id, count(*), sum(c.cost_usd) FROM calls c
    JOIN call_tags t ON t.call_id = c.id AND t.key = 'prompt_id' GROUP BY t.value;
  SELECT last_message, reply FROM chat_calls LIMIT 5;
  SELECT version, action, details FROM dataset_versions;

The training loop:
  flywheel jobs triage
  flywheel jobs show 1
  flywheel config check --config flywheel-export/flywheel.toml
  SELECT id, status, fine_tuned_model, train_examples, estimated_cost_usd FROM fine_tune_jobs;

The eval, the promotion and the route (open flywheel-export/eval.html in a browser):
  flywheel eval report triage --config flywheel-export/flywheel.toml
  flywheel promote triage --history --config flywheel-export/flywheel.toml
  flywheel promote triage --rollback --config flywheel-export/flywheel.toml
  SELECT pipeline, model, previous_model, action, reason FROM promotions;
  SELECT c.model, count(*) FROM calls c JOIN call_tags t ON t.call_id = c.id
    WHERE t.key = 'flywheel_route' AND t.value = 'triage' GROUP BY c.model;

Review by hand:
  flywheel review export triage --out review.jsonl   # edit the "output" of some lines, then:
  flywheel review import triage review.jsonl
"""
