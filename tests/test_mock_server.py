"""The mock OpenAI server, driven through the real ``openai`` client over loopback HTTP.

Most tests share the session's ``mock_server``; the ones that need server-wide settings
(latency, error rate) start their own ``MockServer``. Pure pieces (schema instances, multipart
parsing) are tested without a server.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

import flywheel.mock_server as mock_server_module
from flywheel.mock_server import FineTuneTiming, MockServer, create_app
from flywheel.mock_server._multipart import parse_multipart
from flywheel.mock_server._schema import minimal_instance

USER = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client(mock_server: MockServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-test", base_url=mock_server.base_url, max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(mock_server: MockServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=mock_server.base_url, max_retries=0) as c:
        yield c


def raw_request(
    server: MockServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A plain stdlib HTTP request, for what the openai client does not expose."""
    request = urllib.request.Request(
        server.base_url + path,
        data=body,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


# --- public API -----------------------------------------------------------------------------------


def test_public_exports_are_complete() -> None:
    assert sorted(mock_server_module.__all__) == ["FineTuneTiming", "MockServer", "create_app", "serve"]
    for name in mock_server_module.__all__:
        assert getattr(mock_server_module, name) is not None


def test_create_app_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        create_app(error_rate=1.5)
    with pytest.raises(ValueError, match="latency_ms"):
        create_app(latency_ms=-1)


def test_server_binds_loopback_and_releases_port_on_exit() -> None:
    with MockServer() as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        status, _, _ = raw_request(server, "GET", "/models")
        assert status == 200
        port = server.port
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(1)
        probe.connect(("127.0.0.1", port))


# --- chat completions -----------------------------------------------------------------------------


def test_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    completion = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["openai-processing-ms"]) >= 0
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content is not None
    assert choice.message.content.startswith("Mock reply: What is the capital of France?")
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == len(choice.message.content.split())
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_chat_is_deterministic_except_ids(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert first.id != second.id
    assert first.choices == second.choices
    assert first.usage == second.usage


def test_long_prompts_report_cached_tokens_and_o_models_reasoning(client: openai.OpenAI) -> None:
    long_prompt = [{"role": "user", "content": "word " * 100}]
    completion = client.chat.completions.create(model="o3-mini", messages=long_prompt)
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 50
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens > 0
    assert usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning is not None and reasoning > 0
    content = completion.choices[0].message.content or ""
    assert usage.completion_tokens == reasoning + len(content.split())


def test_max_tokens_truncates_with_length_finish(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_completion_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Mock reply: What"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    legacy = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=2)
    assert legacy.choices[0].message.content == "Mock reply:"


def test_x_mock_words_sets_exact_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, extra_headers={"x-mock-words": "250"}
    )
    assert len((completion.choices[0].message.content or "").split()) == 250


def test_n_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=USER, n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert len({c.message.content for c in completion.choices}) == 3


def test_chat_stream_reassembles_to_the_non_streamed_reply(client: openai.OpenAI) -> None:
    expected = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage == expected.usage
    # One chunk per word, plus the role chunk, the finish chunk and the usage chunk.
    assert len(chunks) == len(text.split()) + 3


def test_chat_stream_without_usage_option_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


@pytest.mark.anyio
async def test_async_chat_stream(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=USER, stream=True, extra_headers={"x-mock-words": "40"}
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert len("".join(pieces).split()) == 40


def test_chat_validation_errors_name_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as missing_messages:
        client.chat.completions.create(model="gpt-4o-mini", messages=None)  # type: ignore[arg-type]
    body = missing_messages.value.body
    assert isinstance(body, dict)
    assert body["param"] == "messages"
    assert body["code"] == "missing_required_parameter"
    assert "'messages'" in body["message"]
    with pytest.raises(openai.BadRequestError) as missing_model:
        client.chat.completions.create(model=None, messages=USER)  # type: ignore[arg-type]
    assert isinstance(missing_model.value.body, dict) and missing_model.value.body["param"] == "model"


# --- tools and structured outputs -------------------------------------------------------------------


def test_tool_call_uses_first_tool_with_schema_valid_arguments(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "unit": "celsius", "days": 1}


def test_tool_choice_selects_named_tool_or_none(client: openai.OpenAI) -> None:
    named = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = named.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_time"
    # No "required" list: every property is filled in.
    assert json.loads(calls[0].function.arguments) == {"tz": "mock"}
    none = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
    )
    assert none.choices[0].finish_reason == "stop"
    assert none.choices[0].message.tool_calls is None


def test_after_a_tool_result_the_model_answers_in_text(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    messages: list[Any] = [
        *USER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    second = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert second.choices[0].finish_reason == "stop"
    assert (second.choices[0].message.content or "").startswith("Mock reply:")


def test_streamed_tool_call_with_the_stream_helper(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=USER,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in events
    assert "tool_calls.function.arguments.done" in events
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments)["unit"] == "celsius"
    assert final.choices[0].finish_reason == "tool_calls"


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            stream=True,
        )
    )
    opening = chunks[0].choices[0].delta
    assert opening.role == "assistant"
    assert opening.tool_calls is not None
    assert opening.tool_calls[0].id is not None and opening.tool_calls[0].function is not None
    assert opening.tool_calls[0].function.name == "get_weather"
    arguments = "".join(
        (delta.function.arguments or "") if delta.function else ""
        for chunk in chunks
        if chunk.choices
        for delta in chunk.choices[0].delta.tool_calls or []
    )
    assert len(chunks) > 3
    assert json.loads(arguments) == {"city": "mock", "unit": "celsius", "days": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class LineItem(BaseModel):
    sku: str = Field(min_length=6)
    quantity: int = Field(gt=0)
    price: float


class Address(BaseModel):
    city: str
    zip_code: str | None


class Order(BaseModel):
    items: list[LineItem]
    color: Color
    shipping: Address
    status: Literal["open", "closed"]
    gift: bool
    notes: list[str]
    parent: Order | None


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(model="gpt-4o-mini", messages=USER, response_format=Order)
    order = completion.choices[0].message.parsed
    assert isinstance(order, Order)
    assert order.color is Color.RED
    assert order.status == "open"
    assert len(order.items) == 1 and order.items[0].quantity >= 1 and len(order.items[0].sku) >= 6


def test_parse_with_a_strict_function_tool(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="gpt-4o-mini", messages=USER, tools=[openai.pydantic_function_tool(Address)]
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    assert isinstance(calls[0].function.parsed_arguments, Address)


def test_json_object_mode_returns_an_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_structured_stream_with_the_stream_helper(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=USER, response_format=Address
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Address(city="mock", zip_code="mock")


# --- responses --------------------------------------------------------------------------------------


def test_responses_create(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4.1-mini", input="Summarize the meeting notes")
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "gpt-4.1-mini"
    assert response.output_text.startswith("Mock reply: Summarize the meeting notes")
    assert response.output[0].type == "message"
    usage = response.usage
    assert usage is not None
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens == len(response.output_text.split())
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_responses_message_list_input_and_reasoning_model(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="o4-mini",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "input_text", "text": "second question"}]},
        ],
    )
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output_text.startswith("Mock reply: second question")
    assert response.instructions == "Be brief."
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens > 0


def test_responses_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4.1-mini", input="hello", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Mock reply:"


def test_responses_function_call(client: openai.OpenAI) -> None:
    tool = {"type": "function", **WEATHER_TOOL["function"], "strict": True}  # type: ignore[dict-item]
    response = client.responses.create(model="gpt-4.1-mini", input="weather?", tools=[tool])  # type: ignore[list-item]
    call = response.output[0]
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"] == "mock"
    follow_up = client.responses.create(
        model="gpt-4.1-mini",
        input=[
            {"role": "user", "content": "weather?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[tool],  # type: ignore[list-item]
    )
    assert follow_up.output[0].type == "message"


def test_responses_streamed_function_call(client: openai.OpenAI) -> None:
    tool = {"type": "function", **WEATHER_TOOL["function"], "strict": True}  # type: ignore[dict-item]
    with client.responses.stream(model="gpt-4.1-mini", input="weather?", tools=[tool]) as stream:  # type: ignore[list-item]
        deltas = [event.delta for event in stream if event.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call"
    assert "".join(deltas) == call.arguments
    assert json.loads(call.arguments) == {"city": "mock", "unit": "celsius", "days": 1}


def test_responses_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    response = client.responses.parse(model="gpt-4.1-mini", input="where?", text_format=Address)
    assert response.output_parsed == Address(city="mock", zip_code="mock")


EXPECTED_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 5,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_responses_create_stream_event_sequence(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="gpt-4.1-mini", input="hi", stream=True, extra_headers={"x-mock-words": "5"}
        )
    )
    assert [event.type for event in events] == EXPECTED_EVENTS
    assert [event.sequence_number for event in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "".join(
        event.delta for event in events if event.type == "response.output_text.delta"
    )
    assert completed.response.usage is not None and completed.response.usage.output_tokens == 5


def test_responses_stream_helper(client: openai.OpenAI) -> None:
    expected = client.responses.create(model="gpt-4.1-mini", input="stream me")
    with client.responses.stream(model="gpt-4.1-mini", input="stream me") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == expected.output_text
    assert final.usage == expected.usage


@pytest.mark.anyio
async def test_async_responses_stream_helper(aclient: openai.AsyncOpenAI) -> None:
    async with aclient.responses.stream(model="gpt-4.1-mini", input="async", text_format=Address) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_parsed == Address(city="mock", zip_code="mock")


# --- legacy completions, embeddings, models, audio ---------------------------------------------------


def test_legacy_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["one", "two"], max_tokens=3
    )
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert [c.text for c in completion.choices] == [" Mock reply: one", " Mock reply: two"]
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="one",
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " Mock reply:"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    # x-mock-words outranks the implicit max_tokens default of 16.
    long = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="one", extra_headers={"x-mock-words": "40"}
    )
    assert len(long.choices[0].text.split()) == 40


def test_embeddings_float_and_base64_agree(client: openai.OpenAI, mock_server: MockServer) -> None:
    as_float = client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    default = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])  # base64 on the wire
    assert [d.embedding for d in as_float.data] == [d.embedding for d in default.data]
    vector = as_float.data[0].embedding
    assert len(vector) == 64
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert as_float.data[0].embedding != as_float.data[1].embedding
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > 0

    body = json.dumps({"model": "m", "input": "a", "encoding_format": "base64"}).encode()
    _, _, raw = raw_request(mock_server, "POST", "/embeddings", body)
    encoded = json.loads(raw)["data"][0]["embedding"]
    assert list(struct.unpack("<64f", base64.b64decode(encoded))) == vector


