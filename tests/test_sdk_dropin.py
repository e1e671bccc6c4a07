"""The app sees exactly what plain ``openai`` gives it; tags behave as documented; secrets stay out;
records survive process exit and ``os.fork()``."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import types
import warnings
from pathlib import Path
from typing import Any

import openai
import pytest
from sdk_helpers import API_KEY, fetch_calls, prepare_store

import sdk
from sdk import _health
from sdk._tags import coerce_tags, merge_tags

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def store(db_url: str) -> str:
    prepare_store(db_url)
    return db_url


def test_public_api_is_exported() -> None:
    public = {
        n for n, v in vars(sdk).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert set(sdk.__all__) == public | {"__version__"}


def test_same_objects_and_exceptions_as_plain_openai(mock_server: Any, store: str) -> None:
    with (
        openai.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, max_retries=0) as plain,
        sdk.OpenAI(
            api_key=API_KEY, base_url=mock_server.base_url, max_retries=0, database_url=store
        ) as recording,
    ):
        _same_objects_and_exceptions(plain, recording)


def _same_objects_and_exceptions(plain: openai.OpenAI, recording: openai.OpenAI) -> None:
    for client in (plain, recording):
        assert isinstance(client.chat.completions, openai.resources.chat.Completions)
    a = plain.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    b = recording.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert type(a) is type(b)
    assert a.choices[0].message == b.choices[0].message
    assert a.usage == b.usage
    sa = plain.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    sb = recording.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert type(sa) is type(sb)
    assert [c.choices[0].delta.content for c in sa if c.choices] == [
        c.choices[0].delta.content for c in sb if c.choices
    ]
    errors = []
    for client in (plain, recording):
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": "429"}
            )
        errors.append(raised.value)
    assert type(errors[0]) is type(errors[1]) is openai.RateLimitError
    assert errors[0].body == errors[1].body


def test_clients_emit_no_warnings(mock_server: Any, store: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = sdk.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.close()
        sdk.flush()


def test_tag_coercion_and_precedence() -> None:
    assert coerce_tags({"n": 3, "f": 0.5, "b": False, "s": "x", "gone": None}) == {
        "n": "3",
        "f": "0.5",
        "b": "false",
        "s": "x",
        "gone": None,
    }
    assert merge_tags({"a": "client", "b": "client"}, {"a": "ctx", "c": "ctx"}, {"c": None, "d": "call"}) == {
        "a": "ctx",
        "b": "client",
        "d": "call",
    }


def test_bad_tags_are_dropped_with_one_warning(
    mock_server: Any, store: str, caplog: pytest.LogCaptureFixture
) -> None:
    _health._reset_for_tests()
    client = sdk.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store)
    with caplog.at_level(logging.WARNING, logger="flywheel.sdk"):
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, tags={"ok": "yes", "bad": object(), "none": None}
            )
    rows = fetch_calls(store)
    assert [r["tags"] for r in rows] == [{"ok": "yes"}] * 3
    assert len([r for r in caplog.records if "'bad'" in r.getMessage()]) == 1
    assert _health.snapshot()["tags_dropped"] == 3


def test_context_tags_are_per_thread_and_per_task(mock_server: Any, store: str) -> None:
    client = sdk.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store)
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        with sdk.tags(worker=name):
            barrier.wait()
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tags={"call": name})

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    aclient = sdk.AsyncOpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store)

    async def task(name: str, gate: asyncio.Event) -> None:
        with sdk.tags(worker=name):
            await gate.wait()
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tags={"call": name})

    async def main() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(task(n, gate)) for n in ("a1", "a2")]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        await aclient.close()

    asyncio.run(main())
    tags = sorted((r["tags"]["worker"], r["tags"]["call"]) for r in fetch_calls(store))
    assert tags == [("a1", "a1"), ("a2", "a2"), ("t1", "t1"), ("t2", "t2")]


def test_disabled_records_nothing(mock_server: Any, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdk._migrate import upgrade

    upgrade(store)
    monkeypatch.setenv("FLYWHEEL_DISABLED", "1")
    with sdk.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store) as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, tags={"still": "accepted"}
        )
        assert reply.choices
        assert "Recording" not in type(client._client._transport).__name__
    assert fetch_calls(store) == []


def test_redact_hook_runs_before_anything_is_written(mock_server: Any, store: str) -> None:
    def redact(record: dict[str, Any]) -> dict[str, Any] | None:
        if record["tags"].get("private") == "drop":
            return None
        for message in record["request"]["messages"]:
            message["content"] = message["content"].replace("hello", "[REDACTED]")
        return record

    client = sdk.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store, redact=redact)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tags={"private": "drop"})
    rows = fetch_calls(store)
    assert len(rows) == 1
    assert rows[0]["request"]["messages"][0]["content"] == "[REDACTED] there"


def test_api_key_never_reaches_store_spool_or_logs(
    mock_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path / 'secrets.db'}"
    spool = tmp_path / "spool"
    monkeypatch.setenv("FLYWHEEL_SPOOL_DIR", str(spool))
    caplog.set_level(logging.DEBUG)
    with sdk.OpenAI(
        api_key=API_KEY, base_url=mock_server.base_url, database_url=store, max_retries=1
    ) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True).close()
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": "500"}
            )
    # a store that cannot be opened sends records to the spool
    broken_store = f"sqlite:///{tmp_path}/missing/dir/x.db"
    with sdk.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=broken_store) as broken:
        (tmp_path / "missing").write_text("a file where a directory should be")
        broken.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert sdk.flush(timeout=30)
    assert len(fetch_calls(store)) == 4
    spooled = [p for p in spool.rglob("*") if p.is_file()]
    assert spooled, "the broken store's record should be in the spool"
    haystack = [p.read_bytes() for p in (*tmp_path.glob("secrets.db*"), *spooled)]
    haystack.append(caplog.text.encode())
    for blob in haystack:
        assert API_KEY.encode() not in blob
        assert b"Bearer" not in blob


def test_sqlite_store_is_private(mock_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    with sdk.OpenAI(
        api_key=API_KEY, base_url=mock_server.base_url, database_url=f"sqlite:///{path}"
    ) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert sdk.flush(timeout=30)
    assert path.stat().st_mode & 0o777 == 0o600


def run_script(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_records_survive_immediate_process_exit(mock_server: Any, store: str) -> None:
    result = run_script(
        f"""
        import sdk
        client = sdk.OpenAI(api_key="{API_KEY}", base_url="{mock_server.base_url}")
        for i in range(50):
            messages = [{{"role": "user", "content": str(i)}}]
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        # no flush: the at-exit hook must make these durable
        """,
        {"FLYWHEEL_DATABASE_URL": store},
    )
    assert result.returncode == 0, result.stderr
    rows = fetch_calls(store)
    assert sorted(int(r["request"]["messages"][0]["content"]) for r in rows) == list(range(50))


@pytest.mark.slow
def test_records_survive_fork(mock_server: Any, store: str) -> None:
    result = run_script(
        f"""
        import os, sdk
        # Created before fork, as with gunicorn --preload. An HTTP connection pool must not be shared
        # across fork (true of plain openai too), so the children use a client the parent never used.
        parent = sdk.OpenAI(api_key="{API_KEY}", base_url="{mock_server.base_url}")
        workers = sdk.OpenAI(api_key="{API_KEY}", base_url="{mock_server.base_url}")
        def call(client, who, i):
            messages = [{{"role": "user", "content": f"{{who}}-{{i}}"}}]
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        for i in range(5):
            call(parent, "parent", i)
        children = []
        for n in range(2):
            pid = os.fork()
            if pid == 0:
                for i in range(5):
                    call(workers, f"child{{n}}", i)
                sdk.flush(timeout=30)
                os._exit(0)
            children.append(pid)
        for pid in children:
            assert os.waitpid(pid, 0)[1] == 0
        for i in range(5, 10):
            call(parent, "parent", i)
        """,
        {"FLYWHEEL_DATABASE_URL": store},
    )
    assert result.returncode == 0, result.stderr
    contents = sorted(r["request"]["messages"][0]["content"] for r in fetch_calls(store))
    expected = sorted(
        [f"parent-{i}" for i in range(10)] + [f"child{n}-{i}" for n in range(2) for i in range(5)]
    )
    assert contents == expected


def test_tag_header_never_leaves_the_process(mock_server: Any, store: str) -> None:
    client = sdk.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, tags={"via": "keyword"}
    )
    typed = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers=sdk.tag_headers(via="header", n=2)
    )
    for response in (raw, typed):
        assert not any(k.lower().startswith("x-flywheel") for k in response.http_request.headers)
    assert [r["tags"] for r in fetch_calls(store)] == [{"via": "keyword"}, {"via": "header", "n": "2"}]
