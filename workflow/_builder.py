"""The builder: declare statuses, steps, callbacks, timeouts, connectors and hooks."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Self, TypeVar, get_args

from prometheus_client import CollectorRegistry

from ._adapters import (
    ConnectorConstructor,
    DirectPublisher,
    EventStreamer,
    RecordStore,
    RoleScheduler,
    TimeoutStore,
)
from ._clock import Clock, as_timedelta
from ._engine import Engine
from ._graph import Graph
from ._options import DEFAULT_OPTIONS, OutboxOptions, ProcessOptions, make_options, retry_policy
from ._record import ConnectorEvent, TypedRecord
from ._retry import PausedBy, RetryPolicy
from ._run import Run, StepResult
from ._runstate import RunState
from ._text import check_text
from ._usercode import fn_name
from ._workflow import Workflow

__all__ = ["Builder", "duration_timer"]

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

StepFn = Callable[[Run[T, S]], Awaitable[StepResult[S]] | StepResult[S]]
CallbackFn = Callable[[Run[T, S], bytes], Awaitable[StepResult[S]] | StepResult[S]]
TimerFn = Callable[[Run[T, S], datetime], Awaitable[datetime | None] | datetime | None]
TimeoutFn = Callable[[Run[T, S], datetime], Awaitable[StepResult[S]] | StepResult[S]]
HookFn = Callable[[TypedRecord[T, S]], Awaitable[None] | None]
ChildrenFn = Callable[
    [Run[T, S], list[TypedRecord[Any, Any]]], Awaitable[StepResult[S]] | StepResult[S]
]
ConnectorFn = Callable[["Workflow[T, S]", ConnectorEvent], Awaitable[None] | None]


Duration = timedelta | float
"""A duration option: a ``timedelta`` or a number of seconds."""


def duration_timer(duration: timedelta | float) -> Callable[[Any, datetime], datetime]:
    """A timer function that expires ``duration`` after the run reaches the status."""
    d = as_timedelta(duration)
    if d < timedelta(0):
        raise ValueError("duration_timer needs a non-negative duration")

    def timer(run: Any, now: datetime) -> datetime:
        return now + d

    timer.__name__ = f"duration_timer({d})"
    return timer


@dataclass
class StepConfig:
    fn: Callable[..., Any]
    options: ProcessOptions = field(default_factory=ProcessOptions)
    # A fan-in (add_children_done): fn(run, children) once every child finished.
    children_done: bool = False
    # The saga: what undoes this step (compensate_with), and its retry policy.
    compensation: Callable[..., Any] | None = None
    compensation_retry: RetryPolicy | None = None


@dataclass
class TimeoutConfig:
    pairs: list[tuple[Callable[..., Any], Callable[..., Any]]] = field(default_factory=list)
    options: ProcessOptions = field(default_factory=ProcessOptions)


@dataclass
class ConnectorConfig:
    constructor: ConnectorConstructor
    fn: Callable[..., Any]
    options: ProcessOptions = field(default_factory=ProcessOptions)


class _Handle:
    """Returned by ``add_step``/``add_timeout``/``add_connector``: set that process's options."""

    _refused: tuple[str, ...] = ()

    def __init__(self, target: StepConfig | TimeoutConfig | ConnectorConfig, what: str) -> None:
        self._target = target
        self._what = what

    def with_options(
        self,
        *,
        parallel_count: int | None = None,
        polling_frequency: Duration | None = None,
        err_backoff: Duration | None = None,
        lag: Duration | None = None,
        lag_alert: Duration | None = None,
        pause_after_err_count: int | None = None,
        concurrency: int | None = None,
        step_timeout: Duration | None = None,
        retry: RetryPolicy | None = None,
    ) -> Self:
        """Set this process's options; each one given replaces a previous value, and one not
        given (``None``) keeps the workflow's default (``build(default_options=...)``), which
        falls back to the built-in default. ``None`` never means "off": an option that can be
        off is off at zero (``err_backoff=0``, ``pause_after_err_count=0``, ``lag=0``,
        ``step_timeout=0``). Durations are a ``timedelta`` or seconds. The README's options
        table says what each one does. ``retry`` is this process's :class:`RetryPolicy`
        (``err_backoff`` and ``pause_after_err_count`` are shorthands for a fixed-backoff one).
        """
        options = {
            "parallel_count": parallel_count,
            "polling_frequency": polling_frequency,
            "err_backoff": err_backoff,
            "lag": lag,
            "lag_alert": lag_alert,
            "pause_after_err_count": pause_after_err_count,
            "concurrency": concurrency,
            "step_timeout": step_timeout,
            "retry": retry,
        }
        for name in self._refused:
            if options.get(name) is not None:
                raise ValueError(f"{self._what} cannot be configured with {name}")
        opts = make_options(**options)
        self._target.options = opts.over(self._target.options)
        return self


