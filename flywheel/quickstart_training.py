"""The quickstart's second half: the training loop, offline, printed as it happens.

A pipeline over the quickstart's ``classify-v2`` traffic (dedup, a relabel by the teacher, export)
is written to ``flywheel.toml`` (in the export directory), pointed at the quickstart's mock server
as its teacher, fine-tuning provider and eval endpoint. One ``watch`` pass finds too few
examples; more traffic arrives; the next pass crosses the threshold and launches one job; passes
poll it through the mock provider's timed lifecycle to ``succeeded``; the fine-tuned model's id is
recorded, and the model answers a ticket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .train.config import load_config
from .train.jobs import TrackedJob, list_jobs
from .train.poll import poll_jobs
from .train.watch import Watcher, decisions_to

__all__ = ["ask_model", "login_tickets", "run_training_loop", "temporary_env"]

PIPELINE = "triage"
KEY_ENV = "FLYWHEEL_QUICKSTART_API_KEY"
MIN_EXAMPLES = 50
POLL_EVERY_S = 0.5
WAIT_FOR_JOB_S = 120.0

# More traffic: login and account tickets, a different vocabulary from the billing ones, so dedup
# keeps them (any two share at most one of their three parts). One context in six names the
# category, so a small model that reads only the category names (the mock's rule) gets some right.
LOGIN_PROBLEMS = [
    "cannot sign in to",
    "never receive the reset link for",
    "get locked out of",
    "see an SSO error on",
    "lost the 2FA device for",
    "was logged out twice from",
]
LOGIN_SUBJECTS = [
    "the admin console",
    "my work account",
    "the mobile app",
    "our staging workspace",
    "the API dashboard",
    "my personal profile",
]
LOGIN_CONTEXTS = [
    "Nothing changed on our side.",
    "I tried three different browsers.",
    "The whole team is blocked right now.",
    "Our IT department says the domain is verified.",
    "It worked fine until this morning.",
    "The login page just keeps reloading.",
]

CONFIG = """\
# Written by `flywheel quickstart`: the pipeline that trains on the triage traffic.
[pipelines.{pipeline}]
filter = {{ tags = {{ prompt_id = "classify-v2" }}, status = "ok" }}
dedup = true
relabel = {{ model = "gpt-4o", base_url = "{base_url}", api_key_env = "{key_env}" }}   # the teacher
export = {{ test_fraction = 0.2 }}

[pipelines.{pipeline}.train]
provider = "openai"
base_url = "{base_url}"            # the mock server: a stand-in, nothing is trained
api_key_env = "{key_env}"
base_model = "gpt-4o-mini-2024-07-18"
min_examples = {min_examples}
retrain_after_new = 100
hyperparameters = {{ n_epochs = 3 }}
suffix = "triage"
max_cost_usd = 5

[pipelines.{pipeline}.eval]
base_url = "{base_url}"            # the candidates answer on the mock server too
api_key_env = "{key_env}"
"""


def login_tickets() -> list[str]:
    return [
        f"Hello, I {LOGIN_PROBLEMS[n % 6]} {LOGIN_SUBJECTS[n // 6]}. {LOGIN_CONTEXTS[(n % 6 + n // 6) % 6]}"
        for n in range(36)
    ]


class _Echo(logging.Handler):
    """``flywheel.watch``'s log lines (its decisions), echoed indented as they happen."""

    def __init__(self, echo: Callable[[str], Any]) -> None:
        super().__init__()
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        self.echo(f"  {record.getMessage()}")


@contextlib.contextmanager
def temporary_env(name: str, value: str) -> Iterator[None]:
    """Set environment variable ``name`` to ``value`` for the block; the old value after it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def run_training_loop(
    url: str,
    base_url: str,
    out_dir: Path,
    echo: Callable[[str], Any],
    send: Callable[[list[str]], int],
) -> TrackedJob | None:
    """The loop on the quickstart's store; ``send(tickets)`` records app calls. The job it made."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "flywheel.toml"
    config_path.write_text(
        CONFIG.format(pipeline=PIPELINE, base_url=base_url, key_env=KEY_ENV, min_examples=MIN_EXAMPLES)
    )
    before = {job.id for job in list_jobs(url, PIPELINE)}
    echo("")
    echo(f"The training loop ({config_path}: min_examples = {MIN_EXAMPLES}, the mock server as provider)")
    with temporary_env(KEY_ENV, "sk-quickstart"), decisions_to(_Echo(echo)):
        watcher = Watcher(url, load_config(config_path))
        echo(f"$ flywheel watch --once --config {config_path}")
        watcher.run_pass()
        sent = send(login_tickets())
        echo(f"... the app sends {sent} more classify-v2 calls")
        echo(f"$ flywheel watch --once --config {config_path}")
        watcher.run_pass()
        new = [job for job in list_jobs(url, PIPELINE) if job.id not in before]
        if new:
            echo(f"$ flywheel watch --config {config_path}   (polling every {POLL_EVERY_S}s until it ends)")
        deadline = time.monotonic() + WAIT_FOR_JOB_S
        while new and not new[0].finished and time.monotonic() < deadline:
            time.sleep(POLL_EVERY_S)
            poll_jobs(url, pipeline=PIPELINE)
            new = [job for job in list_jobs(url, PIPELINE) if job.id not in before]
    if not new:
        echo("  no job launched this time (the thresholds say why above)")
        return None
    job = new[0]
    echo(f"$ flywheel jobs {PIPELINE}")
    echo(
        f"  job {job.id}: {job.status}, {job.train_examples} examples, estimated "
        f"${job.estimated_cost_usd or 0:.4f}, model {job.fine_tuned_model}"
    )
    return job


def ask_model(base_url: str, url: str, model: str, ticket: str, system: str) -> str:
    """One call to the fine-tuned model through the SDK (recorded like any other)."""
    import sdk

    client = sdk.OpenAI(api_key="sk-quickstart", base_url=base_url, database_url=url)
    with client:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": ticket}],
            tags={"prompt_id": "quickstart-ft"},  # type: ignore[call-overload]
        )
    return reply.choices[0].message.content or ""
