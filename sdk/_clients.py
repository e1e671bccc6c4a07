"""Drop-in clients: ``openai``'s own classes plus recording options, and ``wrap()`` for existing ones.

Nothing here patches ``openai`` globally. Recording happens in the client's own transport
(``_transport.install``). The only other changes are per instance:

- ``_prepare_request`` (the hook ``openai`` calls for every attempt) attaches the client's
  ``RecordOptions`` and the merged tags to ``request.extensions`` and removes the private per-call
  tag header;
- resource objects reached from a recording client (``client.chat.completions`` ...) belong to a
  subclass of their own class whose public methods accept ``tags=`` and turn it into that header,
  and send ``model="flywheel:NAME"`` as the pipeline's current model (``_routing``).
  ``isinstance`` checks, return values, exceptions and stream classes are untouched.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import openai
import orjson
from openai._resource import AsyncAPIResource, SyncAPIResource

from . import _config, _health
from ._exchange import RecordOptions
from ._routing import ROUTE_PREFIX, route_call, route_call_async
from ._tags import TAG_HEADER, coerce_tags, context_tags, merge_tags, parse_tag_header, per_call_layer
from ._transport import EXTENSION, install

__all__ = ["AsyncAzureOpenAI", "AsyncOpenAI", "AzureOpenAI", "OpenAI", "wrap"]

Redactor = Callable[[dict[str, Any]], dict[str, Any] | None]
ClientT = TypeVar("ClientT", openai.OpenAI, openai.AsyncOpenAI)

_KEEP: Any = object()


# --- per-call tags on resource methods -------------------------------------------------------


def _with_tags(kwargs: dict[str, Any], tags: object) -> None:
    try:
        headers = kwargs.get("extra_headers")
        layer = per_call_layer(tags, headers)
        if layer:
            value = orjson.dumps(layer).decode()
            kwargs["extra_headers"] = {**headers, TAG_HEADER: value} if headers else {TAG_HEADER: value}
    except Exception as exc:
        _health.report_error("tags", exc)


def _tagging_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_method(self: Any, *args: Any, tags: object = None, **kwargs: Any) -> Any:
            model = kwargs.get("model")
            if isinstance(model, str) and model.startswith(ROUTE_PREFIX):
                tags = await route_call_async(self, kwargs, tags)
            if tags is not None:
                _with_tags(kwargs, tags)
            return await fn(self, *args, **kwargs)

        return async_method

    @functools.wraps(fn)
    def method(self: Any, *args: Any, tags: object = None, **kwargs: Any) -> Any:
        model = kwargs.get("model")
        if isinstance(model, str) and model.startswith(ROUTE_PREFIX):
            tags = route_call(self, kwargs, tags)
        if tags is not None:
            _with_tags(kwargs, tags)
        return fn(self, *args, **kwargs)

    return method


def _accepts_extra_headers(fn: Callable[..., Any]) -> bool:
    try:
        return "extra_headers" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _tagging_property(prop: functools.cached_property[Any]) -> functools.cached_property[Any]:
    func = prop.func

    @functools.wraps(func)
    def getter(self: Any) -> Any:
        value = func(self)
        _make_tagging(value)
        return value

    return functools.cached_property(getter)


def _tagging_namespace(cls: type) -> dict[str, Any]:
    """Overrides for ``cls``: tag-aware public methods and sub-resource properties."""
    namespace: dict[str, Any] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, functools.cached_property):
            namespace[name] = _tagging_property(attr)
        elif inspect.isfunction(attr) and _accepts_extra_headers(attr):
            namespace[name] = _tagging_method(attr)
    return namespace


_tagging_classes: dict[type, type] = {}


def _tagging_class(cls: type) -> type:
    known = _tagging_classes.get(cls)
    if known is not None:
        return known
    namespace = _tagging_namespace(cls)
    namespace.update(__module__=cls.__module__, __qualname__=cls.__qualname__, __doc__=cls.__doc__)
    tagging = _tagging_classes[cls] = type(cls.__name__, (cls,), namespace)
    return tagging


def _make_tagging(value: object) -> None:
    """Give an ``openai`` resource object (and, lazily, its sub-resources) ``tags=`` support."""
    if isinstance(value, SyncAPIResource | AsyncAPIResource):
        cls = type(value)
        if not getattr(cls, "_flywheel_tagging", False):
            tagging = _tagging_class(cls)
            tagging._flywheel_tagging = True  # type: ignore[attr-defined]
            value.__class__ = tagging


# --- the clients ------------------------------------------------------------------------------


def _setup(client: Any, tags: Mapping[str, object] | None, database_url: str | None, redact: Any) -> None:
    client._flywheel_options = RecordOptions(tags=coerce_tags(tags), database_url=database_url, redact=redact)
    if not _config.disabled():
        try:
            install(client._client)
        except Exception as exc:
            _health.report_error("install", exc)


def _attach(client: Any, request: Any) -> None:
    """Runs for every attempt, just before sending: carry options and tags to the transport."""
    try:
        per_call = request.headers.pop(TAG_HEADER, None) if TAG_HEADER in request.headers else None
        options: RecordOptions = client._flywheel_options
        tags = merge_tags(options.tags, context_tags(), parse_tag_header(per_call) if per_call else None)
        request.extensions[EXTENSION] = (options, tags)
    except Exception as exc:
        _health.report_error("prepare_request", exc)


def _copy_options(source: Any, target: Any, tags: Any, database_url: Any, redact: Any) -> None:
    options: RecordOptions = source._flywheel_options
    changes: dict[str, Any] = {}
    if tags is not _KEEP:
        changes["tags"] = coerce_tags(tags)
    if database_url is not _KEEP:
        changes["database_url"] = database_url
    if redact is not _KEEP:
        changes["redact"] = redact
    target._flywheel_options = replace(options, **changes)


def _recording_namespace(base: type) -> dict[str, Any]:
    """``__init__``, ``_prepare_request`` and ``copy`` for a recording subclass of ``base``.

    Built per base class (rather than as a mixin) so that the subclass has ``base`` as its only
    parent: ``wrap()`` can then switch an existing instance's class without changing its layout.
    """

    def __init__(
        self: Any,
        *args: Any,
        tags: Mapping[str, object] | None = None,
        database_url: str | None = None,
        redact: Redactor | None = None,
        **kwargs: Any,
    ) -> None:
        base.__init__(self, *args, **kwargs)  # type: ignore[misc]
        _setup(self, tags, database_url, redact)

    def copy(
        self: Any,
        *args: Any,
        tags: Mapping[str, object] | None = _KEEP,
        database_url: str | None = _KEEP,
        redact: Redactor | None = _KEEP,
        **kwargs: Any,
    ) -> Any:
        new = base.copy(self, *args, **kwargs)  # type: ignore[attr-defined]
        _copy_options(self, new, tags, database_url, redact)
        return new

    if issubclass(base, openai.AsyncOpenAI):

        async def _prepare_request(self: Any, request: Any) -> None:
            await base._prepare_request(self, request)
            _attach(self, request)

    else:

        def _prepare_request(self: Any, request: Any) -> None:  # type: ignore[misc]
            base._prepare_request(self, request)  # type: ignore[attr-defined]
            _attach(self, request)

    copy.__doc__ = base.copy.__doc__  # type: ignore[attr-defined]
    return {
        "__init__": __init__,
        "_prepare_request": _prepare_request,
        "copy": copy,
        "with_options": copy,
        "_flywheel_recording": True,
    }


def _add_tagging_properties(cls: type, base: type) -> None:
    """Make the client's resource properties (``chat``, ``responses`` ...) hand out tag-aware resources."""
    for name in dir(base):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(base, name)
        if isinstance(attr, functools.cached_property):
            prop = _tagging_property(attr)
            prop.__set_name__(cls, name)
            setattr(cls, name, prop)


