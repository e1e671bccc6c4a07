"""Helpers for the training tests: a pipeline config on disk, traffic through the SDK, the store's rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import openai
import sqlalchemy as sa

import sdk

API_KEY_ENV = "FLYWHEEL_TEST_FT_KEY"
API_KEY = "sk-ft-SECRET-7f3a9c-never-stored"
BASE_MODEL = "gpt-4o-mini-2024-07-18"
TOPICS = ["invoice", "password", "export", "dashboard", "refund", "teammate", "login", "billing"]


def write_config(
    directory: Path,
    base_url: str,
    *,
    min_examples: int = 20,
    retrain_after_new: int = 10,
    extra_train: str = "",
    extra_pipeline: str = "",
) -> Path:
    """A flywheel.toml with one pipeline, ``classify``, training on the mock server."""
    path = directory / "flywheel.toml"
    path.write_text(
        f"""
[pipelines.classify]
filter = {{ tags = {{ prompt_id = "classify" }}, status = "ok" }}
dedup = {{ exact = true }}
export = {{ test_fraction = 0.2 }}
{extra_pipeline}

[pipelines.classify.train]
provider = "openai"
base_url = "{base_url}"
api_key_env = "{API_KEY_ENV}"
base_model = "{BASE_MODEL}"
min_examples = {min_examples}
retrain_after_new = {retrain_after_new}
hyperparameters = {{ n_epochs = 2 }}
suffix = "classify"
create_settle_s = 0.2
{extra_train}
"""
    )
    return path


def log_traffic(db_url: str, base_url: str, start: int, count: int) -> None:
    """``count`` distinct classify calls through ``sdk.OpenAI`` to the mock server, flushed."""
    client = sdk.OpenAI(api_key="sk-app-key", base_url=base_url, database_url=db_url)
    with client:
        for n in range(start, start + count):
            topic = TOPICS[n % len(TOPICS)]
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": "Classify the support ticket."},
                    {"role": "user", "content": f"Ticket {n}: my {topic} does not work since update {n * 7}"},
                ],
                extra_headers={"x-mock-words": "1"},
                tags={"prompt_id": "classify"},  # type: ignore[call-overload]
            )
    assert sdk.flush(timeout=30)


def rows(db_url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def provider_jobs(base_url: str, **metadata: str) -> list[Any]:
    """The mock provider's jobs, newest first (with these metadata values)."""
    client = openai.OpenAI(api_key="sk-test", base_url=base_url)
    with client:
        query = {f"metadata[{key}]": value for key, value in metadata.items()}
        return list(client.fine_tuning.jobs.list(limit=100, extra_query=query))


def until(condition: Callable[[], Any], timeout: float = 30.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


def flywheel_process(args: Iterable[str], cwd: Path, db_url: str, **popen: Any) -> subprocess.Popen[str]:
    """``flywheel ARGS`` as its own process (the console script's code, by ``-m flywheel``)."""
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": db_url, API_KEY_ENV: API_KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "flywheel", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def every_text_in_store(db_url: str) -> str:
    """Every value of every row of every table, as text (to look for secrets)."""
    engine = sa.create_engine(db_url)
    parts: list[str] = []
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    parts.extend(str(value) for value in row)
    finally:
        engine.dispose()
    return "\n".join(parts)
