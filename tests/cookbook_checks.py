"""An independent second opinion on exported lines: the format checks of OpenAI's cookbook.

Re-implemented from the description of the notebook "Data preparation and analysis for chat model
fine-tuning" (its current version, which accepts a per-message ``weight``), deliberately without
sharing any code with ``flywheel.validate``, so a test that runs both catches a validator that
drifted from what OpenAI's own tooling accepts. Each check counts under the notebook's error name:

- ``data_type``: the example is not a JSON object (nothing else is checked for it);
- ``missing_messages_list``: ``messages`` is absent or empty (nothing else is checked for it);
- ``message_missing_key``: a message has no ``role`` or no ``content`` key;
- ``message_unrecognized_key``: a message has a key other than role, content, name,
  function_call, weight;
- ``unrecognized_role``: a role other than system, user, assistant, function;
- ``missing_content``: content is not a string, or is empty without a ``function_call``;
- ``example_missing_assistant_message``: no message has the assistant role.

The notebook predates tools: ``tool`` messages and ``tool_calls`` fail it by construction, so
only examples without tools are expected to pass it. Token counts are not checked here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

RECOGNIZED_KEYS = frozenset({"role", "content", "name", "function_call", "weight"})
RECOGNIZED_ROLES = ("system", "user", "assistant", "function")


def cookbook_format_errors(dataset: Iterable[Any]) -> dict[str, int]:
    """Counts of the notebook's format errors over ``dataset`` (parsed JSONL lines); empty when
    the dataset passes."""
    errors: Counter[str] = Counter()
    for example in dataset:
        if not isinstance(example, dict):
            errors["data_type"] += 1
            continue
        messages = example.get("messages")
        if not messages:
            errors["missing_messages_list"] += 1
            continue
        for message in messages:
            errors.update(_message_errors(message))
        if not any(message.get("role") == "assistant" for message in messages):
            errors["example_missing_assistant_message"] += 1
    return dict(errors)


def _message_errors(message: dict[str, Any]) -> list[str]:
    found = []
    if "role" not in message or "content" not in message:
        found.append("message_missing_key")
    if not set(message) <= RECOGNIZED_KEYS:
        found.append("message_unrecognized_key")
    if message.get("role") not in RECOGNIZED_ROLES:
        found.append("unrecognized_role")
    content = message.get("content")
    if not isinstance(content, str) or (content == "" and not message.get("function_call")):
        found.append("missing_content")
    return found