_recording_classes: dict[type, type] = {}


def _recording_class(base: type, module: str | None = None, doc: str | None = None) -> type:
    known = _recording_classes.get(base)
    if known is not None:
        return known
    namespace = _recording_namespace(base)
    namespace.update(
        __module__=module or base.__module__,
        __qualname__=base.__qualname__,
        __doc__=doc or base.__doc__,
    )
    recording = _recording_classes[base] = type(base.__name__, (base,), namespace)
    _add_tagging_properties(recording, base)
    return recording


_DOC = "``openai.{}`` that records every call. Extra options: ``tags``, ``database_url``, ``redact``."

if TYPE_CHECKING:

    class _RecordingOptions:
        """What type checkers see: the ``openai`` constructor plus the recording options."""

        def __init__(
            self,
            *args: Any,
            tags: Mapping[str, object] | None = None,
            database_url: str | None = None,
            redact: Redactor | None = None,
            **kwargs: Any,
        ) -> None: ...

    class OpenAI(_RecordingOptions, openai.OpenAI): ...

    class AsyncOpenAI(_RecordingOptions, openai.AsyncOpenAI): ...

    class AzureOpenAI(_RecordingOptions, openai.AzureOpenAI): ...

    class AsyncAzureOpenAI(_RecordingOptions, openai.AsyncAzureOpenAI): ...

else:
    OpenAI = _recording_class(openai.OpenAI, "sdk", _DOC.format("OpenAI"))
    AsyncOpenAI = _recording_class(openai.AsyncOpenAI, "sdk", _DOC.format("AsyncOpenAI"))
    AzureOpenAI = _recording_class(openai.AzureOpenAI, "sdk", _DOC.format("AzureOpenAI"))
    AsyncAzureOpenAI = _recording_class(openai.AsyncAzureOpenAI, "sdk", _DOC.format("AsyncAzureOpenAI"))


def wrap(
    client: ClientT,
    *,
    tags: Mapping[str, object] | None = None,
    database_url: str | None = None,
    redact: Redactor | None = None,
) -> ClientT:
    """Instrument an existing ``openai`` client in place (any ``base_url``) and return it.

    Calling ``wrap`` again on the same client replaces its recording options.
    """
    if not getattr(type(client), "_flywheel_recording", False):
        if not isinstance(client, openai.OpenAI | openai.AsyncOpenAI):
            raise TypeError(
                f"sdk.wrap() expects an openai.OpenAI or openai.AsyncOpenAI client, got {type(client)}"
            )
        client.__class__ = _recording_class(type(client))
        for value in list(vars(client).values()):
            _make_tagging(value)
    _setup(client, tags, database_url, redact)
    return client