def test_embeddings_token_input_and_dimensions(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]], dimensions=8)
    assert [len(d.embedding) for d in result.data] == [8, 8]
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 4  # one per token


def test_models(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "gpt-4o-mini" in ids
    assert client.models.retrieve("gpt-4o-mini").owned_by == "system"
    assert client.models.retrieve("ft:gpt-4o-mini:acme::abc123").id == "ft:gpt-4o-mini:acme::abc123"


def test_audio_speech_bytes(client: openai.OpenAI) -> None:
    short = client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    long = client.audio.speech.create(model="tts-1", voice="alloy", input="hello " * 20)
    assert short.response.headers["content-type"] == "audio/mpeg"
    assert short.content.startswith(b"ID3")
    assert len(long.content) > len(short.content)
    again = client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    assert again.content == short.content


# --- files and fine-tuning ------------------------------------------------------------------------


def test_file_upload_list_content_delete(client: openai.OpenAI) -> None:
    data = b'{"messages": []}\r\n--not-a-boundary\r\n\x00\xff binary tail'
    uploaded = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert uploaded.id.startswith("file-")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("train.jsonl", len(data), "fine-tune")
    assert client.files.retrieve(uploaded.id) == uploaded
    assert uploaded.id in [f.id for f in client.files.list(purpose="fine-tune")]
    assert client.files.content(uploaded.id).content == data
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_file_upload_requires_a_valid_purpose(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.txt", b"x"), purpose="nonsense")  # type: ignore[arg-type]


def test_fine_tuning_job_progresses_with_the_server_clock() -> None:
    """The lifecycle in brief (tests/test_mock_fine_tuning.py has the rest): a job moves on with
    the server's clock, not with the requests that read it."""
    now = [1_700_000_000.0]
    timing = FineTuneTiming(validating_s=1, queued_s=1, running_s=1)
    with (
        MockServer(fine_tune=timing, clock=lambda: now[0]) as server,
        openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0) as client,
    ):
        line = b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
        training = client.files.create(file=("t.jsonl", line), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id, suffix="demo")
        assert job.status == "validating_files"
        statuses = []
        for _ in range(4):
            statuses.append(client.fine_tuning.jobs.retrieve(job.id).status)
            statuses.append(client.fine_tuning.jobs.retrieve(job.id).status)
            now[0] += 1
        assert statuses == ["validating_files"] * 2 + ["queued"] * 2 + ["running"] * 2 + ["succeeded"] * 2
        done = client.fine_tuning.jobs.retrieve(job.id)
        assert done.fine_tuned_model is not None and done.fine_tuned_model.startswith("ft:gpt-4o-mini:")
        assert done.result_files and client.files.content(done.result_files[0]).content.startswith(b"step")
        messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id)]
        assert messages[0] == "The job has successfully completed"
        assert job.id in [j.id for j in client.fine_tuning.jobs.list()]


