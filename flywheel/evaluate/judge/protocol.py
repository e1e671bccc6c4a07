"""The pairwise LLM judge's protocol: the prompt, the order shown, the verdict and its summary.

A judge model is shown one conversation (its messages, and its tools if any) and two answers to it,
A first and B second, and asked which answer is better; the candidate is one of the two and the
opponent (the reference answer, or another candidate) the other. Judges are known to favour the
answer shown first (or second), so:

- The order is a coin per item, ``shown_first(seed, call_id, candidate, opponent)``: a BLAKE2b
  hash of those four values, so a run's seed fixes every order (a restarted run shows the same
  order) and the order is stored with the verdict.
- A sample of items, ``bias_sample(seed, ...)``, is judged in both orders. The share of those
  whose two verdicts agree (each mapped back to the candidate's view) is the position agreement;
  under ``MIN_POSITION_AGREEMENT`` the report warns that the verdicts depend on the order.
- The verdict that counts for an item is the one in its seeded order (``shown_first``); the other
  order only measures the bias.

Some items need no judge (``verdict_without_judge``): answers that are the same after
canonicalizing (``same_answer``) are a tie, and an answer that is missing (``None``: the candidate
errored) loses to any real answer (two missing answers tie). Those rows are stored with no judge
call, ``identical`` true for the ties of equal (or equally missing) answers.

Pure functions, no I/O (``judging`` makes the calls and writes the rows). Invariant: every
function here is deterministic in its arguments; nothing depends on Python's per-process ``hash``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..intervals import Estimate, wilson

__all__ = [
    "BIAS_SAMPLE_FRACTION",
    "BIAS_SAMPLE_MIN",
    "JUDGE_SYSTEM_PROMPT",
    "MIN_POSITION_AGREEMENT",
    "JudgeSummary",
    "Judgment",
    "Order",
    "Verdict",
    "VerdictError",
    "Winner",
    "bias_sample",
    "candidate_verdict",
    "default_bias_size",
    "judge_messages",
    "judge_summaries",
    "judge_summary",
    "parse_verdict",
    "render_answer",
    "same_answer",
    "shown_first",
    "verdict_without_judge",
]

Order = Literal["candidate", "opponent"]
"""Which side was shown first (as answer A)."""
Winner = Literal["A", "B", "tie"]
"""The judge's pick, by the position shown."""
Verdict = Literal["win", "tie", "loss"]
"""The outcome for the candidate."""

MIN_POSITION_AGREEMENT = 0.8
"""Below this share of agreeing verdicts (both orders) the report warns about position bias."""
BIAS_SAMPLE_FRACTION = 0.2
BIAS_SAMPLE_MIN = 10

JUDGE_SYSTEM_PROMPT = """\
You are an impartial judge. You are shown a conversation between a user and an AI assistant (and \
the tools the assistant may call, if any), then two candidate answers for the assistant's next \
message: answer A and answer B. An answer is text, tool calls, or both.

Decide which answer better answers the conversation. Judge, in this order:
1. Correctness: is the answer right, and does it do what was asked?
2. Instructions and format: does it follow the system and user instructions, including any \
required format (for example valid JSON with the requested keys, or the right tool called with \
the right arguments)?

Do not prefer an answer for being longer or shorter, or for being shown first or second. Answer \
"tie" when both are equally good or equally bad.

Reply with a JSON object only, the reasoning first:
{"reasoning": "<one to three sentences>", "winner": "A" | "B" | "tie"}"""

_NO_ANSWER = "(no answer)"
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_WINNERS: dict[str, Winner] = {"a": "A", "b": "B", "tie": "tie"}


class VerdictError(ValueError):
    """The judge's reply is not a verdict ``{"reasoning": ..., "winner": "A" | "B" | "tie"}``."""


# --- the prompt -------------------------------------------------------------------------------------


def judge_messages(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    first: Mapping[str, Any] | None,
    second: Mapping[str, Any] | None,
) -> list[dict[str, str]]:
    """The judge's request messages: the system prompt, then the conversation, tools and answers.

    ``first`` is shown as answer A, ``second`` as answer B (assistant messages in the fine-tuning
    shape; ``None`` shows as "(no answer)"). Each part is delimited by tags (``<conversation>``,
    ``<tools>``, ``<answer_A>``, ``<answer_B>``) so the judge cannot mistake one for another.
    """
    parts = ["<conversation>", *(_render_message(message) for message in messages), "</conversation>"]
    if tools:
        parts += ["<tools>", orjson.dumps(list(tools), option=orjson.OPT_INDENT_2).decode(), "</tools>"]
    for label, answer in (("A", first), ("B", second)):
        parts += [f"<answer_{label}>", render_answer(answer), f"</answer_{label}>"]
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(parts)}]


