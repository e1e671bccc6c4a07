"""End to end: the real ``openai`` client, through ``sdk``, against the loopback mock server, into
real stores (SQLite and PostgreSQL). Each test checks both what the app saw and what landed."""

from __future__ import annotations

import gc
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from sdk_helpers import API_KEY, fetch_calls, only_call, prepare_store

import sdk

pytestmark = pytest.mark.anyio

MESSAGES = [
    {"role": "system", "content": "You classify support tickets."},
    {"role": "user", "content": "My invoice is wrong, please help"},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(db_url: str) -> str:
    prepare_store(db_url)
    return db_url


def make_client(mock_server: Any, store: str, **kwargs: Any) -> sdk.OpenAI:
    return sdk.OpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store, **kwargs)


def make_async_client(mock_server: Any, store: str, **kwargs: Any) -> sdk.AsyncOpenAI:
    return sdk.AsyncOpenAI(api_key=API_KEY, base_url=mock_server.base_url, database_url=store, **kwargs)


async def test_chat_completion_is_recorded(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store, tags={"app": "support-bot"})
    with sdk.tags(feature="triage"):
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, tags={"prompt_id": "classify-v2"}
        )
    row = only_call(store)
    assert row["endpoint"] == "/chat/completions"
    assert row["method"] == "POST"
    assert row["model"] == "gpt-4o-mini"
    assert row["status_code"] == 200
    assert row["stream"] is False
    assert row["complete"] is True
    assert row["attempt"] == 0
    assert row["error"] is None
    assert row["request"]["messages"] == MESSAGES
    assert row["response"]["choices"][0]["message"]["content"] == reply.choices[0].message.content
    assert reply.usage is not None
    assert row["prompt_tokens"] == reply.usage.prompt_tokens
    assert row["completion_tokens"] == reply.usage.completion_tokens
    assert row["request_id"] == reply._request_id
    assert row["latency_ms"] > 0
    assert row["ttft_ms"] is None
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    assert len(row["input_hash"]) == 64
    assert row["tags"] == {"app": "support-bot", "feature": "triage", "prompt_id": "classify-v2"}
    assert row["created_at"] is not None


async def test_async_chat_completion_is_recorded(mock_server: Any, store: str) -> None:
    client = make_async_client(mock_server, store, tags={"app": "bot"})
    async with client:
        with sdk.tags(feature="async"):
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, tags={"n": 1}
            )
    row = only_call(store)
    assert row["response"]["id"] == reply.id
    assert row["tags"] == {"app": "bot", "feature": "async", "n": "1"}


async def test_sync_stream_is_assembled_with_ttft(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert type(stream) is openai.Stream
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    row = only_call(store)
    assert row["stream"] is True
    assert row["complete"] is True
    assert row["response"]["object"] == "chat.completion"
    assert row["response"]["choices"][0]["message"]["content"] == text
    assert row["completion_tokens"] is not None and row["completion_tokens"] > 0
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


async def test_async_stream_is_assembled(mock_server: Any, store: str) -> None:
    client = make_async_client(mock_server, store)
    async with client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        assert type(stream) is openai.AsyncStream
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    row = only_call(store)
    assert row["response"]["choices"][0]["message"]["content"] == "".join(parts)
    assert row["ttft_ms"] is not None


async def test_stream_closed_early_is_recorded_incomplete(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store)
    with client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-mock-words": "50"}
    ) as stream:
        first = next(iter(stream))
    assert first.choices
    row = only_call(store)
    assert row["complete"] is False
    assert row["stream"] is True
    assert row["error"] is None
    assert row["response"]["object"] == "chat.completion"


async def test_stream_abandoned_without_close_is_recorded(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-mock-words": "50"}
    )
    next(iter(stream))
    del stream
    gc.collect()
    row = only_call(store)
    assert row["complete"] is False
    client.close()


async def test_async_stream_closed_early(mock_server: Any, store: str) -> None:
    client = make_async_client(mock_server, store)
    async with client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-mock-words": "50"}
        )
        async for _ in stream:
            break
        await stream.close()
    assert only_call(store)["complete"] is False


async def test_retries_give_one_row_per_attempt(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store, max_retries=3)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-fail-attempts": "2"}, tags={"t": "r"}
    )
    rows = fetch_calls(store)
    assert [r["attempt"] for r in rows] == [0, 1, 2]
    assert [r["status_code"] for r in rows] == [500, 500, 200]
    assert len({r["idempotency_key"] for r in rows}) == 1
    assert all(r["tags"] == {"t": "r"} for r in rows)
    assert rows[0]["error"]


async def test_api_error_is_recorded_and_raised_unchanged(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store, max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": "400"}
        )
    row = only_call(store)
    assert row["status_code"] == 400
    assert row["error"] == raised.value.body["message"]  # type: ignore[index]
    assert row["response"]["error"]["message"] == raised.value.body["message"]  # type: ignore[index]


async def test_timeout_is_recorded_without_response(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store, max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-latency-ms": "2000"}
        )
    row = only_call(store)
    assert row["status_code"] is None
    assert row["response"] is None
    assert "Timeout" in row["error"]
    assert row["request"]["messages"] == MESSAGES


async def test_connection_refused_is_recorded(store: str) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = sdk.OpenAI(
        api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1", database_url=store, max_retries=1
    )
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    rows = fetch_calls(store)
    assert [r["attempt"] for r in rows] == [0, 1]
    assert all(r["status_code"] is None and "Connect" in r["error"] for r in rows)


