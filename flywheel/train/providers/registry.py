"""Finding providers by name: the ``flywheel.providers`` entry points, built-ins always present.

A package adds a provider by declaring an entry point in its own ``pyproject.toml``::

    [project.entry-points."flywheel.providers"]
    together = "my_package.flywheel_provider:TogetherProvider"

The built-in ``openai`` and ``command`` providers are declared the same way by this distribution,
and are also known without it, so a source tree that was never installed finds them too. A
provider is imported only when a pipeline names it.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from ...errors import UsageError
from .base import Provider

__all__ = ["ENTRY_POINT_GROUP", "available_providers", "provider_class"]

ENTRY_POINT_GROUP = "flywheel.providers"

_BUILT_IN = {
    "command": "flywheel.train.providers.command:CommandProvider",
    "openai": "flywheel.train.providers.openai:OpenAIProvider",
}


def _declared() -> dict[str, str]:
    declared = dict(_BUILT_IN)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        declared[entry_point.name] = entry_point.value
    return declared


def available_providers() -> list[str]:
    """The names a pipeline can use for ``provider``, sorted."""
    return sorted(_declared())


def provider_class(name: str) -> type[Provider]:
    """The provider class called ``name``; ``UsageError`` when there is none or it cannot load."""
    target = _declared().get(name)
    if target is None:
        raise UsageError(
            f"unknown provider {name!r} (available: {', '.join(available_providers())})", "provider"
        )
    module_name, _, attribute = target.partition(":")
    try:
        loaded = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"provider {name!r} ({target}) cannot be loaded: {exc}", "provider") from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Provider)):
        raise UsageError(f"provider {name!r} ({target}) is not a flywheel Provider class", "provider")
    return loaded
