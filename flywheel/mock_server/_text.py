"""Deterministic reply text and token estimates shared by every generating endpoint.

Invariant: everything here is a pure function of its arguments (no randomness, no clock, no
process-salted ``hash()``), so the same request always produces the same reply and usage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

# Filler vocabulary for replies longer than the echoed prompt.
_VOCAB = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
    "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform",
    "victor", "whiskey", "xray", "yankee", "zulu", "amber", "basil", "cedar", "dune", "ember", "fjord",
)  # fmt: skip

_ECHOED_PROMPT_WORDS = 8
_FILLER_WORDS = 6

# Reasoning models "think" this many tokens before answering (counted in completion tokens).
REASONING_TOKENS = 16
# Prompts longer than this many tokens report half of them as served from the prompt cache.
CACHE_THRESHOLD_TOKENS = 50


def stable_seed(*parts: str) -> int:
    """A 32-bit seed from strings, stable across processes (unlike ``hash()``)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def estimate_tokens(text: str) -> int:
    """Roughly one token per four characters, like OpenAI's rule of thumb for English."""
    return (len(text) + 3) // 4


def reply_words(prompt: str, count: int | None = None, variant: int = 0) -> list[str]:
    """The words of a mock reply to ``prompt``: ``Mock reply:``, the prompt's first words, filler.

    ``count`` fixes the exact number of words; ``variant`` picks different filler (for ``n`` > 1).
    """
    echoed = prompt.split()[:_ECHOED_PROMPT_WORDS]
    words = ["Mock", "reply:", *echoed]
    total = len(words) + _FILLER_WORDS if count is None else count
    if total <= len(words):
        return words[:total]
    seed = stable_seed(prompt, str(variant))
    vocab_size = len(_VOCAB)
    words.extend(_VOCAB[(seed + 7 * i) % vocab_size] for i in range(total - len(words)))
    return words


def word_pieces(words: Sequence[str]) -> list[str]:
    """Stream pieces that concatenate to ``" ".join(words)``: the first word, then ``" word"``."""
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def fixed_pieces(text: str, size: int = 4) -> list[str]:
    """Stream pieces of at most ``size`` characters (for JSON text, which has no spaces)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def content_text(content: Any) -> str:
    """The text of a message ``content``: a string, or a list of parts with ``text`` fields."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part["text"] for part in content if isinstance(part, dict) and "text" in part)
    return ""


def is_reasoning_model(model: str) -> bool:
    """Mock rule: model names starting with "o" (o1, o3-mini, o4-mini, ...) reason."""
    return model.startswith("o")


def cached_tokens(prompt_tokens: int) -> int:
    """Mock prompt-cache rule: half of a prompt above the threshold was cached."""
    return prompt_tokens // 2 if prompt_tokens > CACHE_THRESHOLD_TOKENS else 0


def budget_words(words: list[str], limit: int | None, reasoning: int) -> tuple[list[str], int, bool]:
    """Fit reasoning tokens and reply words (one token each) into ``limit`` completion tokens.

    Returns the kept words, the reasoning tokens spent and whether the reply was cut short.
    """
    if limit is None:
        return words, reasoning, False
    reasoning = min(reasoning, limit)
    room = limit - reasoning
    if len(words) > room:
        return words[:room], reasoning, True
    return words, reasoning, False


def prompt_tokens_of(texts: Iterable[str], per_item_overhead: int = 4, base: int = 3) -> int:
    """Token estimate for a list of message texts, with OpenAI-like per-message overhead."""
    return base + sum(estimate_tokens(text) + per_item_overhead for text in texts)