def render_answer(message: Mapping[str, Any] | None) -> str:
    """An assistant message as the judge reads it: its text, then one line per tool call."""
    if message is None:
        return _NO_ANSWER
    lines = [text] if (text := _text(message.get("content"))) else []
    lines += [f"(tool call) {name}({arguments or ''})" for name, arguments in _tool_calls(message)]
    return "\n".join(lines) if lines else "(empty answer)"


def _render_message(message: Mapping[str, Any]) -> str:
    role = str(message.get("role") or "unknown")
    if role == "tool" and message.get("tool_call_id"):
        role = f"tool result for {message['tool_call_id']}"
    body = render_answer(message) if role == "assistant" else _text(message.get("content"))
    return f"### {role}\n{body}"


def _text(content: Any) -> str:
    """Message content as text: a string as is, content parts joined (non-text parts named)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                pieces.append(str(part.get("text") or ""))
            elif isinstance(part, Mapping):
                pieces.append(f"[{part.get('type', 'part')}]")
        return "\n".join(pieces)
    return str(content)


# --- the order --------------------------------------------------------------------------------------


def _digest(*values: object) -> bytes:
    text = "\x1f".join(str(value) for value in values)
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def shown_first(seed: int, call_id: str, candidate: str, opponent: str) -> Order:
    """Which answer the judge sees first for this item: a fair coin fixed by the four values."""
    return "candidate" if _digest("order", seed, call_id, candidate, opponent)[0] & 1 == 0 else "opponent"


def default_bias_size(items: int, fraction: float = BIAS_SAMPLE_FRACTION) -> int:
    """How many items to judge in both orders: ``fraction`` of them (20 %), at least 10 (or all)."""
    return min(items, max(BIAS_SAMPLE_MIN, math.ceil(fraction * items)))


def bias_sample(seed: int, call_ids: Iterable[str], size: int) -> frozenset[str]:
    """The ``size`` items (all, if fewer) judged in both orders: those ranked first by a seeded hash.

    The choice depends on the seed and the set of ids only, not on their order; and a larger
    ``size`` keeps every item a smaller one chose.
    """
    ranked = sorted(set(call_ids), key=lambda call_id: _digest("bias", seed, call_id))
    return frozenset(ranked[: max(0, size)])


# --- the verdict ------------------------------------------------------------------------------------


def parse_verdict(text: str | None) -> tuple[Winner, str]:
    """``(winner, reasoning)`` from the judge's reply.

    Accepts the JSON object alone, inside a code fence, or with text around it; ``winner`` may be
    any case ("a", "Tie"). Raises ``VerdictError`` for anything else.
    """
    if not text or not text.strip():
        raise VerdictError("the judge's reply is empty")
    verdict = _json_object(text)
    if verdict is None:
        raise VerdictError(f"the judge's reply holds no JSON object: {_excerpt(text)}")
    winner = verdict.get("winner")
    chosen = _WINNERS.get(winner.strip().lower()) if isinstance(winner, str) else None
    if chosen is None:
        raise VerdictError(f'the judge\'s "winner" must be "A", "B" or "tie", got {winner!r}')
    reasoning = verdict.get("reasoning")
    return chosen, reasoning.strip() if isinstance(reasoning, str) else ""


def _json_object(text: str) -> dict[str, Any] | None:
    fenced = [match.group(1) for match in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    braced = [text[start : end + 1]] if 0 <= start < end else []
    for candidate in [text, *fenced, *braced]:
        try:
            parsed = orjson.loads(candidate.strip())
        except orjson.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return None


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def candidate_verdict(order: Order, winner: Winner) -> Verdict:
    """The judge's pick by position, as the outcome for the candidate."""
    if winner == "tie":
        return "tie"
    candidate_position = "A" if order == "candidate" else "B"
    return "win" if winner == candidate_position else "loss"


# --- verdicts that need no judge --------------------------------------------------------------------


