"""Flywheel: turn logged LLM calls into fine-tuning data.

Every ``flywheel`` command is a function here first; the CLI (``flywheel.cli``) only parses options
and prints. Errors a user can act on are ``FlywheelError``s (see ``flywheel.errors``).
For analysis, ``flywheel.query(since="7d", tags={"prompt_id": "classify"}).to_pandas()`` reads the
calls a ``CallFilter`` selects. As with ``migrate``, the function shadows its module here: import the
module's other names with ``from flywheel.query import ...``.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("llm-flywheel")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .datasets import create_dataset, get_dataset, list_datasets, update_dataset
from .dedup import dedup_dataset
from .errors import BadFilterError, FlywheelError, StoreError, UsageError
from .export import ExportError, SplitRules, export_dataset
from .logs import recent_calls
from .migrate import MigrationResult, migrate, pending_migrations
from .query import CallFilter, CallQuery, filter_calls, parse_tag, parse_time, query
from .relabel import RelabelError, relabel_dataset
from .review import ReviewFileError, export_review, import_review
from .stats import call_stats

__all__ = [
    "BadFilterError",
    "CallFilter",
    "CallQuery",
    "ExportError",
    "FlywheelError",
    "MigrationResult",
    "RelabelError",
    "ReviewFileError",
    "SplitRules",
    "StoreError",
    "UsageError",
    "__version__",
    "call_stats",
    "create_dataset",
    "dedup_dataset",
    "export_dataset",
    "export_review",
    "filter_calls",
    "get_dataset",
    "import_review",
    "list_datasets",
    "migrate",
    "parse_tag",
    "parse_time",
    "pending_migrations",
    "query",
    "recent_calls",
    "relabel_dataset",
    "update_dataset",
]
