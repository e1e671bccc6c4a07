"""How a bad ``flywheel.toml`` is reported: every problem as ``KEY.PATH: what is wrong``, with its line.

A config is edited by hand and checked by a watcher that may run unattended, so one run of
``flywheel config check`` should list everything that is wrong, each problem naming the key the
user wrote (``pipelines.classify.train.min_examples``), the line it is on, and for an unknown key
the closest known one. pydantic's error records are turned into such ``ConfigProblem`` s here;
TOML itself has no positions after parsing, so ``KeyLines`` finds a key's line with a small scan
of the text (table headers, dotted keys, a key whose value is an inline table), best effort: a key
it cannot place falls back to its table's line, then to no line at all.

Invariant: a ``ConfigError`` always has at least one problem, and its ``where`` is ``FILE:LINE``
of the first problem that has a line (``FILE`` when none has), so the CLI's one-line error points
at the place to fix.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ..errors import UsageError

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "InvalidKey",
    "KeyLines",
    "KeyPath",
    "did_you_mean",
    "error_message",
    "format_key",
    "shown",
    "toml_keys",
    "validation_problems",
]

KeyPath = tuple[str | int, ...]
"""A place in the config: table keys, and array indices as ints (``("pipelines", "a", "prune",
"strip_prefix", 0)``)."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the config: ``key`` is the dotted key path (empty for the whole file)."""

    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(UsageError):
    """The pipelines config cannot be used: missing, not TOML, or not valid.

    The message is the problem (``pipelines.classify.train.min_examples: must be >= 1, got 0``),
    or all of them (``3 problems: ...; ...; ...``, each but the first with its line); ``where`` is
    ``FILE:LINE`` or ``FILE``. ``problems`` holds them one by one.
    """

    def __init__(self, problems: Sequence[ConfigProblem], source: str) -> None:
        if not problems:
            raise ValueError("a ConfigError needs at least one problem")
        ordered = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        first_line = next((p.line for p in ordered if p.line is not None), None)
        if len(ordered) == 1:
            message = str(ordered[0])
        else:
            parts = [str(ordered[0]), *(_with_line(p) for p in ordered[1:])]
            message = f"{len(ordered)} problems: " + "; ".join(parts)
        super().__init__(message, source if first_line is None else f"{source}:{first_line}")
        self.problems: tuple[ConfigProblem, ...] = tuple(ordered)
        self.source = source


def _with_line(problem: ConfigProblem) -> str:
    return f"{problem} (line {problem.line})" if problem.line is not None else str(problem)


