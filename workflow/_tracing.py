"""OpenTelemetry traces, through the optional ``otel`` extra (``opentelemetry-api``).

A span per trigger, step attempt, callback, timeout and hook; one trace per run, also across
processes. The span that writes a version of a run puts its W3C trace context
(``traceparent``, ``tracestate``) in that version's event headers (see
:func:`~workflow._record.make_outbox_event`), so the span of whoever handles the event is its
child. The trigger's context is also kept with the run, as the last line of
``meta.trace_origin`` (``traceparent: 00-…``): work that does not come from an event (a retry,
a timeout, a callback, an operator's resume) hangs under the trigger span of its run.

Everything here is a no-op while ``opentelemetry`` is not importable or no tracer provider is
set (``opentelemetry.trace.set_tracer_provider``): no span, no header, no line in
``trace_origin``. The API is imported on first use, never by ``import workflow``.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import SpanContext, Tracer

    from ._record import Record

__all__ = [
    "CALLBACK",
    "COMPENSATION",
    "HOOK",
    "STEP",
    "TIMEOUT",
    "TRACEPARENT",
    "TRACESTATE",
    "TRIGGER",
    "NoSpan",
    "current_ids",
    "inject",
    "run_span",
    "trigger_span",
    "wrote",
]

TRIGGER = "workflow.trigger"
STEP = "workflow.step"
COMPENSATION = "workflow.compensation"
CALLBACK = "workflow.callback"
TIMEOUT = "workflow.timeout"
HOOK = "workflow.hook"

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_ROOT = "traceparent: "
"""The line of ``meta.trace_origin`` that holds the run's trigger span context."""


class _Api:
    """The parts of ``opentelemetry-api`` used here, imported on first use."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.context = context
        self.trace = trace
        self.propagator = TraceContextTextMapPropagator()
        self.empty: Context = context.Context()  # a new trace starts in it
        self.unset = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self.provider: object = None
        self.tracer: Tracer | None = None
        # No provider set, and none named in the environment (read once, as the API does
        # at its first use): `trace._TRACER_PROVIDER` stays None until `set_tracer_provider`.
        # Checked first, it saves the API's environment lookup on every span (a few µs).
        self.env_provider = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


_api: _Api | None = None
_missing = False


def _load() -> _Api | None:
    global _api, _missing
    try:
        _api = _Api()
    except ImportError:
        _missing = True
    return _api


def _tracer() -> tuple[_Api, Tracer] | None:
    """The engine's tracer, or None when tracing is off. Asked at every span: a provider set
    later (``set_tracer_provider`` is once per process) is used from then on."""
    api = _api
    if api is None:
        if _missing:
            return None
        api = _load()
        if api is None:
            return None
    if not api.env_provider and getattr(api.trace, "_TRACER_PROVIDER", api) is None:
        return None  # the fast path of "no provider set"
    provider = api.trace.get_tracer_provider()
    if provider is not api.provider:
        if isinstance(provider, api.unset):
            return None
        api.tracer = provider.get_tracer("workflow")
        api.provider = provider
    assert api.tracer is not None
    return api, api.tracer


class _Engine(Protocol):
    """What a span needs of the engine: the workflow's name and its status names."""

    @property
    def name(self) -> str: ...

    def status_name(self, status: int) -> str: ...


class NoSpan:
    """A workflow span, used with ``with``. This base does nothing: tracing is off."""

    __slots__ = ()

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def failed(self, err: BaseException) -> None:
        """Record ``err`` on the span and set its status to ERROR."""

    def set_run(self, run_id: str) -> None:
        """Name the run (a trigger span learns it once the run is made)."""

    def origin(self, trace_origin: str) -> str:
        """``trace_origin`` with this span's context as its last line (a trigger's)."""
        return trace_origin


_NO_SPAN = NoSpan()


class _Live(NoSpan):
    """A recording span, the current span while entered."""

    __slots__ = ("_api", "_token", "_var", "run_id", "span")

    def __init__(self, api: _Api, span: OtelSpan, run_id: str | None) -> None:
        self._api = api
        self.span = span
        self.run_id = run_id
        """The run this span writes (None: a trigger span before its run is made)."""

    def __enter__(self) -> _Live:
        self._token = self._api.context.attach(self._api.trace.set_span_in_context(self.span))
        self._var = _current.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if isinstance(exc, Exception):
                self.failed(exc)
            self.span.end()
        finally:
            _current.reset(self._var)
            self._api.context.detach(self._token)

    def failed(self, err: BaseException) -> None:
        trace = self._api.trace
        self.span.record_exception(err)
        self.span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(err).__name__}: {err}"))

    def set_run(self, run_id: str) -> None:
        self.run_id = run_id
        self.span.set_attribute("workflow.run_id", run_id)

    def origin(self, trace_origin: str) -> str:
        parent = _traceparent(self.span.get_span_context())
        return f"{trace_origin}\n{_ROOT}{parent}" if trace_origin else f"{_ROOT}{parent}"

    def headers(self, headers: dict[str, str]) -> None:
        ctx = self.span.get_span_context()
        headers[TRACEPARENT] = _traceparent(ctx)
        if ctx.trace_state:
            headers[TRACESTATE] = ctx.trace_state.to_header()


