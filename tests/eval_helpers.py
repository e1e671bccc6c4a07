"""A real loopback upstream for the evaluation tests, and a pipeline whose test split it answers.

``EvalUpstream`` is an OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 whose models answer a
ticket-classification task in known ways, so a test can compute the right metric values itself:

- ``gpt-4o`` answers ``{"label": TOPIC}``: always right (also the app's model: its answers are the
  references);
- ``gpt-4o-mini`` (and ``gpt-4o-mini-2024-07-18``) is wrong on ``refund`` and ``login`` tickets
  (``{"label": "other"}``), answers ``billing`` tickets with text that is not JSON, and adds an
  extra key on ``invoice`` tickets;
- a fine-tuned ``ft:...`` model answers like ``gpt-4o`` (it learned the references);
- ``slow-model`` answers like ``gpt-4o`` after ``SLOW_S``;
- ``judge`` prefers the answer whose label is the ticket's topic (a consistent judge);
- ``missing-model`` is answered with a 404, as an unknown model is.

Every request is logged (model, ticket number, message count) for tests that count calls.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sdk

TOPICS = ["invoice", "password", "export", "dashboard", "refund", "teammate", "login", "billing"]
SYSTEM = 'Classify the support ticket. Answer with JSON: {"label": TOPIC}.'
SLOW_S = 0.15
_TICKET = re.compile(r"Ticket (\d+): my (\w+) ")


@dataclass(frozen=True, slots=True)
class Seen:
    model: str
    ticket: int | None
    messages: int


def weak_answer(topic: str) -> str:
    """What ``gpt-4o-mini`` answers for a ticket on ``topic``."""
    if topic in ("refund", "login"):
        return '{"label": "other"}'
    if topic == "billing":
        return "billing, I think"
    if topic == "invoice":
        return '{"label": "invoice", "confidence": "high"}'
    return json.dumps({"label": topic})


class EvalUpstream:
    """The upstream on 127.0.0.1; ``seen`` lists every request it was sent."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, answer = upstream.answer(body)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed mid-request: that is what some tests do

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> EvalUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self, model: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.model == model]

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        model, messages = body["model"], body["messages"]
        user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        found = _TICKET.search(user)
        with self._lock:
            self.seen.append(Seen(model, int(found.group(1)) if found else None, len(messages)))
            self.bodies.append(body)
        if model == "missing-model":
            error = {"message": f"The model `{model}` does not exist", "type": "invalid_request_error"}
            return 404, {"error": {**error, "param": None, "code": "model_not_found"}}
        topic = found.group(2) if found else "unknown"
        if model == "slow-model":
            time.sleep(SLOW_S)
        if model == "judge":
            content = _verdict(user, topic)
        elif model.startswith("gpt-4o-mini"):  # the base model (and its dated names)
            content = weak_answer(topic)
        else:
            content = json.dumps({"label": topic})
        return 200, _completion(model, content, len(json.dumps(messages)) // 4)


def _verdict(prompt: str, topic: str) -> str:
    first = prompt.partition("<answer_A>")[2].partition("</answer_A>")[0]
    second = prompt.partition("<answer_B>")[2].partition("</answer_B>")[0]
    winner = "tie"
    a_right, b_right = f'"label": "{topic}"' in first, f'"label": "{topic}"' in second
    if a_right != b_right:
        winner = "A" if a_right else "B"
    return json.dumps({"reasoning": f"the label should be {topic}", "winner": winner})


def _completion(model: str, content: str, prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 8, "total_tokens": prompt_tokens + 8},
    }


def log_tickets(db_url: str, base_url: str, start: int, count: int, *, model: str = "gpt-4o") -> None:
    """``count`` classify calls through ``sdk.OpenAI`` (tag prompt_id=classify), flushed."""
    client = sdk.OpenAI(api_key="sk-app-key", base_url=base_url, database_url=db_url, max_retries=0)
    with client:
        for n in range(start, start + count):
            client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {
                        "role": "user",
                        "content": f"Ticket {n}: my {TOPICS[n % len(TOPICS)]} is broken ({n * 7})",
                    },
                ],
                response_format={"type": "json_object"},
                temperature=0.2,
                extra_headers=sdk.tag_headers(prompt_id="classify"),
            )
    assert sdk.flush(timeout=30)


def topic_of(ticket: int) -> str:
    return TOPICS[ticket % len(TOPICS)]


def write_eval_config(
    directory: Path, base_url: str, *, train_url: str | None = None, extra: str = ""
) -> Path:
    """flywheel.toml with pipeline ``classify``: its eval table points at ``base_url``, its train
    table at ``train_url`` (default the same); ``extra`` is appended (more eval keys, other tables)."""
    path = directory / "flywheel.toml"
    path.write_text(
        f"""
[pipelines.classify]
filter = {{ tags = {{ prompt_id = "classify" }}, status = "ok" }}
export = {{ test_fraction = 0.3 }}

[pipelines.classify.train]
provider = "openai"
base_url = "{train_url or base_url}"
api_key_env = "FLYWHEEL_TEST_EVAL_KEY"
base_model = "gpt-4o-mini-2024-07-18"
min_examples = 20
create_settle_s = 0.2

[pipelines.classify.eval]
base_url = "{base_url}"
api_key_env = "FLYWHEEL_TEST_EVAL_KEY"
concurrency = 4
max_retries = 0
{extra}
"""
    )
    return path