class InvalidKey(ValueError):
    """Raised by a model validator to blame a key below the model (``hyperparameters.beta``) rather
    than the model itself; pydantic passes it on in the error's context."""

    def __init__(self, key: KeyPath, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


# --- naming keys and values ---------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key(key: KeyPath) -> str:
    """A key path as the user would write it: ``("pipelines", "my pipe", "prune", "strip_prefix", 0)``
    -> ``pipelines."my pipe".prune.strip_prefix[0]``."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = (
            part if _BARE_KEY.fullmatch(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
        )
        text += f".{name}" if text else name
    return text


def shown(value: Any) -> str:
    """A value as the message shows it: strings quoted, TOML's words for booleans, tables and arrays
    named rather than dumped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, else `` (known: a, b, c)``."""
    candidates = sorted(set(known))
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(candidates)})" if candidates else ""


def toml_keys(model: type[BaseModel]) -> list[str]:
    """The keys a user may write for ``model``: its fields, minus the ones filled in by the loader."""
    hidden: frozenset[str] = getattr(model, "hidden_keys", frozenset())
    return [name for name in model.model_fields if name not in hidden]


# --- pydantic errors -> problems ------------------------------------------------------------------

_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "list_type": "an array",
    "tuple_type": "an array",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def error_message(error: ErrorDetails) -> str:
    """What one pydantic error says, in the config's words (``must be >= 1, got 0``)."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {shown(value)}"
    if kind in _BOUNDS:
        limit = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {_number(limit)}, got {shown(value)}"
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must be at least {ctx.get('min_length')} characters, got {len(value)}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters, got {len(value)}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {shown(value)}"
    if kind == "value_error" and isinstance(ctx.get("error"), InvalidKey):
        return str(ctx["error"].message)
    message = error["msg"].removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def validation_problems(
    exc: ValidationError,
    base: KeyPath,
    model: type[BaseModel],
    lines: KeyLines,
    *,
    extra_known: Sequence[str] = (),
) -> list[ConfigProblem]:
    """The problems of a ``ValidationError`` of ``model`` validated at ``base``.

    An unknown key gets a did-you-mean over the keys of the table it is in; at the top of
    ``model`` that is its own keys plus ``extra_known`` (a train table: the provider's keys).
    """
    problems = []
    for error in exc.errors(include_url=False):
        loc: KeyPath = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidKey):
            loc = loc + cause.key
        key = base + loc
        message = error_message(error)
        if error["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = [*(toml_keys(parent) if parent else ()), *(extra_known if len(loc) == 1 else ())]
            message = "unknown key" + did_you_mean(str(loc[-1]), known)
        problems.append(ConfigProblem(format_key(key), message, lines.line_of(key)))
    return problems


def _model_at(model: type[BaseModel], loc: KeyPath) -> type[BaseModel] | None:
    """The model that validates the table at ``loc`` below ``model`` (for its key names)."""
    current: type[BaseModel] = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        nested = _model_in(field.annotation)
        if nested is None:
            return None
        current = nested
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --- where a key is written -----------------------------------------------------------------------

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGNMENT = re.compile(rf"\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY_PART)


def _parts(dotted: str) -> tuple[str, ...]:
    parts = []
    for match in _PART.finditer(dotted):
        part = match.group(0)
        if part[:1] == '"':
            part = part[1:-1].encode().decode("unicode_escape")
        elif part[:1] == "'":
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


class KeyLines:
    """The line (1-based) on which each key path of a TOML text is written, found by a scan.

    Knows table headers (``[pipelines.a.train]``), keys and dotted keys (``filter.status = "ok"``,
    recorded with every table they open) and nothing inside values: a key inside an inline table
    or an array is on the line of the key that holds it, which is what ``line_of`` answers.
    """

    _TRIPLE: ClassVar[re.Pattern[str]] = re.compile(r'"""|\'\'\'')

    def __init__(self, text: str) -> None:
        self.first: dict[tuple[str, ...], int] = {}
        self.repeated: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        in_string = False
        for number, line in enumerate(text.splitlines(), start=1):
            if len(self._TRIPLE.findall(line)) % 2:
                was_in_string, in_string = in_string, not in_string
                if was_in_string:
                    continue
            elif in_string:
                continue
            header = _HEADER.match(line)
            if header:
                table = _parts(header.group(1))
                self._record(table, number, is_array="[[" in line.split("#")[0])
                continue
            assignment = _ASSIGNMENT.match(line)
            if assignment:
                key = table + _parts(assignment.group(1))
                for end in range(len(table) + 1, len(key)):
                    self.first.setdefault(key[:end], number)
                self._record(key, number)

    def _record(self, key: tuple[str, ...], number: int, is_array: bool = False) -> None:
        if key in self.first:
            if not is_array:
                self.repeated.setdefault(key, number)
            return
        self.first[key] = number

    def line_of(self, key: KeyPath) -> int | None:
        """The line of ``key``, else of the nearest table above it that is written, else the first
        line that writes something below the nearest ancestor; ``None`` when nothing fits."""
        path = tuple(part for part in _until_index(key))
        for end in range(len(path), 0, -1):
            if path[:end] in self.first:
                return self.first[path[:end]]
        for end in range(len(path), 0, -1):
            below = [line for written, line in self.first.items() if written[:end] == path[:end]]
            if below:
                return min(below)
        return None

    def first_repeated(self) -> tuple[tuple[str, ...], int] | None:
        """A key written twice and the line of its second writing (what TOML refuses)."""
        if not self.repeated:
            return None
        key = min(self.repeated, key=lambda k: self.repeated[k])
        return key, self.repeated[key]


def _until_index(key: KeyPath) -> Iterable[str]:
    for part in key:
        if isinstance(part, int):
            return
        yield part
