"""Flywheel SDK: a drop-in ``openai`` client that records every call into a SQL store.

    from sdk import OpenAI            # instead of: from openai import OpenAI
    client = OpenAI(tags={"app": "support-bot"})

Recording never changes what the app sees and never raises into it; see docs/sdk.md.
"""

from ._clients import AsyncAzureOpenAI, AsyncOpenAI, AzureOpenAI, OpenAI, wrap
from ._tags import tag_headers, tags
from ._writer import flush, set_global_redact, stats

__version__ = "0.1.0"

__all__ = [
    "AsyncAzureOpenAI",
    "AsyncOpenAI",
    "AzureOpenAI",
    "OpenAI",
    "__version__",
    "flush",
    "set_global_redact",
    "stats",
    "tag_headers",
    "tags",
    "wrap",
]