class _StepHandle(_Handle):
    """Returned by ``add_step`` / ``add_children_done``: options, and the step's compensation."""

    _target: StepConfig

    def compensate_with(
        self, fn: Callable[[Run[Any, Any]], Any], *, retry: RetryPolicy | None = None
    ) -> _StepHandle:
        """Declare what undoes this step (a saga). When a later step's retry policy gives
        up with ``on_exhausted="compensate"``, the compensations of the steps the run
        completed run newest first, each once per completion of its step: ``fn(run)``
        (mutate ``run.object`` to record what it did; its return value is ignored). Each one
        is a version of the run in its history; then the run ends at the workflow's
        ``compensate_to`` status. A compensation that fails is retried under ``retry``
        (default: 5 attempts, backoff 1 s doubling up to 1 min); when that gives up, the
        run is paused (``paused_by`` "compensation failed") for a person, and resuming it
        tries the compensations left again."""
        Builder._callable(fn, "a compensation function")
        if retry is not None:
            if not isinstance(retry, RetryPolicy):
                raise ValueError(f"retry must be a RetryPolicy, got {retry!r}")
            if retry.on_exhausted != "pause":
                raise ValueError(
                    "a compensation's retry policy can only pause the run when it gives up "
                    f'(on_exhausted="pause"), got {retry.on_exhausted!r}'
                )
        self._target.compensation = fn
        self._target.compensation_retry = retry
        return self


class _ChildrenHandle(_StepHandle):
    """Returned by ``add_children_done``: also a deadline."""

    def __init__(self, target: StepConfig, what: str, builder: Builder[Any, Any], src: Any):
        super().__init__(target, what)
        self._builder = builder
        self._src = src

    def with_deadline(self, after: Duration, status: Any) -> _ChildrenHandle:
        """Stop waiting ``after`` the run reached the status (a durable timer): the run
        moves to ``status`` whether or not its children finished (they go on; cancel them
        from that status's step if they must stop). Needs a timeout store."""
        deadline = as_timedelta(after)

        def expired(run: Run[Any, Any], now: datetime) -> Any:
            return status

        expired.__name__ = f"children_deadline_to_{getattr(status, 'name', status)}"
        self._builder.add_timeout(self._src, duration_timer(deadline), expired, status)
        return self


class _TimeoutHandle(_Handle):
    _refused = ("parallel_count", "lag", "concurrency")


class _ConnectorHandle(_Handle):
    # A connector keeps its stream's order: a failing event is retried in place.
    _refused = ("retry",)


