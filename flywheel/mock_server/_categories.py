"""Category questions: a deterministic stand-in for a model picking one category from a list.

Not a model. A chat request is a *category question* when a system (or developer) message lists
the categories after ``category:`` or ``categories:``, each a name with an optional description in
parentheses, up to the end of that sentence::

    Reply in JSON as {"category": ...} with one category: billing (invoices, charges, refunds,
    payment), login (sign in, password, SSO, 2FA, locked out, reset link), bug (error, crash,
    broken, fails) or other.

The answer is the category whose *terms* the last user message shares most: its name, and, for a
large model, each phrase of its description (a phrase counts when all its words occur). Words are
compared lowercased after a crude suffix rule (``-ing``, ``-ed``, ``-s``, ``-e`` dropped), the same
on both sides, so "charged" meets "charges". Ties go to the category listed first; no term at all
gives the fallback: the last category listed without a description (else the last one).

A small model (a name containing ``mini`` or ``nano``) reads only the category names, so it misses
every ticket that never names its category, and it keeps the format less well: asked for JSON only
in the prompt (no ``response_format``), it answers a message of more than ``PROSE_ABOVE_WORDS``
words in prose (``The category is billing.``), and when it fell back for want of any term it adds
a key nobody asked for (``"confidence": "low"``). That is the stand-in for "a smaller model follows
instructions less well": format correctness and answer correctness then differ, and an offline eval
of a base model against a model fine-tuned on a large model's answers measures something.

JSON is asked for by ``response_format`` ``{"type": "json_object"}`` or by the word ``JSON`` in
the system message; the key is the one the message shows (``{"category": ...}``), else
``category``. Otherwise the reply is the bare category name. Invariant: pure functions of the
request, so the same request always gets the same reply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._text import content_text

__all__ = [
    "PROSE_ABOVE_WORDS",
    "Category",
    "CategoryQuestion",
    "category_reply",
    "choose_category",
    "parse_category_question",
    "reads_descriptions",
    "stem",
]

PROSE_ABOVE_WORDS = 16
"""A small model answers a longer message in prose when only the prompt asks for JSON."""
DEFAULT_KEY = "category"
EXTRA_KEY = ("confidence", "low")
"""What a small model adds to its JSON when it found no term and fell back."""

_MARKER = re.compile(r"\bcategor(?:y|ies)\s*:", re.IGNORECASE)
_ITEM = re.compile(r"(?P<name>[^\s,;()]+)\s*(?:\((?P<description>[^()]*)\))?")
_CONNECTORS = frozenset({"or", "and"})
_PHRASE_SEPARATOR = re.compile(r"[,;]|\s+or\s+")
_JSON_KEY = re.compile(r"\{\s*\"(?P<key>[^\"]+)\"\s*:")
_JSON_WORD = re.compile(r"\bJSON\b")
_WORD = re.compile(r"\w+")
_SMALL_MODEL = ("mini", "nano")

Term = tuple[str, ...]
"""A name or description phrase as the stems of its words."""


@dataclass(frozen=True, slots=True)
class Category:
    """One category offered: its name, and the terms a model can match (name, description phrases)."""

    name: str
    name_terms: tuple[Term, ...]
    description_terms: tuple[Term, ...]


@dataclass(frozen=True, slots=True)
class CategoryQuestion:
    """The categories a system message offers, its fallback, and the JSON key it asks for."""

    categories: tuple[Category, ...]
    fallback: str
    json_key: str | None
    """The key of the JSON object the message asks for; ``None`` when it does not ask for JSON."""


def stem(word: str) -> str:
    """The crude suffix rule: lowercase, then drop ``-ing``, ``-ed``, ``-s`` and ``-e`` where long enough."""
    word = word.lower()
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and word.endswith("ed"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def _stems(text: str) -> Term:
    return tuple(stem(word) for word in _WORD.findall(text))


def reads_descriptions(model: str) -> bool:
    """A large model reads the descriptions; a small one (``mini``, ``nano``) only the names."""
    lowered = model.lower()
    return not any(size in lowered for size in _SMALL_MODEL)


def parse_category_question(system_text: str) -> CategoryQuestion | None:
    """The category question in ``system_text``, or ``None`` (fewer than two categories listed)."""
    marker = _MARKER.search(system_text)
    if marker is None:
        return None
    categories = []
    for item in _ITEM.finditer(_listing(system_text[marker.end() :])):
        name = item["name"].strip("\"'`*")
        if not name or name.lower() in _CONNECTORS:
            continue
        description = item["description"] or ""
        phrases = (_stems(phrase) for phrase in _PHRASE_SEPARATOR.split(description))
        categories.append(Category(name, (_stems(name),), tuple(phrase for phrase in phrases if phrase)))
    if len(categories) < 2:
        return None
    plain = [category.name for category in categories if not category.description_terms]
    fallback = plain[-1] if plain else categories[-1].name
    return CategoryQuestion(tuple(categories), fallback, _json_key(system_text))


def _listing(rest: str) -> str:
    """``rest`` up to the end of its sentence: a newline or a ``.`` before a space, outside parentheses."""
    depth = 0
    for index, char in enumerate(rest):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and (
            char == "\n" or (char == "." and rest[index + 1 : index + 2] in ("", " ", "\t"))
        ):
            return rest[:index]
    return rest


def _json_key(system_text: str) -> str | None:
    if not _JSON_WORD.search(system_text):
        return None
    shown = _JSON_KEY.search(system_text)
    return shown["key"] if shown else DEFAULT_KEY


def choose_category(question: CategoryQuestion, text: str, *, descriptions: bool) -> tuple[str, bool]:
    """The category for ``text`` and whether any term matched (``False``: the fallback)."""
    words = frozenset(_stems(text))
    best, best_score = question.fallback, 0
    for category in question.categories:
        terms = category.name_terms + (category.description_terms if descriptions else ())
        score = sum(1 for term in terms if all(word in words for word in term))
        if score > best_score:  # strictly more: ties keep the category listed first
            best, best_score = category.name, score
    return best, best_score > 0


def category_reply(model: str, messages: Sequence[Mapping[str, Any]], response_format: Any) -> str | None:
    """What ``model`` answers a category question; ``None`` when the request is not one.

    A ``json_schema`` response format is not a category question's business: the schema wins.
    """
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind not in (None, "text", "json_object"):
        return None
    system = "\n".join(
        content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    question = parse_category_question(system)
    if question is None:
        return None
    user = next((content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    large = reads_descriptions(model)
    category, matched = choose_category(question, user, descriptions=large)
    key = question.json_key
    if kind == "json_object":
        key = key or DEFAULT_KEY
    elif key is not None and not large and len(user.split()) > PROSE_ABOVE_WORDS:
        return f"The category is {category}."
    if key is None:
        return category
    answer = {key: category}
    if not large and not matched:
        answer[EXTRA_KEY[0]] = EXTRA_KEY[1]
    return orjson.dumps(answer).decode()