def same_answer(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two assistant messages say the same thing.

    Compared after canonicalizing: text content stripped of surrounding whitespace, content that is
    a JSON object or array compared parsed (key order and spacing do not matter), no content and
    empty content alike; tool calls compared in order by name and parsed arguments (their ids are
    ignored). Two missing answers (``None``) are the same; a missing and a real one are not.
    """
    if a is None or b is None:
        return a is None and b is None
    return _canonical(a) == _canonical(b)


def _canonical(message: Mapping[str, Any]) -> tuple[Any, ...]:
    calls = tuple((name, _parsed(arguments, any_json=True)) for name, arguments in _tool_calls(message))
    return (_parsed(_text(message.get("content")), any_json=False), calls)


def _tool_calls(message: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, arguments text)`` of each tool call, in order."""
    found = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            function = {}
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        found.append((str(function.get("name")), arguments or ""))
    return found


def _parsed(text: str, *, any_json: bool) -> tuple[str, str]:
    """A comparable form: ``("json", canonical JSON)`` where ``text`` parses, else ``("text", stripped)``.

    Content is parsed only when it is an object or array (so "1" and "1.0" stay different
    answers); tool arguments are always JSON.
    """
    stripped = text.strip()
    if any_json or stripped[:1] in ("{", "["):
        try:
            value = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            pass
        else:
            return ("json", orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())
    return ("text", stripped)


def verdict_without_judge(
    candidate: Mapping[str, Any] | None, opponent: Mapping[str, Any] | None
) -> tuple[Verdict, bool, str] | None:
    """``(verdict, identical, reasoning)`` for an item decided without the judge, else ``None``."""
    if same_answer(candidate, opponent):
        reason = "neither side gave an answer" if candidate is None else "the answers are the same"
        return "tie", True, reason
    if candidate is None:
        return "loss", False, "the candidate gave no answer"
    if opponent is None:
        return "win", False, "the opponent gave no answer"
    return None


# --- the summary ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Judgment:
    """One stored verdict (a row of ``eval_judgments``)."""

    candidate: str
    opponent: str
    call_id: str
    shown_first: Order
    verdict: Verdict
    identical: bool = False
    reasoning: str | None = None


@dataclass(frozen=True, slots=True)
class JudgeSummary:
    """Win, tie and loss rates of one candidate against one opponent, and the position agreement."""

    candidate: str
    opponent: str
    wins: int
    ties: int
    losses: int
    position_agreement: Estimate | None
    """Over the items judged in both orders; ``None`` when there were none."""

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def rate(self, count: int) -> Estimate:
        return wilson(count, self.n)

    @property
    def warning(self) -> str | None:
        """The report's warning when the verdicts depend on the order shown, else ``None``."""
        agreement = self.position_agreement
        if agreement is None or agreement.value >= MIN_POSITION_AGREEMENT:
            return None
        return (
            f"judge, {self.candidate} vs {self.opponent}: position agreement {agreement.value:.2f} is "
            f"below {MIN_POSITION_AGREEMENT}: the judge's verdicts depend on the order "
            f"({agreement.n} items judged both ways)"
        )

    def as_dict(self) -> dict[str, Any]:
        """The report's ``judge`` object of a model."""
        counts = {"wins": self.wins, "ties": self.ties, "losses": self.losses}
        agreement = self.position_agreement
        return {
            "opponent": self.opponent,
            **{name: {"count": count, **self.rate(count).as_dict()} for name, count in counts.items()},
            "position_agreement": agreement.as_dict() if agreement is not None else None,
        }


def judge_summary(rows: Iterable[Judgment], seed: int) -> JudgeSummary:
    """Summarize the judgments of one (candidate, opponent) pair of a run with ``seed``.

    Each item counts once, with the verdict in its seeded order (``shown_first``), or the one
    stored if only the other order was judged; ``n`` is the number of items. Position agreement is
    over the items judged in both orders: the two verdicts (both from the candidate's view) agree
    when they are equal, so a tie agrees only with a tie. Raises ``ValueError`` for no rows, or
    rows of more than one pair.
    """
    by_item: dict[str, dict[Order, Verdict]] = {}
    pairs: set[tuple[str, str]] = set()
    for row in rows:
        pairs.add((row.candidate, row.opponent))
        by_item.setdefault(row.call_id, {})[row.shown_first] = row.verdict
    if len(pairs) != 1:
        raise ValueError(f"judge_summary needs the rows of exactly one pair, got {len(pairs)}")
    ((candidate, opponent),) = pairs
    counted: dict[Verdict, int] = {"win": 0, "tie": 0, "loss": 0}
    both = agree = 0
    for call_id, verdicts in by_item.items():
        seeded = shown_first(seed, call_id, candidate, opponent)
        counted[verdicts[seeded] if seeded in verdicts else next(iter(verdicts.values()))] += 1
        if len(verdicts) == 2:
            both += 1
            agree += verdicts["candidate"] == verdicts["opponent"]
    return JudgeSummary(
        candidate=candidate,
        opponent=opponent,
        wins=counted["win"],
        ties=counted["tie"],
        losses=counted["loss"],
        position_agreement=wilson(agree, both) if both else None,
    )


def judge_summaries(rows: Iterable[Judgment], seed: int) -> dict[tuple[str, str], JudgeSummary]:
    """``judge_summary`` per (candidate, opponent) pair present in ``rows``."""
    grouped: dict[tuple[str, str], list[Judgment]] = {}
    for row in rows:
        grouped.setdefault((row.candidate, row.opponent), []).append(row)
    return {pair: judge_summary(group, seed) for pair, group in grouped.items()}
