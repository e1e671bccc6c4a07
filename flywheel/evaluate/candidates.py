"""Who answers in an evaluation: the candidates, and the request each one is sent.

A candidate is a model asked the test split's questions exactly as the app asked them (the logged
request with its messages, tools and sampling parameters; only the model changes, see
``flywheel.relabel.teacher_request``). Beside each base model, ``few_shot = K`` adds the prompted
baseline ``MODEL+Kshot``: the same model with K training examples given as prior turns, so a
report can say whether fine-tuning beats simply showing the model examples.

Few-shot turns are inserted after the request's leading system/developer messages: each shot is
its own conversation without its system messages, then its reference answer. Which shots an
example gets is decided by ``flywheel.evaluate.fewshot``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..relabel import teacher_request
from .examples import Example

__all__ = ["REFERENCE", "Candidate", "candidate_request", "candidates_for", "is_fine_tuned"]

REFERENCE = "reference"
"""The name the reference answers go by when a judge compares against them."""
_SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Candidate:
    """One answering party: its name in reports, the model called, and its few-shot count."""

    name: str
    model: str
    few_shot: int = 0
    fine_tuned: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "few_shot": self.few_shot,
            "fine_tuned": self.fine_tuned,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(str(data["name"]), str(data["model"]), int(data["few_shot"]), bool(data["fine_tuned"]))


def is_fine_tuned(model: str, known: Iterable[str] = ()) -> bool:
    """A fine-tuned model: OpenAI's ``ft:`` form, or a model a flywheel job produced."""
    return model.startswith("ft:") or model in set(known)


def candidates_for(
    models: Sequence[str], few_shot: int, fine_tuned_models: Iterable[str] = ()
) -> list[Candidate]:
    """The candidates for ``--models``: each model, then each base model's ``+Kshot`` baseline.

    The prompted baselines come first in the list (a report reads baseline first), then the
    models as given. Raises ``UsageError`` for an empty or repeated model.
    """
    names = [model.strip() for model in models]
    if not names or any(not name for name in names):
        raise UsageError(
            "give at least one model, e.g. --models gpt-4o-mini,ft:gpt-4o-mini:acme::abc", "--models"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"model listed twice: {', '.join(repeated)}", "--models")
    if REFERENCE in names:
        raise UsageError(f"{REFERENCE!r} is the name of the reference answers, not a model", "--models")
    known = set(fine_tuned_models)
    plain = [Candidate(name, name, 0, is_fine_tuned(name, known)) for name in names]
    if few_shot <= 0:
        return plain
    prompted = [
        Candidate(f"{candidate.model}+{few_shot}shot", candidate.model, few_shot, False)
        for candidate in plain
        if not candidate.fine_tuned
    ]
    if not prompted:
        raise UsageError(
            "--few-shot needs a base model among --models (fine-tuned ones are not prompted)", "--few-shot"
        )
    return [*prompted, *plain]


def candidate_request(
    example: Example, candidate: Candidate, shots: Sequence[Example] = ()
) -> dict[str, Any]:
    """The request body ``candidate`` is sent for ``example`` (with ``shots`` as prior turns)."""
    body = teacher_request(example.request, candidate.model)
    if shots:
        messages = list(body["messages"])
        head = 0
        while head < len(messages) and _role(messages[head]) in _SYSTEM_ROLES:
            head += 1
        turns = [turn for shot in shots for turn in _shot_turns(shot)]
        body["messages"] = [*messages[:head], *turns, *messages[head:]]
    return body


def _shot_turns(shot: Example) -> list[dict[str, Any]]:
    turns = [dict(message) for message in shot.messages if _role(message) not in _SYSTEM_ROLES]
    answer = {key: value for key, value in shot.reference.items() if key != "weight"}
    if answer.get("tool_calls"):  # a tool call without its tool's reply cannot be a prior turn
        answer = {"role": "assistant", "content": _tool_calls_text(answer["tool_calls"])}
    return [*turns, answer]


def _tool_calls_text(tool_calls: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for call in tool_calls:
        function = call.get("function") or {}
        parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    return "\n".join(parts)


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None
