"""build_record: one Exchange -> one row of ``calls`` plus tags, for every kind of exchange."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sdk import _health
from sdk._exchange import Exchange
from sdk._hashing import input_hash
from sdk._pricing import PriceTable
from sdk._records import RAW_LIMIT, build_record, new_call_id
from sdk.schema import calls

T0 = 1_746_400_000.25
CHAT_URL = "https://api.openai.com/v1/chat/completions"

CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Classify the support ticket."},
        {"role": "user", "content": "My parcel never arrived."},
    ],
    "temperature": 0,
}
CHAT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-BT9Zq1bE2r5vXcD9hJ3kQ0aLmNoP",
    "object": "chat.completion",
    "created": 1746400001,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "shipping", "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 2,
        "total_tokens": 1202,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_0392822090",
}


@pytest.fixture(autouse=True)
def _fresh_health() -> Iterator[None]:
    _health._reset_for_tests()
    yield
    _health._reset_for_tests()


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


def exchange(
    *,
    url: str = CHAT_URL,
    method: str = "POST",
    request: Any = CHAT_REQUEST,
    response: Any = CHAT_RESPONSE,
    status_code: int | None = 200,
    content_type: str | None = "application/json",
    **fields: Any,
) -> Exchange:
    """An Exchange as the transport fills it; JSON bodies given as objects are serialized like httpx does."""
    request_body = request if isinstance(request, bytes) or request is None else orjson.dumps(request)
    if isinstance(response, bytes):
        chunks: list[bytes] | None = [response]
    elif response is None:
        chunks = None
    else:
        body = orjson.dumps(response, option=orjson.OPT_INDENT_2)  # the API pretty-prints
        chunks = [body[:100], body[100:]]
    values: dict[str, Any] = {
        "started_at": T0,
        "method": method,
        "url": url,
        "request_content_type": "application/json",
        "request_body": request_body,
        "request_size": len(request_body) if request_body is not None else None,
        "status_code": status_code,
        "response_content_type": content_type if status_code is not None else None,
        "request_id": "req_9f8e7d6c5b4a" if status_code is not None else None,
        "response_chunks": chunks,
        "response_size": sum(map(len, chunks)) if chunks else 0,
        "latency_ms": 812.5,
        "tags": {"prompt_id": "classify"},
    }
    values.update(fields)
    return Exchange(**values)


def record_of(ex: Exchange, prices: PriceTable, **kwargs: Any) -> dict[str, Any]:
    record = build_record(ex, prices, **kwargs)
    assert record is not None
    return record


def sse_body(*objects: Any) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objects) + b"data: [DONE]\n\n"


# --- shape and the common case --------------------------------------------------------------------


def test_record_keys_are_the_calls_columns_plus_tags(prices: PriceTable) -> None:
    record = record_of(exchange(), prices)
    assert set(record) == {c.name for c in calls.columns} | {"tags"}


def test_json_chat_call(prices: PriceTable) -> None:
    ex = exchange(idempotency_key="stainless-python-retry-1", attempt=1)
    record = record_of(ex, prices)
    assert record["request"] == ex.request_body.decode()  # type: ignore[union-attr]  # as sent, byte for byte
    assert record["response"] == b"".join(ex.response_chunks or []).decode()
    assert record["created_at"] == dt.datetime.fromtimestamp(T0, dt.UTC)
    assert record["created_at"].tzinfo is not None
    assert record | {"id": None, "created_at": None, "request": None, "response": None} == {
        "id": None,
        "created_at": None,
        "method": "POST",
        "base_url": "https://api.openai.com",
        "endpoint": "/chat/completions",
        "model": "gpt-4o-mini",
        "request": None,
        "response": None,
        "status_code": 200,
        "error": None,
        "stream": False,
        "complete": True,
        "attempt": 1,
        "idempotency_key": "stainless-python-retry-1",
        "latency_ms": 812.5,
        "ttft_ms": None,
        "prompt_tokens": 1200,
        "completion_tokens": 2,
        "total_tokens": 1202,
        "cached_tokens": 1024,
        "reasoning_tokens": 0,
        "cost_usd": pytest.approx((176 * 0.15 + 1024 * 0.075 + 2 * 0.60) / 1e6),
        "request_id": "req_9f8e7d6c5b4a",
        "input_hash": input_hash(CHAT_REQUEST),
        "tags": {"prompt_id": "classify"},
    }


def test_new_call_id_is_time_ordered_hex() -> None:
    ids = [new_call_id(T0 + i / 1000) for i in range(50)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert ids == sorted(ids)
    assert int(ids[0][:12], 16) == int(T0 * 1000)
    assert len({new_call_id(T0) for _ in range(100)}) == 100


# --- URLs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "base_url", "endpoint"),
    [
        ("https://api.openai.com/v1/chat/completions", "https://api.openai.com", "/chat/completions"),
        ("http://localhost:11434/v1/chat/completions", "http://localhost:11434", "/chat/completions"),
        ("https://openrouter.ai/api/v1/chat/completions", "https://openrouter.ai", "/chat/completions"),
        ("https://api.groq.com/openai/v1/chat/completions", "https://api.groq.com", "/chat/completions"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
            "https://generativelanguage.googleapis.com",
            "/chat/completions",
        ),
        (
            "https://res.openai.azure.com/openai/v1/responses?api-version=preview",
            "https://res.openai.azure.com",
            "/responses",
        ),
        (
            "https://api.openai.com/v1/files/file-abc123/content",
            "https://api.openai.com",
            "/files/file-abc123/content",
        ),
        (
            "https://api.openai.com/v1/fine_tuning/jobs?limit=10&after=ftjob-1",
            "https://api.openai.com",
            "/fine_tuning/jobs",
        ),
        ("http://127.0.0.1:8000/chat/completions", "http://127.0.0.1:8000", "/chat/completions"),
        ("http://user:secret@[::1]:8080/v1/embeddings", "http://[::1]:8080", "/embeddings"),
    ],
)
def test_base_url_and_endpoint(prices: PriceTable, url: str, base_url: str, endpoint: str) -> None:
    record = record_of(exchange(url=url), prices)
    assert (record["base_url"], record["endpoint"]) == (base_url, endpoint)


def test_azure_deployment_url(prices: PriceTable) -> None:
    url = "https://my-res.openai.azure.com/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21&api-key=SEKRET"
    request = {k: v for k, v in CHAT_REQUEST.items() if k != "model"}
    response = {**CHAT_RESPONSE, "model": "gpt-4o-2024-11-20"}
    record = record_of(exchange(url=url, request=request, response=response), prices)
    assert record["endpoint"] == "/chat/completions"
    assert record["base_url"] == "https://my-res.openai.azure.com"
    assert record["model"] == "prod-gpt4o"  # what was asked for
    # the deployment name is not priced, the model that answered is
    assert record["cost_usd"] == pytest.approx((176 * 2.50 + 1024 * 1.25 + 2 * 10.0) / 1e6)
    assert "SEKRET" not in repr(record)


def test_client_side_error_text_never_leaks_credentials(prices: PriceTable) -> None:
    ex = exchange(
        url="https://x.openai.azure.com/openai/deployments/d/chat/completions?api-key=SEKRET",
        status_code=None,
        response=None,
        error="ConnectError: failed to reach https://x.openai.azure.com/...?api-version=1&api-key=SEKRET",
    )
    record = record_of(ex, prices)
    assert "SEKRET" not in repr(record)
    assert record["error"].startswith("ConnectError: failed to reach")
    assert (record["status_code"], record["response"], record["request_id"]) == (None, None, None)


# --- streams --------------------------------------------------------------------------------------


def stream_chunks() -> list[bytes]:
    base = {k: CHAT_RESPONSE[k] for k in ("id", "created", "model", "service_tier", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"

    def chunk(choices: list[Any], usage: Any = None) -> dict[str, Any]:
        return {**base, "choices": choices, "usage": usage}

    body = sse_body(
        chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "finish_reason": None,
                }
            ]
        ),
        chunk([{"index": 0, "delta": {"content": "ship"}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": "ping"}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        chunk([], usage=CHAT_RESPONSE["usage"]),
    )
    return [body[i : i + 61] for i in range(0, len(body), 61)]


def test_streamed_chat_is_stored_as_the_assembled_completion(prices: PriceTable) -> None:
    request = {**CHAT_REQUEST, "stream": True, "stream_options": {"include_usage": True}}
    ex = exchange(
        request=request, response=None, content_type="text/event-stream; charset=utf-8", ttft_ms=120.0
    )
    ex.response_chunks = stream_chunks()
    ex.response_size = sum(map(len, ex.response_chunks))
    record = record_of(ex, prices)
    response = orjson.loads(record["response"])
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"] == "shipping"
    assert response["choices"][0]["finish_reason"] == "stop"
    assert record["stream"] is True and record["ttft_ms"] == 120.0
    assert (record["prompt_tokens"], record["completion_tokens"], record["cached_tokens"]) == (1200, 2, 1024)
    assert record["cost_usd"] == pytest.approx(record_of(exchange(), prices)["cost_usd"])
    assert record["input_hash"] == input_hash(CHAT_REQUEST)  # streaming does not change the input


def test_stream_cut_short_keeps_what_arrived(prices: PriceTable) -> None:
    ex = exchange(request={**CHAT_REQUEST, "stream": True}, response=None, content_type="text/event-stream")
    body = b"".join(stream_chunks())
    cut = body.index(b"ping")  # inside the third chunk's JSON
    ex.response_chunks = [body[:cut]]
    ex.complete = False
    record = record_of(ex, prices)
    response = orjson.loads(record["response"])
    assert response["choices"][0]["message"]["content"] == "ship"
    assert response["choices"][0]["finish_reason"] is None
    assert record["complete"] is False and record["prompt_tokens"] is None and record["cost_usd"] is None


def test_error_inside_a_stream(prices: PriceTable) -> None:
    body = sse_body({"error": {"message": "The server had an error while processing your request."}})
    ex = exchange(request={**CHAT_REQUEST, "stream": True}, response=body, content_type="text/event-stream")
    record = record_of(ex, prices)
    assert record["error"] == "The server had an error while processing your request."
    assert orjson.loads(record["response"]) == {"error": {"message": record["error"]}}


def test_responses_api_stream_and_usage(prices: PriceTable) -> None:
    usage = {
        "input_tokens": 2000,
        "input_tokens_details": {"cached_tokens": 1000},
        "output_tokens": 300,
        "output_tokens_details": {"reasoning_tokens": 256},
        "total_tokens": 2300,
    }
    final: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "o4-mini-2025-04-16",
        "output": [],
        "usage": usage,
    }
    created = {
        "type": "response.created",
        "sequence_number": 0,
        "response": {**final, "status": "in_progress"},
    }
    completed = {"type": "response.completed", "sequence_number": 1, "response": final}
    body = b"".join(
        f"event: {e['type']}\ndata: ".encode() + orjson.dumps(e) + b"\n\n" for e in (created, completed)
    )
    ex = exchange(
        url="https://api.openai.com/v1/responses",
        request={"model": "o4-mini", "input": "Plan my week", "stream": True},
        response=body,
        content_type="text/event-stream",
    )
    record = record_of(ex, prices)
    assert orjson.loads(record["response"]) == final
    assert (record["prompt_tokens"], record["completion_tokens"], record["total_tokens"]) == (2000, 300, 2300)
    assert (record["cached_tokens"], record["reasoning_tokens"]) == (1000, 256)
    assert record["cost_usd"] == pytest.approx((1000 * 1.10 + 1000 * 0.275 + 300 * 4.40) / 1e6)


# --- other endpoints and bodies -------------------------------------------------------------------


def test_embeddings_have_prompt_tokens_only(prices: PriceTable) -> None:
    response = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    ex = exchange(
        url="https://api.openai.com/v1/embeddings",
        request={"model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64"},
        response=response,
    )
    record = record_of(ex, prices)
    assert (record["prompt_tokens"], record["completion_tokens"], record["total_tokens"]) == (8, None, 8)
    assert record["cost_usd"] == pytest.approx(8 * 0.02 / 1e6)


def test_get_without_body(prices: PriceTable) -> None:
    response = {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}
    ex = exchange(url="https://api.openai.com/v1/models", method="GET", request=None, response=response)
    record = record_of(ex, prices)
    assert (record["request"], record["input_hash"], record["model"]) == (None, None, None)
    assert record["method"] == "GET" and record["endpoint"] == "/models"
    assert record["prompt_tokens"] is None and record["cost_usd"] is None


def test_binary_request_and_response_are_described_not_stored(prices: PriceTable) -> None:
    ex = exchange(
        url="https://api.openai.com/v1/audio/transcriptions",
        request=None,
        request_size=48_213,
        request_content_type="multipart/form-data; boundary=abc",
        response=None,
        response_size=0,
    )
    record = record_of(ex, prices)
    assert orjson.loads(record["request"]) == {
        "_flywheel": {"content_type": "multipart/form-data; boundary=abc", "bytes": 48_213}
    }
    assert record["response"] is None and record["input_hash"] is None

    speech = exchange(
        url="https://api.openai.com/v1/audio/speech",
        request={"model": "gpt-4o-mini-tts", "input": "Hello", "voice": "alloy"},
        response=None,
        content_type="audio/mpeg",
        response_size=52_000,
    )
    record = record_of(speech, prices)
    assert orjson.loads(record["response"]) == {"_flywheel": {"content_type": "audio/mpeg", "bytes": 52_000}}
    assert record["model"] == "gpt-4o-mini-tts" and record["input_hash"] is not None


def test_api_error_message(prices: PriceTable) -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-abc***xyz.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    record = record_of(exchange(status_code=401, response=body), prices)
    assert record["error"] == "Incorrect API key provided: sk-abc***xyz."
    assert orjson.loads(record["response"]) == body
    assert record["prompt_tokens"] is None and record["cost_usd"] is None


def test_non_json_error_body_is_wrapped(prices: PriceTable) -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 2000 + b"</body></html>"
    record = record_of(exchange(status_code=502, response=html, content_type="text/html"), prices)
    assert record["error"] == html[:500].decode()
    assert orjson.loads(record["response"]) == {"_flywheel": {"raw": html.decode()}}


def test_truncated_json_response_does_not_raise(prices: PriceTable) -> None:
    body = orjson.dumps(CHAT_RESPONSE)
    ex = exchange(response=body[:-40], complete=False)
    record = record_of(ex, prices)
    assert orjson.loads(record["response"]) == {"_flywheel": {"raw": body[:-40].decode()}}
    assert record["model"] == "gpt-4o-mini" and record["prompt_tokens"] is None
    assert record["error"] is None


def test_large_non_json_body_is_capped(prices: PriceTable) -> None:
    body = "é".encode() * RAW_LIMIT  # 128 KB
    record = record_of(exchange(response=body, content_type="text/plain"), prices)
    assert len(orjson.loads(record["response"])["_flywheel"]["raw"]) <= RAW_LIMIT


def test_malformed_json_request_is_wrapped(prices: PriceTable) -> None:
    record = record_of(exchange(request=b'{"model": "gpt-4o", "messa'), prices)
    assert orjson.loads(record["request"]) == {"_flywheel": {"raw": '{"model": "gpt-4o", "messa'}}
    assert record["input_hash"] is None and record["model"] == "gpt-4o-mini-2024-07-18"  # from the response


def test_nul_characters_are_replaced_for_postgresql(prices: PriceTable) -> None:
    request = {**CHAT_REQUEST, "messages": [{"role": "user", "content": "a\x00b"}]}
    record = record_of(exchange(request=request), prices)
    assert "\\u0000" not in record["request"]
    assert orjson.loads(record["request"])["messages"][0]["content"] == "a\ufffdb"


def test_unknown_model_has_no_cost(prices: PriceTable) -> None:
    ex = exchange(
        url="http://localhost:11434/v1/chat/completions",
        request={**CHAT_REQUEST, "model": "llama3"},
        response={**CHAT_RESPONSE, "model": "llama3"},
    )
    record = record_of(ex, prices)
    assert record["model"] == "llama3" and record["prompt_tokens"] == 1200 and record["cost_usd"] is None


# --- redaction ------------------------------------------------------------------------------------


def test_redaction_modifies_what_is_stored(prices: PriceTable) -> None:
    seen: list[dict[str, Any]] = []

    def redact(record: dict[str, Any]) -> dict[str, Any]:
        seen.append(record)
        for message in record["request"]["messages"]:
            message["content"] = message["content"].replace("parcel", "[ITEM]")
        record["response"]["choices"][0]["message"]["content"] = "[REDACTED]"
        record["tags"]["redacted"] = "yes"
        return record

    record = record_of(exchange(), prices, redact=redact)
    (given,) = seen
    assert set(given) == {"endpoint", "model", "request", "response", "error", "tags"}
    assert given["endpoint"] == "/chat/completions" and given["model"] == "gpt-4o-mini"
    request = orjson.loads(record["request"])
    assert request["messages"][1]["content"] == "My [ITEM] never arrived."
    assert orjson.loads(record["response"])["choices"][0]["message"]["content"] == "[REDACTED]"
    assert record["input_hash"] == input_hash(request) != input_hash(CHAT_REQUEST)
    assert record["tags"] == {"prompt_id": "classify", "redacted": "yes"}
    assert record["prompt_tokens"] == 1200  # counts are not content


def test_redaction_sees_wrapped_and_error_bodies(prices: PriceTable) -> None:
    def redact(record: dict[str, Any]) -> dict[str, Any]:
        record["response"] = None
        record["error"] = "hidden"
        return record

    ex = exchange(status_code=500, response=b"secret stack trace", content_type="text/plain")
    record = record_of(ex, prices, redact=redact)
    assert (record["response"], record["error"]) == (None, "hidden")


def test_redaction_can_drop(prices: PriceTable) -> None:
    assert build_record(exchange(), prices, redact=lambda record: None) is None


@pytest.mark.parametrize("result", ["raise", "not a dict"])
def test_failing_redactor_drops_the_record(
    prices: PriceTable, caplog: pytest.LogCaptureFixture, result: str
) -> None:
    def redact(record: dict[str, Any]) -> Any:
        if result == "raise":
            raise ValueError("bad regex")
        return result

    assert build_record(exchange(), prices, redact=redact) is None
    assert _health.snapshot()["errors.redact"] == 1
    assert "recording failed in redact" in caplog.text


def test_build_record_is_fast(prices: PriceTable) -> None:
    ex = exchange()
    start = time.perf_counter()
    for _ in range(200):
        build_record(ex, prices)
    assert (time.perf_counter() - start) / 200 < 0.002  # generous: ~15 µs measured


def test_api_error_without_a_readable_body(prices: PriceTable) -> None:
    ex = exchange(status_code=503, response=None, content_type="application/octet-stream", response_size=12)
    assert record_of(ex, prices)["error"] == "HTTP 503"


def test_stream_from_a_server_under_its_own_prefix(prices: PriceTable) -> None:
    ex = exchange(
        url="http://10.0.0.5:9000/llm/chat/completions", response=None, content_type="text/event-stream"
    )
    ex.response_chunks = stream_chunks()
    record = record_of(ex, prices)
    assert record["endpoint"] == "/llm/chat/completions"
    assert orjson.loads(record["response"])["choices"][0]["message"]["content"] == "shipping"


# --- content encoding and completeness ------------------------------------------------------------


def gzip_body(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "identity"])
def test_compressed_json_response_is_decoded(prices: PriceTable, encoding: str) -> None:
    import zlib

    plain = orjson.dumps(CHAT_RESPONSE)
    body = {
        "gzip": gzip_body(plain),
        "deflate": zlib.compress(plain),
        "raw-deflate": zlib.compress(plain)[2:-4],
        "identity": plain,
    }[encoding]
    ex = exchange(response=body, response_content_encoding=encoding.removeprefix("raw-"))
    record = record_of(ex, prices)
    assert record["response"] == plain.decode()
    assert record["prompt_tokens"] == 1200


def test_compressed_stream_cut_short_decodes_what_arrived(prices: PriceTable) -> None:
    body = gzip_body(b"".join(stream_chunks()))
    ex = exchange(response=None, content_type="text/event-stream", response_content_encoding="gzip")
    ex.response_chunks = [body[:40], body[40:-60]]  # the gzip trailer and the last events are missing
    ex.complete = False
    record = record_of(ex, prices)
    assert record["complete"] is False
    response = orjson.loads(record["response"])
    assert response["object"] == "chat.completion"
    assert "shipping".startswith(response["choices"][0]["message"]["content"])


@pytest.mark.parametrize(("encoding", "body"), [("gzip", b"not gzip at all"), ("compress", b"\x1f\x9d\x90")])
def test_undecodable_body_is_described(prices: PriceTable, encoding: str, body: bytes) -> None:
    record = record_of(exchange(response=body, response_content_encoding=encoding), prices)
    assert orjson.loads(record["response"]) == {
        "_flywheel": {"content_type": "application/json", "content_encoding": encoding, "bytes": len(body)}
    }
    assert _health.snapshot()["undecodable_bodies"] == 1


def test_stream_read_to_done_is_complete_even_if_closed_before_eof(prices: PriceTable) -> None:
    # openai's Stream stops at [DONE] and closes the response: the transport never sees EOF.
    ex = exchange(response=None, content_type="text/event-stream", complete=False)
    ex.response_chunks = stream_chunks()
    assert record_of(ex, prices)["complete"] is True


def test_responses_stream_with_final_event_is_complete(prices: PriceTable) -> None:
    final = {"id": "resp_1", "object": "response", "status": "incomplete", "output": [], "usage": None}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {**final, "status": "in_progress"}},
        {"type": "response.incomplete", "sequence_number": 1, "response": final},
    ]
    body = b"".join(f"event: {e['type']}\ndata: ".encode() + orjson.dumps(e) + b"\n\n" for e in events)
    url = "https://api.openai.com/v1/responses"
    ex = exchange(url=url, response=body, content_type="text/event-stream", complete=False)
    assert record_of(ex, prices)["complete"] is True
    ex = exchange(url=url, response=body[: body.index(b"event: response.incomplete")], complete=False,
                  content_type="text/event-stream")  # fmt: skip
    assert record_of(ex, prices)["complete"] is False