def test_fine_tuning_job_fails_on_bad_training_file_and_cancels(client: openai.OpenAI) -> None:
    quick = FineTuneTiming(validating_s=0, queued_s=3600, running_s=3600)
    with (
        MockServer(fine_tune=quick) as server,
        openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0) as own,
    ):
        bad = own.files.create(file=("bad.jsonl", b"not json\n"), purpose="fine-tune")
        failed = own.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=bad.id)
        assert failed.status == "failed"
        assert failed.error is not None and "Line 1" in failed.error.message
        line = b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}'
        good = own.files.create(file=("ok.jsonl", line), purpose="fine-tune")
        queued = own.fine_tuning.jobs.create(model="m", training_file=good.id)
        assert queued.status == "queued"
        cancelled = own.fine_tuning.jobs.cancel(queued.id)
        assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="m", training_file="file-missing")


# --- routing and fault injection ------------------------------------------------------------------


def test_unknown_route_and_wrong_method_are_openai_404s(mock_server: MockServer) -> None:
    status, headers, body = raw_request(mock_server, "GET", "/no/such/thing")
    assert status == 404
    assert headers["x-request-id"].startswith("req_")
    error = json.loads(body)["error"]
    assert error["message"] == "Invalid URL (GET /v1/no/such/thing)"
    assert set(error) == {"message", "type", "param", "code"}
    status, _, _ = raw_request(mock_server, "GET", "/chat/completions")
    assert status == 404


