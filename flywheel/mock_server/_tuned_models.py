"""What a mock fine-tuned model answers: the reply of the most similar training example.

No training happens. A ``ft:`` model this server produced answers a chat request with the
assistant reply of the training example whose prompt shares the most words with the request
(Jaccard similarity of word sets), so an offline demo shows a model that "learned" its data.
The last user message decides first, then all the non-assistant text; on a tie, the earlier
example wins, so the answer is deterministic. The index is built once per model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._text import content_text

_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class TrainingExample:
    last_user: frozenset[str]
    prompt: frozenset[str]
    reply: str


class ExampleIndex:
    """The (prompt words, reply) pairs of one training file."""

    def __init__(self, examples: Sequence[TrainingExample]) -> None:
        self.examples = tuple(examples)

    @classmethod
    def from_training_file(cls, data: bytes, method: str = "supervised") -> ExampleIndex:
        """The examples of a validated training file; lines with no text reply are left out."""
        examples = []
        for line in data.splitlines():
            if not line.strip():
                continue
            parsed = orjson.loads(line)
            example = _dpo_example(parsed) if method == "dpo" else _supervised_example(parsed)
            if example is not None:
                examples.append(example)
        return cls(examples)

    def reply_for(self, messages: Sequence[Mapping[str, Any]]) -> str | None:
        """The reply of the example most like ``messages``, or ``None`` if there are no examples."""
        last_user, prompt = _prompt_words(messages)
        best: TrainingExample | None = None
        best_score = (-1.0, -1.0)
        for example in self.examples:
            score = (_jaccard(last_user, example.last_user), _jaccard(prompt, example.prompt))
            if score > best_score:  # strictly better: ties keep the earlier example
                best, best_score = example, score
        return None if best is None else best.reply


def _supervised_example(line: Any) -> TrainingExample | None:
    messages = line.get("messages") if isinstance(line, Mapping) else None
    if not isinstance(messages, list):
        return None
    for position in range(len(messages) - 1, -1, -1):
        message = messages[position]
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            reply = content_text(message.get("content"))
            if reply:
                return _example(messages[:position], reply)
    return None


def _dpo_example(line: Any) -> TrainingExample | None:
    if not isinstance(line, Mapping) or not isinstance(line.get("input"), Mapping):
        return None
    messages = line["input"].get("messages")
    preferred = line.get("preferred_output")
    if not isinstance(messages, list) or not isinstance(preferred, list) or not preferred:
        return None
    last = preferred[-1]
    reply = content_text(last.get("content")) if isinstance(last, Mapping) else ""
    return _example(messages, reply) if reply else None


def _example(prompt_messages: Sequence[Any], reply: str) -> TrainingExample:
    last_user, prompt = _prompt_words([m for m in prompt_messages if isinstance(m, Mapping)])
    return TrainingExample(last_user, prompt, reply)


def _prompt_words(messages: Sequence[Mapping[str, Any]]) -> tuple[frozenset[str], frozenset[str]]:
    """The words of the last user message and of all non-assistant messages."""
    last_user: frozenset[str] = frozenset()
    prompt: set[str] = set()
    for message in messages:
        if message.get("role") == "assistant":
            continue
        words = frozenset(_WORD.findall(content_text(message.get("content")).lower()))
        prompt |= words
        if message.get("role") == "user":
            last_user = words
    return last_user, frozenset(prompt)


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0