async def test_responses_api_create_and_stream(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store)
    created = client.responses.create(model="gpt-4.1-mini", input="Summarize: the cat sat")
    with client.responses.stream(model="gpt-4.1-mini", input="Stream it") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    rows = fetch_calls(store)
    assert [r["endpoint"] for r in rows] == ["/responses", "/responses"]
    assert rows[0]["response"]["id"] == created.id
    assert rows[0]["prompt_tokens"] is not None
    assert rows[1]["stream"] is True
    assert rows[1]["response"]["id"] == final.id
    assert rows[1]["response"]["status"] == "completed"


async def test_legacy_completions_and_embeddings(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store)
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    embedding = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    rows = fetch_calls(store)
    assert [r["endpoint"] for r in rows] == ["/completions", "/embeddings"]
    assert rows[0]["response"]["choices"][0]["text"] == completion.choices[0].text
    assert rows[1]["prompt_tokens"] == embedding.usage.prompt_tokens


async def test_parse_raw_and_streaming_response(mock_server: Any, store: str) -> None:
    class Ticket(BaseModel):
        category: str
        urgent: bool

    client = make_client(mock_server, store)
    parsed = client.chat.completions.parse(
        model="gpt-4o-mini", messages=MESSAGES, response_format=Ticket, tags={"kind": "parse"}
    )
    assert isinstance(parsed.choices[0].message.parsed, Ticket)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, tags={"kind": "raw"}
    )
    assert raw.parse().choices[0].message.content
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, tags={"kind": "streaming"}
    ) as response:
        body = response.read()
    assert body
    rows = fetch_calls(store)
    assert [r["tags"]["kind"] for r in rows] == ["parse", "raw", "streaming"]
    assert rows[0]["request"]["response_format"]["type"] == "json_schema"


async def test_binary_bodies_are_metadata_only(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store)
    speech = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hello there")
    audio = speech.read()
    uploaded = client.files.create(file=("data.jsonl", b'{"a": 1}\n' * 100), purpose="fine-tune")
    rows = fetch_calls(store)
    assert [r["endpoint"] for r in rows] == ["/audio/speech", "/files"]
    assert rows[0]["response"] == {"_flywheel": {"content_type": "audio/mpeg", "bytes": len(audio)}}
    assert "_flywheel" in rows[1]["request"]
    assert rows[1]["response"]["id"] == uploaded.id


async def test_copy_and_with_options_keep_recording_options(
    mock_server: Any, store: str, tmp_path: Any
) -> None:
    client = make_client(mock_server, store, tags={"app": "a"})
    copied = client.with_options(timeout=30)
    retagged = client.copy(tags={"app": "b"})
    assert isinstance(copied, sdk.OpenAI)
    copied.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    retagged.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    rows = fetch_calls(store)
    assert [r["tags"] for r in rows] == [{"app": "a"}, {"app": "b"}]


async def test_wrap_existing_client(mock_server: Any, store: str) -> None:
    plain = openai.OpenAI(api_key=API_KEY, base_url=mock_server.base_url)
    _ = plain.chat  # a resource created before wrapping still learns tags=
    client = sdk.wrap(plain, tags={"wrapped": True}, database_url=store)
    assert client is plain
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tags={"x": 1.5})
    assert only_call(store)["tags"] == {"wrapped": "true", "x": "1.5"}


async def test_wrap_existing_async_client(mock_server: Any, store: str) -> None:
    client = sdk.wrap(openai.AsyncOpenAI(api_key=API_KEY, base_url=mock_server.base_url), database_url=store)
    async with client:
        await client.embeddings.create(model="text-embedding-3-small", input="x", tags={"k": "v"})
    assert only_call(store)["tags"] == {"k": "v"}


async def test_azure_client_is_recorded(mock_server: Any, store: str) -> None:
    root = mock_server.base_url.removesuffix("/v1")
    client = sdk.AzureOpenAI(
        api_key=API_KEY,
        azure_endpoint=root,
        azure_deployment="support-gpt4o",
        api_version="2024-10-21",
        database_url=store,
        tags={"cloud": "azure"},
    )
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tags={"call": "1"})
    row = only_call(store)
    assert row["endpoint"] == "/chat/completions"
    assert row["base_url"] == root
    assert row["response"]["id"] == reply.id
    assert row["tags"] == {"cloud": "azure", "call": "1"}


async def test_async_azure_client_is_recorded(mock_server: Any, store: str) -> None:
    client = sdk.AsyncAzureOpenAI(
        api_key=API_KEY,
        azure_endpoint=mock_server.base_url.removesuffix("/v1"),
        azure_deployment="support-emb",
        api_version="2024-10-21",
        database_url=store,
    )
    async with client:
        await client.embeddings.create(model="text-embedding-3-small", input="hello")
    row = only_call(store)
    assert row["endpoint"] == "/embeddings"
    assert row["status_code"] == 200


# The app leaks the response's connection (as it would with plain openai): its socket is closed by
# the garbage collector, whenever that runs, with a ResourceWarning that is the app's, not ours.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_streaming_response_never_closed_is_recorded(mock_server: Any, store: str) -> None:
    client = make_client(mock_server, store)
    manager = client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES)
    response = manager.__enter__()  # the app forgets the `with` and never reads or closes it
    assert response.status_code == 200
    del response, manager
    gc.collect()
    row = only_call(store)
    assert row["status_code"] == 200
    assert row["complete"] is False
    client.close()
    gc.collect()  # the leaked socket's warning belongs to this test, not to whichever runs next
