"""Training providers: where a fine-tuning job runs (``openai``, ``command``, or a plug-in).

See ``base`` for the interface and ``registry`` for how a provider is found by name.
"""

from .base import (
    JOB_METADATA_KEY,
    RUNNING_STATUSES,
    STATUSES,
    TERMINAL_STATUSES,
    JobEvent,
    JobHandle,
    JobRequest,
    JobState,
    Method,
    Provider,
    ProviderError,
    ProviderSettings,
    TrainingFiles,
    TransientProviderError,
    export_sides,
)
from .registry import ENTRY_POINT_GROUP, available_providers, provider_class

__all__ = [
    "ENTRY_POINT_GROUP",
    "JOB_METADATA_KEY",
    "RUNNING_STATUSES",
    "STATUSES",
    "TERMINAL_STATUSES",
    "JobEvent",
    "JobHandle",
    "JobRequest",
    "JobState",
    "Method",
    "Provider",
    "ProviderError",
    "ProviderSettings",
    "TrainingFiles",
    "TransientProviderError",
    "available_providers",
    "export_sides",
    "provider_class",
]