class Builder(Generic[T, S]):
    """Declares a workflow. ``Builder[User, Status]("name")`` or ``Builder("name", User, Status)``.

    ``T`` is anything pydantic can validate and dump to JSON; ``S`` is an ``enum.IntEnum`` whose
    value 0 is reserved for "unknown".
    """

    def __init__(
        self,
        name: str,
        object_type: type[T] | Any = None,
        status_type: type[S] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a workflow needs a non-empty name")
        check_text(name, "the workflow name")
        self.name = name
        self._object_type = object_type
        self._status_type: type[S] | None = None
        if status_type is not None:
            self._set_status_type(status_type)
        self.graph = Graph()
        self.steps: dict[int, StepConfig] = {}
        self.callbacks: dict[int, list[Callable[..., Any]]] = {}
        self.timeouts: dict[int, TimeoutConfig] = {}
        self.connectors: dict[str, ConnectorConfig] = {}
        self.hooks: dict[RunState, Callable[..., Any]] = {}
        self.compensated: int | None = None

    # -- types --------------------------------------------------------------------------

    def _set_status_type(self, status_type: Any) -> None:
        if not (isinstance(status_type, type) and issubclass(status_type, enum.IntEnum)):
            raise ValueError(f"the status type must be an enum.IntEnum, got {status_type!r}")
        if self._status_type is not None and self._status_type is not status_type:
            raise ValueError(
                f"statuses of {status_type.__name__} mixed with {self._status_type.__name__}; "
                "a workflow uses one status enum"
            )
        self._status_type = status_type  # type: ignore[assignment]

    def _generic_args(self) -> tuple[Any, ...]:
        orig = getattr(self, "__orig_class__", None)
        return get_args(orig) if orig is not None else ()

    def _status(self, value: Any, role: str) -> int:
        args = self._generic_args()
        if self._status_type is None and len(args) == 2 and isinstance(args[1], type):
            self._set_status_type(args[1])
        if not isinstance(value, enum.IntEnum):
            raise ValueError(
                f"{role} status must be a member of the workflow's IntEnum, got {value!r}"
            )
        self._set_status_type(type(value))
        if int(value) == 0:
            raise ValueError(f"status 0 ({value!r}) is reserved for 'unknown'; use it nowhere")
        return int(value)

    def _edges(self, src: Any, dsts: tuple[Any, ...], what: str) -> int:
        s = self._status(src, "'from'")
        if not dsts:
            raise ValueError(f"{what}({src!r}, ...) needs at least one destination status")
        self.graph.add(s, *(self._status(d, "'to'") for d in dsts))
        return s

    @staticmethod
    def _callable(fn: Any, what: str) -> None:
        if not callable(fn):
            raise ValueError(f"{what} must be callable, got {fn!r}")

    # -- declarations -------------------------------------------------------------------

    def add_step(self, from_status: S, fn: StepFn[T, S], *to: S) -> _StepHandle:
        """One step consumes runs at ``from_status``; ``fn(run)`` returns the next status."""
        self._callable(fn, "a step function")
        s = self._status(from_status, "'from'")
        if s in self.steps:
            raise ValueError(
                f"add_step({from_status!r}, ...) already exists: only one step can consume a "
                f"status (existing: {fn_name(self.steps[s].fn)})"
            )
        self._edges(from_status, to, "add_step")
        cfg = self.steps[s] = StepConfig(fn)
        return _StepHandle(cfg, f"step {from_status!r}")

    def add_children_done(self, from_status: S, fn: ChildrenFn[T, S], *to: S) -> _ChildrenHandle:
        """A fan-in: runs at ``from_status`` wait for every child they started
        (``run.start_child``) to finish; then ``fn(run, children)`` returns the next status,
        like a step. ``children`` are the final versions of every child of the run, oldest
        first, each with its own workflow's object and status (``child.run_state`` says how
        it ended). Event driven across processes: a child's finishing write tells the
        parent. Options and a compensation as for a step; ``.with_deadline(after, status)``
        stops waiting after a time."""
        self._callable(fn, "a children-done function")
        s = self._status(from_status, "'from'")
        if s in self.steps:
            raise ValueError(
                f"add_children_done({from_status!r}, ...): a step already consumes "
                f"{from_status!r} (existing: {fn_name(self.steps[s].fn)})"
            )
        self._edges(from_status, to, "add_children_done")
        cfg = self.steps[s] = StepConfig(fn, children_done=True)
        return _ChildrenHandle(cfg, f"children-done {from_status!r}", self, from_status)

    def compensate_to(self, status: S) -> None:
        """The terminal status of a run whose compensations ran (a saga that undid its
        steps): the run ends there, COMPLETED, once the last compensation succeeded.
        Needed by ``RetryPolicy(on_exhausted="compensate")``."""
        self.compensated = self._status(status, "the compensated")

    def add_callback(self, from_status: S, fn: CallbackFn[T, S], *to: S) -> None:
        """``fn(run, payload)`` runs when ``wf.callback(foreign_id, from_status, payload)`` is
        called. Several callbacks may share a status."""
        self._callable(fn, "a callback function")
        s = self._edges(from_status, to, "add_callback")
        self.callbacks.setdefault(s, []).append(fn)

    def add_timeout(
        self, from_status: S, timer_fn: TimerFn[T, S], timeout_fn: TimeoutFn[T, S], *to: S
    ) -> _Handle:
        """When a run reaches ``from_status``, ``timer_fn(run, now)`` gives the expiry (or
        ``None``); at expiry ``timeout_fn(run, now)`` returns the next status."""
        self._callable(timer_fn, "a timer function")
        self._callable(timeout_fn, "a timeout function")
        s = self._edges(from_status, to, "add_timeout")
        cfg = self.timeouts.setdefault(s, TimeoutConfig())
        cfg.pairs.append((timer_fn, timeout_fn))
        return _TimeoutHandle(cfg, f"timeout {from_status!r}")

    def add_connector(
        self, name: str, constructor: ConnectorConstructor, fn: ConnectorFn[T, S]
    ) -> _Handle:
        """Consume an external stream; ``fn(wf, event)`` usually triggers or calls back."""
        if not isinstance(name, str) or not name:
            raise ValueError("a connector needs a non-empty name")
        if name in self.connectors:
            raise ValueError(f"connector names need to be unique: {name!r} is already used")
        if not callable(getattr(constructor, "make", None)):
            raise ValueError(f"connector {name!r}: the constructor needs an async make(name)")
        self._callable(fn, "a connector function")
        cfg = self.connectors[name] = ConnectorConfig(constructor, fn)
        return _ConnectorHandle(cfg, f"connector {name!r}")

    def _hook(self, state: RunState, hook: Any) -> None:
        self._callable(hook, "a hook")
        self.hooks[state] = hook

    def on_pause(self, hook: HookFn[T, S]) -> None:
        self._hook(RunState.PAUSED, hook)

    def on_cancel(self, hook: HookFn[T, S]) -> None:
        self._hook(RunState.CANCELLED, hook)

    def on_complete(self, hook: HookFn[T, S]) -> None:
        self._hook(RunState.COMPLETED, hook)

    def on_data_deleted(self, hook: HookFn[T, S]) -> None:
        self._hook(RunState.DATA_DELETED, hook)

    # -- build --------------------------------------------------------------------------

    def _check_retry_targets(self, defaults: ProcessOptions) -> None:
        """A policy's ``on_exhausted`` status must be a declared transition of its process."""
        merged = defaults.over(DEFAULT_OPTIONS)
        processes = [(s, "step", c.options) for s, c in self.steps.items()]
        processes += [(s, "timeout", c.options) for s, c in self.timeouts.items()]
        for status, what, own in processes:
            target = retry_policy(own, merged).on_exhausted
            if target == "compensate":
                assert self._status_type is not None
                member = self._status_type(status)
                if what != "step":
                    raise ValueError(
                        f'the retry policy of timeout {member!r} says on_exhausted="compensate"'
                        ": only a step's can; move to a status instead"
                    )
                if self.compensated is None:
                    raise ValueError(
                        f'the retry policy of step {member!r} says on_exhausted="compensate": '
                        "declare where compensated runs end with "
                        "builder.compensate_to(Status.COMPENSATED)"
                    )
                self.graph.add(status, self.compensated)
                continue
            if not isinstance(target, enum.IntEnum):
                continue
            assert self._status_type is not None
            member = self._status_type(status)
            if not isinstance(target, self._status_type):
                raise ValueError(
                    f"the retry policy of {what} {member!r} moves to {target!r} when its "
                    f"attempts run out, which is not a {self._status_type.__name__}"
                )
            if not self.graph.allowed(status, int(target)):
                raise ValueError(
                    f"the retry policy of {what} {member!r} moves to {target!r} when its "
                    f"attempts run out, but {member!r} -> {target!r} is not declared: add it "
                    f"to the {what}'s destinations"
                )

    def build(
        self,
        event_streamer: EventStreamer,
        record_store: RecordStore,
        role_scheduler: RoleScheduler,
        *,
        timeout_store: TimeoutStore | None = None,
        clock: Clock | None = None,
        default_options: ProcessOptions | dict[str, Any] | None = None,
        outbox: OutboxOptions | None = OutboxOptions(),  # noqa: B008 - immutable
        custom_delete: Callable[[T], T | Awaitable[T]] | None = None,
        pause_retry: timedelta | float | None = timedelta(hours=1),
        pause_retry_for: Collection[PausedBy] = (PausedBy.RETRIES_EXHAUSTED, PausedBy.STEP),
        logger: logging.Logger | None = None,
        debug: bool = False,
        error_counter: Any = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> Workflow[T, S]:
        """Validate the declaration and return the :class:`Workflow`."""
        args = self._generic_args()
        object_type = self._object_type
        if object_type is None and args:
            object_type = args[0]
        if object_type is None:
            raise ValueError(
                f"workflow {self.name!r}: give the object type, as Builder[T, S](name) or "
                "Builder(name, T, S)"
            )
        if self._status_type is None and len(args) == 2:
            self._set_status_type(args[1])
        if not self.graph.from_order or self._status_type is None:
            raise ValueError(
                f"workflow {self.name!r} requires at least one starting point: add a step, "
                "callback or timeout"
            )
        if self.timeouts and timeout_store is None:
            raise ValueError(
                f"workflow {self.name!r} has timeouts ({len(self.timeouts)} status(es)) but no "
                "timeout store: pass build(..., timeout_store=...)"
            )
        for what, value in (
            ("event_streamer", event_streamer),
            ("record_store", record_store),
            ("role_scheduler", role_scheduler),
        ):
            if value is None:
                raise ValueError(f"build() needs a {what}")
        publishes_to = (
            record_store.publishes_to if isinstance(record_store, DirectPublisher) else None
        )
        if publishes_to is not None and publishes_to is not event_streamer:
            raise ValueError(
                f"workflow {self.name!r}: the record store appends events to its own streamer "
                f"({publishes_to!r}), not to the event_streamer given to build(): pass that "
                "same streamer to both, or make the store without streamer="
            )
        if isinstance(default_options, dict):
            default_options = make_options(**default_options)
        if custom_delete is not None:
            self._callable(custom_delete, "custom_delete")
        resume_for = frozenset(PausedBy(p) for p in pause_retry_for)
        self._check_retry_targets(default_options or ProcessOptions())
        if self.compensated is not None:
            self.graph.add_node(self.compensated)
            if not self.graph.is_terminal(self.compensated):
                member = self._status_type(self.compensated)
                raise ValueError(
                    f"workflow {self.name!r}: compensate_to({member!r}) needs a terminal "
                    "status (no step, callback or timeout from it)"
                )
        retry = None if pause_retry is None else as_timedelta(pause_retry)
        if retry is not None and retry <= timedelta(0):
            raise ValueError("pause_retry must be positive, or None to disable it")
        return Workflow(
            Engine(
                self,
                object_type=object_type,
                status_type=self._status_type,
                streamer=event_streamer,
                store=record_store,
                roles=role_scheduler,
                timeout_store=timeout_store,
                clock=clock,
                default_options=default_options or ProcessOptions(),
                outbox=outbox,
                custom_delete=custom_delete,
                pause_retry=retry,
                pause_retry_for=resume_for,
                logger=logger,
                debug=debug,
                metrics_registry=metrics_registry,
                error_counter=error_counter,
            )
        )