def test_malformed_json_is_a_400(mock_server: MockServer) -> None:
    status, _, body = raw_request(mock_server, "POST", "/chat/completions", b"{not json")
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_x_mock_status(client: openai.OpenAI, status: int, error_class: type[openai.APIStatusError]) -> None:
    with pytest.raises(error_class) as raised:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, extra_headers={"x-mock-status": str(status)}
        )
    assert raised.value.status_code == status
    assert raised.value.request_id is not None and raised.value.request_id.startswith("req_")
    body = raised.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    if status == 429:
        assert raised.value.response.headers["retry-after-ms"] == "10"
        assert body["code"] == "rate_limit_exceeded"


def test_x_mock_fail_attempts_succeeds_after_client_retries(client: openai.OpenAI) -> None:
    raw = client.with_options(max_retries=2).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=USER, extra_headers={"x-mock-fail-attempts": "2"}
    )
    assert raw.retries_taken == 2
    assert raw.parse().choices[0].message.content


def test_x_mock_fail_attempts_beyond_retries_fails_with_chosen_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.with_options(max_retries=1).chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,
            extra_headers={"x-mock-fail-attempts": "3", "x-mock-status": "429"},
        )


@pytest.mark.anyio
async def test_async_retries_with_fail_attempts(aclient: openai.AsyncOpenAI) -> None:
    response = await aclient.with_options(max_retries=3).responses.with_raw_response.create(
        model="gpt-4.1-mini", input="x", extra_headers={"x-mock-fail-attempts": "3"}
    )
    assert response.retries_taken == 3