_current: contextvars.ContextVar[_Live | None] = contextvars.ContextVar(
    "workflow_span", default=None
)
"""The engine's span being run in this context, if any."""


def _traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _root(trace_origin: str) -> str | None:
    """The trigger span context kept in a run's ``trace_origin`` (its last line), if any."""
    i = trace_origin.rfind(_ROOT)
    return None if i < 0 else trace_origin[i + len(_ROOT) :].split("\n", 1)[0]


def _parent(api: _Api, headers: Mapping[str, str] | None, record: Record) -> Context:
    """The context a run's span starts in: the event's trace context, else the run's trigger
    span, else none (a new trace; never the task's own current span)."""
    if headers is not None and TRACEPARENT in headers:
        return api.propagator.extract(headers)
    root = _root(record.meta.trace_origin)
    if root is not None:
        return api.propagator.extract({TRACEPARENT: root})
    return api.empty


def trigger_span(workflow: str, foreign_id: str) -> NoSpan:
    """The span of a trigger: a child of the caller's current span, if any."""
    found = _tracer()
    if found is None:
        return _NO_SPAN
    api, tracer = found
    span = tracer.start_span(
        TRIGGER,
        kind=api.trace.SpanKind.PRODUCER,
        attributes={"workflow.name": workflow, "workflow.foreign_id": foreign_id},
        record_exception=False,
        set_status_on_exception=False,
    )
    return _Live(api, span, None)


def run_span(
    name: str,
    wf: _Engine,
    record: Record,
    *,
    headers: Mapping[str, str] | None = None,
    attempt: int | None = None,
    process: str = "",
    link_caller: bool = False,
) -> NoSpan:
    """The span of handling one version of a run (a step attempt, a callback, a timeout or
    a hook): a child of the span that wrote it (the event's ``headers``) or else of the
    run's trigger span. ``link_caller``: link the caller's current span (a callback's
    request), which is not the parent, so that the run keeps one trace."""
    found = _tracer()
    if found is None:
        return _NO_SPAN
    api, tracer = found
    trace = api.trace
    attributes: dict[str, str | int] = {
        "workflow.name": wf.name,
        "workflow.run_id": record.run_id,
        "workflow.foreign_id": record.foreign_id,
        "workflow.status": wf.status_name(record.status),
        "workflow.run_state": record.run_state.name,
        "workflow.attempt": record.meta.attempt if attempt is None else attempt,
    }
    if process:
        attributes["workflow.process"] = process
    links = None
    if link_caller:
        caller = trace.get_current_span().get_span_context()
        if caller.is_valid:
            links = [trace.Link(caller)]
    kind = trace.SpanKind.CONSUMER if headers is not None else trace.SpanKind.INTERNAL
    span = tracer.start_span(
        name,
        context=_parent(api, headers, record),
        kind=kind,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    )
    return _Live(api, span, record.run_id)


def inject(headers: dict[str, str], record: Record) -> None:
    """Put the trace context of ``record``'s writer in its event's headers: the current
    workflow span when it handles this run (or the parent of this new child run), else the
    run's trigger span. Nothing for a run triggered without tracing and written outside of
    a span."""
    live = _current.get()
    if live is not None and live.run_id in (None, record.run_id, record.meta.parent_run_id):
        live.headers(headers)
        return
    origin = record.meta.trace_origin
    if _ROOT in origin:
        root = _root(origin)
        if root:
            headers[TRACEPARENT] = root


def wrote(record: Record) -> None:
    """Note on the current workflow span what it stored for its run (the next status)."""
    live = _current.get()
    if live is not None and (live.run_id is None or live.run_id == record.run_id):
        live.span.set_attribute("workflow.next_status", record.meta.status_description)
        live.span.set_attribute("workflow.next_run_state", record.run_state.name)


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids (hex), for log lines; None without one."""
    api = _api
    if api is None:
        return None
    ctx = api.trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
