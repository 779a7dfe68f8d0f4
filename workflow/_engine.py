"""The engine behind a :class:`~workflow.Workflow`: its declaration (a snapshot of the
builder), its adapters, and the one place where runs are written. Processes, consumers and
the public ``Workflow`` API all work through it; users never see it."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _tracing as tracing
from ._adapters import (
    EventStreamer,
    Filter,
    RecordStore,
    RoleScheduler,
    StatusCounts,
    TimeoutStore,
)
from ._children import atomic, cascade, prepare_child
from ._clock import Clock, RealClock
from ._cron import CronSchedule
from ._errors import (
    IdempotencyKeyUsedError,
    InvalidStatusError,
    InvalidTransitionError,
    RunStateError,
    UnableToCancelError,
    UnableToDeleteError,
    UnableToPauseError,
    UnableToResumeError,
)
from ._log import RunLog
from ._metrics import metrics_for
from ._objects import ObjectCodec
from ._options import DEFAULT_OPTIONS, OutboxOptions, ProcessOptions
from ._process import ErrorCounter, MemErrorCounter
from ._record import Meta, Record, make_child_finished_event
from ._retry import PausedBy
from ._run import SAVE_AND_REPEAT, SKIP, Run, RunStateChange
from ._runstate import RunState, can_move
from ._signals import signals_for
from ._text import check_foreign_id, check_text, storable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._builder import Builder
    from ._retries import DueTimes

__all__ = ["Engine", "Schedule", "check_foreign_id", "run_state_error"]

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)


MAX_KEY = 255
"""The longest idempotency key (stores index it)."""


class Schedule:
    """A cron schedule registered with ``Workflow.schedule``; ``last`` is its position."""

    def __init__(
        self, foreign_id: str, cron: CronSchedule, initial: Any, filter: Callable[[], Any] | None
    ) -> None:
        self.foreign_id = foreign_id
        self.cron = cron
        self.initial = initial
        self.filter = filter
        self.last: datetime | None = None


class Engine(Generic[T, S]):
    """The machinery of one built workflow (see the module docstring)."""

    def __init__(
        self,
        builder: Builder[T, S],
        *,
        object_type: Any,
        status_type: type[S],
        streamer: EventStreamer,
        store: RecordStore,
        roles: RoleScheduler,
        timeout_store: TimeoutStore | None,
        clock: Clock | None,
        default_options: ProcessOptions,
        outbox: OutboxOptions | None,
        custom_delete: Callable[..., Any] | None,
        pause_retry: timedelta | None,
        pause_retry_for: frozenset[PausedBy],
        logger: Any,
        debug: bool,
        metrics_registry: CollectorRegistry | None = None,
        error_counter: ErrorCounter | None = None,
    ) -> None:
        self.name = builder.name
        self.object_type = object_type
        self.status_type: type[S] = status_type
        self.codec: ObjectCodec[T] = ObjectCodec(object_type)
        # A snapshot: changing the builder after build() changes nothing here.
        self.graph = builder.graph.copy()
        self.steps = {k: dataclasses.replace(v) for k, v in builder.steps.items()}
        self.callbacks = {k: list(v) for k, v in builder.callbacks.items()}
        self.timeouts = {
            k: dataclasses.replace(v, pairs=list(v.pairs)) for k, v in builder.timeouts.items()
        }
        self.connectors = {k: dataclasses.replace(v) for k, v in builder.connectors.items()}
        self.hooks = dict(builder.hooks)
        # The terminal status of a run whose compensations ran (Builder.compensate_to).
        self.compensated: int | None = builder.compensated
        self.default_start: S = status_type(builder.graph.from_order[0])
        self.streamer = streamer
        self.store = store
        self.roles = roles
        self.timeout_store = timeout_store
        self.clock: Clock = clock or RealClock()
        self.defaults = default_options.over(DEFAULT_OPTIONS)
        self.outbox = outbox
        self.custom_delete = custom_delete
        self.pause_retry = pause_retry
        self.metrics = metrics_for(metrics_registry)
        self._state_changes: dict[tuple[str, RunState, RunState], Any] = {}
        self._status_names = {int(m): m.name for m in status_type}
        self._members: dict[int, S] = {int(m): m for m in status_type}
        self.log = RunLog(logger, self.name, debug)
        self.signals = signals_for(store)
        self.signals.engines[self.name] = self
        self.error_counter: ErrorCounter = error_counter or MemErrorCounter()
        # Set while the workflow stops: consumers take no further event.
        self.stopping = False
        # The due times of retries this process scheduled, per status (see _retries).
        self.retry_due: dict[int, DueTimes] = {}
        self.pause_retry_for: frozenset[PausedBy] = pause_retry_for
        # The public ``Workflow`` this engine serves (handed to connector functions).
        self.api: Any = None

    def __repr__(self) -> str:
        return f"<Engine of workflow {self.name!r}>"

    # -- encoding and validation --------------------------------------------------------

    def encode(self, obj: Any) -> bytes:
        """The object as stored JSON (see :meth:`ObjectCodec.encode`)."""
        return self.codec.encode(obj)

    def decode(self, data: bytes) -> T:
        return self.codec.decode(data)

    def status(self, value: Any, what: str = "status") -> S:
        """``value`` as a member of the status enum that is a node of the graph; anything
        else is an :class:`InvalidStatusError` (a ``ValueError``)."""
        problem = self.not_a_status(value, what)
        if problem is not None:
            raise InvalidStatusError(problem)
        try:
            member = self.status_type(value)
        except ValueError:
            raise InvalidStatusError(
                f"{what} {value!r} is not a member of {self.status_type.__name__}"
            ) from None
        if not self.graph.is_node(int(member)):
            raise InvalidStatusError(
                f"{what} {member!r} is not configured for workflow {self.name!r}; statuses in "
                f"the graph: {[self.status_type(n).name for n in self.graph.nodes]}"
            )
        return member

    def not_a_status(self, value: Any, what: str) -> str | None:
        """Why ``value`` cannot be a status of this workflow by its type, or None. Another
        enum's member (an ``IntEnum`` or ``IntFlag``) is refused, not taken by its number."""
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{what} must be a {self.status_type.__name__}, got {value!r}"
        if isinstance(value, enum.Enum) and not isinstance(value, self.status_type):
            return (
                f"{what} must be a {self.status_type.__name__}, got {value!r}, a member of "
                f"another enum ({type(value).__name__}), which is not taken by its number"
            )
        return None

    def status_name(self, status: int) -> str:
        """The member name of ``status``, or the number as text for a status the enum no
        longer has (a run stored by an earlier version of the workflow)."""
        name = self._status_names.get(status)
        return str(int(status)) if name is None else name

    def new_run(self, record: Record) -> Run[T, S]:
        """Decode a record into the ``Run`` handed to user code. A status the enum does not
        have (removed by a later version of the workflow) stays the stored ``int``."""
        try:
            obj: Any = self.decode(record.object)
        except ValueError:
            if record.run_state is not RunState.DATA_DELETED:
                raise
            obj = json.loads(record.object)
        status: Any = self._members.get(record.status, record.status)
        return Run(record, status, obj, self._controller, self._start_child, self.log.logger)

    def _start_child(self, run: Run[Any, Any], workflow: Any, *args: Any) -> Record:
        return prepare_child(self, run, workflow, *args)

    # -- writes -------------------------------------------------------------------------

    async def write(
        self,
        record: Record,
        previous: RunState,
        *,
        extra: Sequence[tuple[Record, RunState]] = (),
    ) -> None:
        """Store a record (compare-and-set) and tell everyone in this process. ``extra``:
        other runs' versions (with their previous run state) committed in the same
        transaction (children started by a step). A run that is cancelled or whose data
        deletion is requested takes its unfinished children along in that transaction; a
        child that finishes tells its parent in its own (see ``_children``)."""
        more = list(extra)
        events = []
        if record.run_state is not previous:
            if record.run_state in (RunState.CANCELLED, RunState.REQUESTED_DATA_DELETED):
                more += await cascade(self, record)
            if record.meta.parent_run_id and record.run_state.finished and not previous.finished:
                # always, also when this process's version of the parent has no fan-in:
                # another process's (a rolling deploy) may wait for it
                events.append(make_child_finished_event(record))
        if more or events:
            await atomic(self.store).store_many([record, *(r for r, _ in more)], events)
        else:
            await self.store.store(record)
        self._count(record.workflow_name, previous, record.run_state)
        tracing.wrote(record)
        self.signals.stored(record)
        for r, before in more:
            self._count(r.workflow_name, before, r.run_state)
            self.signals.stored(r)

    def _count(self, name: str, previous: RunState, now: RunState) -> None:
        key = (name, previous, now)
        counter = self._state_changes.get(key)
        if counter is None:
            counter = self._state_changes[key] = self.metrics.run_state_changes.labels(
                name, str(previous), str(now)
            )
        counter.inc()

    async def write_after(
        self, old: Record, new: Record, *, extra: Sequence[tuple[Record, RunState]] = ()
    ) -> None:
        """Store ``new``, the version after ``old``; when the run leaves ``old``'s status (or
        finishes), its timers at that status are removed."""
        await self.write(new, old.run_state, extra=extra)
        if old.status in self.timeouts and self.timeout_store is not None:
            if new.status != old.status or new.run_state.finished:
                try:
                    await self.timeout_store.cancel_run(self.name, old.run_id, old.status)
                except Exception as err:  # the timer is discarded when it fires anyway
                    self.log.warning(
                        f"could not remove the timers of a run that left its status: {err!r}",
                        run_id=old.run_id,
                        status=self.status_name(old.status),
                    )

    def next_version(
        self,
        record: Record,
        *,
        run_state: RunState,
        status: int | None = None,
        obj: bytes | None = None,
        reason: str | None = None,
        attempt: int | None = None,
        retry_at: datetime | None = None,
        paused_by: str = "",
        compensations: tuple[int, ...] | None = None,
        compensating: bool | None = None,
    ) -> Record:
        """The version after ``record``. A new status starts at attempt 1; every write but a
        scheduled retry's clears ``retry_at``; ``paused_by`` is kept only while paused; the
        parent, idempotency key, trace origin and saga fields carry over unless given."""
        st = record.status if status is None else status
        meta = record.meta
        if attempt is None:
            attempt = meta.attempt if st == record.status else 1
        return Record(
            workflow_name=record.workflow_name,
            foreign_id=record.foreign_id,
            run_id=record.run_id,
            run_state=run_state,
            status=st,
            object=record.object if obj is None else obj,
            created_at=record.created_at,
            updated_at=self.clock.now(),
            meta=Meta(
                run_state_reason=meta.run_state_reason if reason is None else storable(reason),
                status_description=self.status_name(st),
                version=meta.version + 1,
                trace_origin=meta.trace_origin,
                attempt=attempt,
                retry_at=retry_at,
                paused_by=paused_by if run_state is RunState.PAUSED else "",
                idempotency_key=meta.idempotency_key,
                parent_workflow=meta.parent_workflow,
                parent_run_id=meta.parent_run_id,
                compensations=meta.compensations if compensations is None else compensations,
                compensating=meta.compensating if compensating is None else compensating,
            ),
        )

    async def _controller(self, run: Run[Any, Any], target: RunState, reason: str) -> None:
        """``run.pause()`` / ``run.cancel()`` from user code: store the run's object with it."""
        check_text(reason, "reason")
        record = run.record
        if run._children:
            raise InvalidTransitionError(
                f"the step started {len(run._children)} child run(s) and then paused or "
                "cancelled its run: children start with a status move (or save and repeat) "
                "of the parent, never with a pause or cancel"
            )
        if not can_move(record.run_state, target):
            raise run_state_error(target)(
                f"cannot move run {record.run_id} from {record.run_state} to {target}"
            )
        new = self.next_version(
            record,
            run_state=target,
            obj=self.encode(run.object),
            reason=reason,
            paused_by=PausedBy.STEP,
        )
        await self.write_after(record, new)

    async def apply(
        self, record: Record, run: Run[T, S], result: Any, *, compensable: bool = False
    ) -> bool:
        """Store what a step / callback / timeout returned, with the children it started.
        True when something was written. ``compensable``: the step has a compensation, so a
        status move pushes it on the run's saga stack.

        Raises :class:`InvalidTransitionError` (nothing written) for an undeclared move and
        :class:`ConcurrentUpdateError` when the run changed since ``record`` was read.
        """
        if run._state_changed:
            return True
        children = run._children
        if result is None or result is SKIP or isinstance(result, RunStateChange):
            if children:
                raise InvalidTransitionError(
                    f"workflow {self.name!r}, at {self.status_name(record.status)}: the step "
                    f"started {len(children)} child run(s) but stores no new version of its "
                    "run (skip, pause or cancel); children start with the parent's status "
                    "move or run.save_and_repeat()"
                )
            if isinstance(result, RunStateChange):
                await result.apply()
                return True
            return False
        stack = None
        if result is SAVE_AND_REPEAT:
            status, run_state = record.status, RunState.RUNNING
        else:
            current = self.status_name(record.status)
            problem = self.not_a_status(result, "the step's result")
            if problem is not None:
                raise InvalidTransitionError(
                    f"workflow {self.name!r}, at {current}: {problem}; return one of "
                    f"{self.names(self.graph.transitions(record.status))}, "
                    "run.skip(), run.save_and_repeat(), run.pause() or run.cancel()"
                )
            status = int(result)
            if not self.graph.allowed(record.status, status):
                raise InvalidTransitionError(
                    f"workflow {self.name!r}: {current} -> {result!r} is not a declared "
                    f"transition; declared: {self.names(self.graph.transitions(record.status))}"
                )
            terminal = self.graph.is_terminal(status)
            run_state = RunState.COMPLETED if terminal else RunState.RUNNING
            if compensable:
                stack = (*record.meta.compensations, record.status)
        new = self.next_version(
            record,
            run_state=run_state,
            status=status,
            obj=self.encode(run.object),
            attempt=1,
            compensations=stack,
        )
        await self.write_after(record, new, extra=[(c, RunState.UNKNOWN) for c in children])
        return True

    def names(self, statuses: list[int]) -> list[str]:
        return [self.status_type(s).name for s in statuses]

    async def trigger(
        self,
        foreign_id: str,
        start_at: S | None = None,
        initial_value: T | None = None,
        trace_origin: str = "",
        idempotency_key: str | None = None,
    ) -> str:
        """Create a run (see ``Workflow.trigger``) and return its id, in a trigger span."""
        with tracing.trigger_span(self.name, foreign_id) as span:
            run_id = await self._trigger(
                foreign_id, start_at, initial_value, span.origin(trace_origin), idempotency_key
            )
            span.set_run(run_id)
            return run_id

    async def _trigger(
        self,
        foreign_id: str,
        start_at: S | None,
        initial_value: T | None,
        trace_origin: str,
        idempotency_key: str | None,
    ) -> str:
        check_foreign_id(foreign_id)
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not idempotency_key:
                raise ValueError(
                    f"idempotency_key must be a non-empty str or None, got {idempotency_key!r}"
                )
            check_text(idempotency_key, "idempotency_key")
            if len(idempotency_key) > MAX_KEY:
                raise ValueError(f"idempotency_key is longer than {MAX_KEY} characters")
        record = self.first_version(foreign_id, start_at, initial_value, trace_origin, "trigger")
        if idempotency_key is not None:
            record = dataclasses.replace(
                record, meta=dataclasses.replace(record.meta, idempotency_key=idempotency_key)
            )
        try:
            await self.write(record, RunState.UNKNOWN)
        except IdempotencyKeyUsedError as used:
            return used.run_id
        return record.run_id

    async def report_stranded(self) -> dict[int, int]:
        """Log, and export as ``workflow_stranded_runs``, the unfinished runs parked at
        statuses the graph no longer has (a changed workflow). Returns them by status."""
        store = self.store
        if isinstance(store, StatusCounts):
            counts = await store.unfinished_by_status(self.name)
        else:
            counts = {}
            offset, page = 0, 500
            unfinished = Filter.by_run_state(RunState.INITIATED, RunState.RUNNING, RunState.PAUSED)
            while True:
                batch = await store.list(self.name, offset, page, "asc", unfinished)
                for r in batch:
                    counts[r.status] = counts.get(r.status, 0) + 1
                if len(batch) < page:
                    break
                offset += page
        stranded = {s: n for s, n in counts.items() if not self.graph.is_node(s)}
        for status, n in sorted(stranded.items()):
            self.metrics.stranded_runs.labels(self.name, self.status_name(status)).set(n)
            self.log.warning(
                f"{n} unfinished run(s) at status {self.status_name(status)}, which the "
                "workflow no longer has: move them with wf.move(run_id, status, reason) or "
                "cancel them",
                status=status,
            )
        return stranded

    def first_version(
        self,
        foreign_id: str,
        start_at: Any,
        initial_value: Any,
        trace_origin: str,
        caller: str,
    ) -> Record:
        """A new run's first version (not stored), from ``caller``'s arguments (``trigger``
        or ``start_child``): the start status checked (a graph node, not terminal), the
        initial object validated or built without arguments."""
        start = self.default_start if start_at is None else self.status(start_at, "start_at")
        if self.graph.is_terminal(int(start)):
            raise InvalidStatusError(
                f"start_at {start!r} is a terminal status of workflow {self.name!r}: a run "
                "starting there would never be consumed"
            )
        if initial_value is None:
            try:
                initial: Any = self.object_type()
            except Exception as err:
                raise ValueError(
                    f"{self.object_type!r} cannot be built without arguments; pass "
                    f"{caller}(..., initial_value=...)"
                ) from err
        else:
            initial = self.codec.validate(initial_value)
        return self.new_record(foreign_id, start, initial, trace_origin)

    def new_record(self, foreign_id: str, start: S, initial: Any, trace_origin: str) -> Record:
        """The first version of a new run (not yet stored)."""
        now = self.clock.now()
        return Record(
            workflow_name=self.name,
            foreign_id=foreign_id,
            run_id=str(uuid.uuid4()),
            run_state=RunState.INITIATED,
            status=int(start),
            object=self.encode(initial),
            created_at=now,
            updated_at=now,
            meta=Meta(status_description=start.name, version=1, trace_origin=trace_origin),
        )


def run_state_error(target: RunState) -> type[RunStateError]:
    """The error for a run that cannot move to ``target``."""
    return {
        RunState.PAUSED: UnableToPauseError,
        RunState.RUNNING: UnableToResumeError,
        RunState.CANCELLED: UnableToCancelError,
        RunState.REQUESTED_DATA_DELETED: UnableToDeleteError,
    }.get(target, RunStateError)