def test_x_mock_latency_ms(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=USER, extra_headers={"x-mock-latency-ms": "150"}
    )
    assert time.perf_counter() - started >= 0.15
    assert int(raw.headers["openai-processing-ms"]) >= 150


def test_x_mock_chunk_delay_ms(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
        extra_headers={"x-mock-words": "5", "x-mock-chunk-delay-ms": "80"},
    )
    first_at = None
    for _ in stream:
        first_at = first_at or time.perf_counter()
    assert first_at is not None and first_at - started < 0.3
    # 5 words + role chunk + finish chunk = 7 chunks, 6 gaps of 80 ms.
    assert time.perf_counter() - started >= 0.48


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-mock-latency-ms", "soon"),
        ("x-mock-status", "200"),
        ("x-mock-words", "-1"),
        ("x-mock-words", "1e9"),
    ],
)
def test_malformed_mock_header_is_a_400(client: openai.OpenAI, header: str, value: str) -> None:
    with pytest.raises(openai.BadRequestError, match=header):
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, extra_headers={header: value})


def test_abandoned_stream_does_not_block_the_server(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, stream=True, extra_headers={"x-mock-words": "200000"}
    )
    next(iter(stream))
    stream.close()
    started = time.perf_counter()
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert time.perf_counter() - started < 1.0


def test_server_wide_latency_and_error_rate() -> None:
    with MockServer(latency_ms=100) as server, openai.OpenAI(api_key="sk", base_url=server.base_url) as c:
        started = time.perf_counter()
        c.models.list()
        assert time.perf_counter() - started >= 0.1
    with (
        MockServer(error_rate=1.0) as server,
        openai.OpenAI(api_key="sk", base_url=server.base_url, max_retries=0) as c,
        pytest.raises(openai.InternalServerError),
    ):
        c.models.list()


def _failures(seed: int) -> list[bool]:
    with MockServer(error_rate=0.5, seed=seed) as server:
        return [raw_request(server, "GET", "/models")[0] == 500 for _ in range(20)]


def test_error_rate_is_reproducible_from_the_seed() -> None:
    first = _failures(seed=7)
    assert first == _failures(seed=7)
    assert 0 < sum(first) < 20


# --- pure pieces ----------------------------------------------------------------------------------


def test_minimal_instance_validates_against_pydantic_schemas() -> None:
    for model in (Order, LineItem, Address):
        model.model_validate(minimal_instance(model.model_json_schema()))


def test_minimal_instance_respects_constraints() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "exclusiveMinimum": 5, "multipleOf": 4},
            "x": {"type": "number", "maximum": -2.5},
            "tags": {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 2},
            "empty": {"type": "array", "maxItems": 0},
            "kind": {"const": "fixed"},
            "maybe": {"type": ["null", "boolean"]},
            "short": {"type": "string", "maxLength": 2},
        },
    }
    assert minimal_instance(schema) == {
        "n": 8,
        "x": -2.5,
        "tags": ["mock@example.com", "mock@example.com"],
        "empty": [],
        "kind": "fixed",
        "maybe": False,
        "short": "mo",
    }


def test_minimal_instance_terminates_on_required_recursion() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}},
                "required": ["next"],
            }
        },
        "$ref": "#/$defs/Node",
    }
    depth, node = 0, minimal_instance(schema)
    while node is not None:
        depth, node = depth + 1, node["next"]
    assert 0 < depth < 20


def test_parse_multipart_keeps_bytes_exact() -> None:
    payload = b"line1\r\nline2\r\n--almost\r\n"
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        b"batch\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="d\xc3\xa9.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n--XyZ--\r\n"
    )
    parts = parse_multipart("multipart/form-data; boundary=XyZ", body)
    assert parts["purpose"].data == b"batch"
    assert parts["file"].data == payload
    assert parts["file"].filename == "dé.bin"
    assert parts["file"].content_type == "application/octet-stream"
