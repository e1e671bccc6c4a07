"""SSE decoding and stream assembly: streamed bodies become the object a non-streamed call returns."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from sdk._assembly import (
    assemble_chat_stream,
    assemble_completion_stream,
    assemble_responses_stream,
    assemble_stream,
)
from sdk._sse import iter_sse_events

# --- helpers: bodies shaped like the real API's ---------------------------------------------------

CHUNK_BASE = {
    "id": "chatcmpl-BT9Zq1bE2r5vXcD9hJ3kQ0aLmNoP",
    "object": "chat.completion.chunk",
    "created": 1746400000,
    "model": "gpt-4o-mini-2024-07-18",
    "service_tier": "default",
    "system_fingerprint": "fp_0392822090",
}


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {**CHUNK_BASE, "choices": choices, "usage": None, **extra}


def delta(
    index: int = 0, finish_reason: str | None = None, logprobs: Any = None, **fields: Any
) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": logprobs, "finish_reason": finish_reason}


def sse(*objects: Any, done: bool = True) -> bytes:
    """An SSE body as OpenAI sends it: ``data: <json>\\n\\n`` per chunk, then ``data: [DONE]``."""
    body = b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objects)
    return body + (b"data: [DONE]\n\n" if done else b"")


def named_sse(*events: dict[str, Any]) -> bytes:
    """A Responses API body: ``event: <type>`` + ``data: <json>`` per event, no [DONE]."""
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


def events_of(body: bytes) -> list[tuple[str | None, str]]:
    return list(iter_sse_events([body]))


USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

TEXT_STREAM = [
    chunk([delta(role="assistant", content="", refusal=None)]),
    chunk([delta(content="Hello")], obfuscation="x1"),
    chunk([delta(content="! How")], obfuscation="x2"),
    chunk([delta(content=" can I help?")], obfuscation="x3"),
    chunk([delta(finish_reason="stop")]),
    chunk([], usage=USAGE),
]


# --- SSE decoding ---------------------------------------------------------------------------------


def test_sse_basic_events_and_done_sentinel() -> None:
    body = b'data: {"a":1}\n\nevent: ping\ndata: {"b":2}\n\ndata: [DONE]\n\ndata: {"after":1}\n\n'
    assert events_of(body) == [(None, '{"a":1}'), ("ping", '{"b":2}')]


def test_sse_spec_details() -> None:
    body = (
        "\ufeff: a comment line\n"
        "data:no-space\n\n"
        "data:  two spaces keep one\n\n"
        "data: line one\ndata: line two\n\n"
        "data\n\n"  # a bare field name: one empty data line
        "id: 7\nretry: 100\nunknown: x\ndata: fields ignored\n\n"
        "event: name-only\n\n"  # no data: nothing dispatched, and the name does not leak
        "data: after\n\n"
        "data: pending at EOF is discarded\n"
    ).encode()
    assert events_of(body) == [
        (None, "no-space"),
        (None, " two spaces keep one"),
        (None, "line one\nline two"),
        (None, ""),
        (None, "fields ignored"),
        (None, "after"),
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_every_split_point_gives_the_same_events(newline: bytes) -> None:
    text = 'event: delta\ndata: {"t":"héllo ✓ 😀"}\n\n: keep-alive\n\ndata: a\ndata: b\n\ndata: [DONE]\n\n'
    body = text.encode().replace(b"\n", newline)
    expected = [("delta", '{"t":"héllo ✓ 😀"}'), (None, "a\nb")]
    for cut in range(len(body) + 1):
        assert list(iter_sse_events([body[:cut], body[cut:]])) == expected, cut
    # and one byte at a time (splits CRLF pairs and multi-byte characters everywhere)
    assert list(iter_sse_events(body[i : i + 1] for i in range(len(body)))) == expected


def test_sse_body_ending_on_a_bare_cr_dispatches_the_last_event() -> None:
    assert list(iter_sse_events([b"data: x\r", b"\r"])) == [(None, "x")]
    assert list(iter_sse_events([b"data: x\r"])) == []


def test_sse_invalid_utf8_is_replaced_not_raised() -> None:
    assert events_of(b"data: \xff\xfe\n\n") == [(None, "\ufffd\ufffd")]


def test_sse_chunk_stream_matches_real_chunking() -> None:
    body = sse(*TEXT_STREAM)
    pieces = [body[i : i + 37] for i in range(0, len(body), 37)]
    assert list(iter_sse_events(pieces)) == events_of(body)
    assert len(events_of(body)) == len(TEXT_STREAM)


# --- chat completions -----------------------------------------------------------------------------


def test_chat_text_stream_assembles_to_the_non_streamed_shape() -> None:
    result = assemble_chat_stream(events_of(sse(*TEXT_STREAM)))
    assert result == {
        "id": CHUNK_BASE["id"],
        "object": "chat.completion",
        "created": 1746400000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_0392822090",
    }


def test_chat_tool_call_stream_merges_calls_by_index() -> None:
    def fragment(index: int, **fields: Any) -> dict[str, Any]:
        return {"index": index, **fields}

    weather = {"name": "get_weather", "arguments": ""}
    time_fn = {"name": "get_time", "arguments": ""}
    stream = [
        chunk([delta(role="assistant", content=None, refusal=None, tool_calls=[
            fragment(0, id="call_weather", type="function", function=weather)
        ])]),
        chunk([delta(tool_calls=[fragment(0, function={"arguments": '{"loc'})])]),
        chunk([delta(tool_calls=[fragment(0, function={"arguments": 'ation": "Paris"}'})])]),
        chunk([delta(tool_calls=[fragment(1, id="call_time", type="function", function=time_fn)])]),
        chunk([delta(tool_calls=[fragment(1, function={"arguments": '{"tz": "CET"}'})])]),
        chunk([delta(finish_reason="tool_calls")]),
    ]  # fmt: skip
    result = assemble_chat_stream(events_of(sse(*stream)))
    (choice,) = result["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_weather",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            },
            {
                "id": "call_time",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
            },
        ],
    }
    assert result["usage"] is None  # no include_usage: no usage chunk


def test_chat_multi_choice_stream_keeps_choices_apart() -> None:
    stream = [
        chunk([delta(0, role="assistant", content=""), delta(1, role="assistant", content="")]),
        chunk([delta(1, content="Bonjour")]),
        chunk([delta(0, content="Hello")]),
        chunk([delta(0, content=" there")]),
        chunk([delta(1, finish_reason="stop")]),
        chunk([delta(0, finish_reason="length")]),
        chunk([], usage={**USAGE, "completion_tokens": 4, "total_tokens": 23}),
    ]
    result = assemble_chat_stream(events_of(sse(*stream)))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in result["choices"]] == [
        (0, "Hello there", "length"),
        (1, "Bonjour", "stop"),
    ]
    assert result["usage"]["completion_tokens"] == 4


def test_chat_stream_cut_midway_keeps_what_arrived() -> None:
    body = sse(*TEXT_STREAM, done=False)
    cut = body.index(b"! How") + 2  # inside the third chunk's JSON
    result = assemble_chat_stream(iter_sse_events([body[:cut]]))
    assert result["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert result["usage"] is None
    assert result["id"] == CHUNK_BASE["id"]


def test_chat_logprobs_refusal_and_provider_extras() -> None:
    def lp(token: str) -> dict[str, Any]:
        return {"token": token, "logprob": -0.1, "bytes": list(token.encode()), "top_logprobs": []}

    stream = [
        chunk([delta(role="assistant", content="", logprobs={"content": [], "refusal": None})]),
        chunk(
            [
                delta(
                    content="Hi",
                    reasoning_content="think ",
                    logprobs={"content": [lp("Hi")], "refusal": None},
                )
            ]
        ),
        chunk(
            [delta(content="!", reasoning_content="hard", logprobs={"content": [lp("!")], "refusal": None})]
        ),
        chunk([delta(finish_reason="stop")]),
    ]
    (choice,) = assemble_chat_stream(events_of(sse(*stream)))["choices"]
    assert choice["message"]["content"] == "Hi!"
    assert choice["message"]["reasoning_content"] == "think hard"  # vLLM / DeepSeek extension
    assert [t["token"] for t in choice["logprobs"]["content"]] == ["Hi", "!"]

    refusal = [
        chunk([delta(role="assistant", content=None, refusal="")]),
        chunk([delta(refusal="I can't ")]),
        chunk([delta(refusal="help with that.")]),
        chunk([delta(finish_reason="stop")]),
    ]
    (choice,) = assemble_chat_stream(events_of(sse(*refusal)))["choices"]
    assert choice["message"] == {"role": "assistant", "content": None, "refusal": "I can't help with that."}


def test_chat_azure_content_filter_chunks() -> None:
    filters = {"hate": {"filtered": False, "severity": "safe"}}
    stream = [
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}],
        },
        chunk([delta(role="assistant", content="")]),
        chunk([{**delta(content="Hi"), "content_filter_results": filters}]),
        chunk([{**delta(finish_reason="stop"), "content_filter_results": {}}]),
    ]
    result = assemble_chat_stream(events_of(sse(*stream)))
    assert result["id"] == CHUNK_BASE["id"] and result["created"] == 1746400000
    assert result["model"] == "gpt-4o-mini-2024-07-18"
    assert result["prompt_filter_results"][0]["prompt_index"] == 0
    assert result["choices"][0]["message"]["content"] == "Hi"
    assert "content_filter_results" in result["choices"][0]


def test_chat_error_inside_stream_is_reported() -> None:
    body = sse(
        TEXT_STREAM[0],
        TEXT_STREAM[1],
        {"error": {"message": "The server had an error", "type": "server_error", "code": None}},
        done=False,
    )
    result = assemble_stream("/chat/completions", events_of(body))
    assert result.error == "The server had an error"
    assert result.response is not None
    assert result.response["choices"][0]["message"]["content"] == "Hello"

    only_error = assemble_stream("/chat/completions", events_of(sse({"error": {"message": "boom"}})))
    assert only_error.response == {"error": {"message": "boom"}}
    assert only_error.error == "boom"


def test_malformed_events_are_skipped() -> None:
    body = b"data: {not json\n\ndata: [1,2]\n\n" + sse(*TEXT_STREAM)
    result = assemble_chat_stream(events_of(body))
    assert result["choices"][0]["message"]["content"] == "Hello! How can I help?"
    assert assemble_stream("/chat/completions", events_of(b"data: nope\n\n")).response is None


def test_empty_stream_assembles_to_an_empty_completion() -> None:
    assert assemble_chat_stream([]) == {
        "id": None,
        "object": "chat.completion",
        "created": None,
        "model": None,
        "choices": [],
        "usage": None,
        "service_tier": None,
        "system_fingerprint": None,
    }


# --- legacy completions ---------------------------------------------------------------------------


def test_completion_stream() -> None:
    base = {
        "id": "cmpl-9x",
        "object": "text_completion",
        "created": 1746400000,
        "model": "gpt-3.5-turbo-instruct",
    }
    stream = [
        {**base, "choices": [{"text": "\n\nThis", "index": 0, "logprobs": None, "finish_reason": None}]},
        {**base, "choices": [{"text": " is a test", "index": 0, "logprobs": None, "finish_reason": None}]},
        {**base, "choices": [{"text": ".", "index": 0, "logprobs": None, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
    ]
    result = assemble_completion_stream(events_of(sse(*stream)))
    assert result == {
        "id": "cmpl-9x",
        "object": "text_completion",
        "created": 1746400000,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"text": "\n\nThis is a test.", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


# --- Responses API --------------------------------------------------------------------------------

RESPONSE_BASE = {
    "id": "resp_67ccd2bed1ec8190b14f964abc054267",
    "object": "response",
    "created_at": 1741476542,
    "status": "in_progress",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "model": "gpt-4.1-2025-04-14",
    "output": [],
    "parallel_tool_calls": True,
    "temperature": 1.0,
    "usage": None,
}
MESSAGE_ID = "msg_67ccd2bf17f0819081ff3bb2cf6508e6"
FINAL_MESSAGE = {
    "id": MESSAGE_ID,
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_text", "text": "Hi there!", "annotations": []}],
}
RESPONSES_USAGE = {
    "input_tokens": 37,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 11,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 48,
}


def responses_events(*, final: str | None = "response.completed") -> list[dict[str, Any]]:
    seq = iter(range(100))
    item = {"id": MESSAGE_ID, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    common = {"item_id": MESSAGE_ID, "output_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": next(seq), "response": RESPONSE_BASE},
        {"type": "response.in_progress", "sequence_number": next(seq), "response": RESPONSE_BASE},
        {"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0, "item": item},
        {
            "type": "response.content_part.added",
            "sequence_number": next(seq),
            **common,
            "content_index": 0,
            "part": part,
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": next(seq),
            **common,
            "content_index": 0,
            "delta": "Hi",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": next(seq),
            **common,
            "content_index": 0,
            "delta": " there!",
            "logprobs": [],
        },
        {
            "type": "response.output_text.done",
            "sequence_number": next(seq),
            **common,
            "content_index": 0,
            "text": "Hi there!",
            "logprobs": [],
        },
        {
            "type": "response.output_item.done",
            "sequence_number": next(seq),
            "output_index": 0,
            "item": FINAL_MESSAGE,
        },
    ]
    if final is not None:
        status = {
            "response.completed": "completed",
            "response.incomplete": "incomplete",
            "response.failed": "failed",
        }[final]
        response = {**RESPONSE_BASE, "status": status, "output": [FINAL_MESSAGE], "usage": RESPONSES_USAGE}
        if final == "response.failed":
            response["error"] = {"code": "server_error", "message": "The model failed."}
        events.append({"type": final, "sequence_number": next(seq), "response": response})
    return copy.deepcopy(events)


def test_responses_stream_takes_the_completed_response() -> None:
    result = assemble_responses_stream(events_of(named_sse(*responses_events())))
    assert result["status"] == "completed"
    assert result["output"] == [FINAL_MESSAGE]
    assert result["usage"] == RESPONSES_USAGE


@pytest.mark.parametrize("final", ["response.incomplete", "response.failed"])
def test_responses_stream_other_final_events(final: str) -> None:
    result = assemble_stream("/responses", events_of(named_sse(*responses_events(final=final))))
    assert result.response is not None
    assert result.response["status"] == final.split(".")[1]
    assert result.error == ("The model failed." if final == "response.failed" else None)


def test_responses_stream_cut_before_completion_is_rebuilt() -> None:
    events = responses_events(final=None)[:6]  # up to the second text delta, no item done
    result = assemble_responses_stream(events_of(named_sse(*events)))
    assert result["id"] == RESPONSE_BASE["id"]
    assert result["status"] == "incomplete"
    assert result["model"] == "gpt-4.1-2025-04-14"
    (message,) = result["output"]
    assert message["content"] == [{"type": "output_text", "text": "Hi there!", "annotations": []}]


def test_responses_stream_cut_rebuilds_function_calls_and_reasoning() -> None:
    call = {
        "id": "fc_1",
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_1",
        "name": "get_weather",
    }
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": []}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": RESPONSE_BASE},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": reasoning},
        {
            "type": "response.reasoning_summary_part.added",
            "sequence_number": 2,
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "sequence_number": 3,
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "Need weather.",
        },
        {"type": "response.output_item.added", "sequence_number": 4, "output_index": 1, "item": call},
        {
            "type": "response.function_call_arguments.delta",
            "sequence_number": 5,
            "item_id": "fc_1",
            "output_index": 1,
            "delta": '{"city":',
        },
        {
            "type": "response.function_call_arguments.delta",
            "sequence_number": 6,
            "item_id": "fc_1",
            "output_index": 1,
            "delta": ' "Paris"}',
        },
    ]
    result = assemble_responses_stream(events_of(named_sse(*events)))
    assert result["status"] == "incomplete"
    assert result["output"][0]["summary"] == [{"type": "summary_text", "text": "Need weather."}]
    assert result["output"][1]["arguments"] == '{"city": "Paris"}'
    assert result["output"][1]["name"] == "get_weather"


def test_responses_final_without_output_uses_finished_items() -> None:
    events = responses_events()
    events[-1]["response"]["output"] = None
    result = assemble_responses_stream(events_of(named_sse(*events)))
    assert result["output"] == [FINAL_MESSAGE]


def test_responses_error_event() -> None:
    error = {"type": "error", "code": "rate_limit_exceeded", "message": "Slow down", "param": None}
    events = [*responses_events(final=None)[:3], {**error, "sequence_number": 3}]
    result = assemble_stream("/responses", events_of(named_sse(*events)))
    assert result.error == "Slow down"
    assert result.response is not None and result.response["status"] == "incomplete"


# --- other SSE endpoints --------------------------------------------------------------------------


def test_other_stream_keeps_the_done_event() -> None:
    body = named_sse(
        {"type": "transcript.text.delta", "delta": "Hel"},
        {"type": "transcript.text.delta", "delta": "lo"},
        {"type": "transcript.text.done", "text": "Hello", "usage": {"type": "tokens", "input_tokens": 3}},
    )
    result = assemble_stream("/audio/transcriptions", events_of(body))
    assert result.response == {
        "type": "transcript.text.done",
        "text": "Hello",
        "usage": {"type": "tokens", "input_tokens": 3},
    }
