"""The ``Workflow``: the public API and the one place where runs are written."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import Context
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._adapters import (
    EventStreamer,
    Filter,
    Order,
    RecordHistory,
    RecordStore,
    RoleScheduler,
    TimeoutStore,
)
from ._clock import Clock, RealClock
from ._consumers import schedule_process
from ._cron import CronSchedule, parse_schedule
from ._errors import (
    ConcurrentUpdateError,
    InvalidStatusError,
    InvalidTransitionError,
    RecordNotFoundError,
    RunFinishedError,
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
from ._process import ErrorCounter, MemErrorCounter, Process, inside
from ._processes import build_processes
from ._record import Meta, Record
from ._run import SAVE_AND_REPEAT, SKIP, Run, RunStateChange
from ._runstate import RunState, State, can_move
from ._signals import signals_for
from ._text import check_text, storable
from ._usercode import call_user

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._builder import Builder

__all__ = ["Workflow", "call_user"]

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_CONTROL_ATTEMPTS = 8


def _trace_origin() -> str:
    """The user's call site (file:line lines outside this package), for ``meta.trace_origin``."""
    lines: list[str] = []
    frame = sys._getframe(2)
    while frame is not None and len(lines) < 3:
        path = frame.f_code.co_filename
        if not path.startswith(_PKG_DIR) and "asyncio" not in path:
            lines.append(f"{path}:{frame.f_lineno}")
        frame = frame.f_back  # type: ignore[assignment]
    return "\n".join(lines)


class _Schedule:
    def __init__(
        self, foreign_id: str, cron: CronSchedule, initial: Any, filter: Callable[[], Any] | None
    ) -> None:
        self.foreign_id = foreign_id
        self.cron = cron
        self.initial = initial
        self.filter = filter
        self.last: datetime | None = None


class Workflow(Generic[T, S]):
    """A built workflow. Create it with :meth:`Builder.build`."""

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
        logger: Any,
        debug: bool,
        metrics_registry: CollectorRegistry | None = None,
        error_counter: ErrorCounter | None = None,
    ) -> None:
        self.name = builder.name
        self.object_type = object_type
        self.status_type: type[S] = status_type
        self._codec: ObjectCodec[T] = ObjectCodec(object_type)
        # A snapshot: changing the builder after build() changes nothing here.
        self.graph = builder.graph.copy()
        self.steps = {k: dataclasses.replace(v) for k, v in builder.steps.items()}
        self.callbacks = {k: list(v) for k, v in builder.callbacks.items()}
        self.timeouts = {
            k: dataclasses.replace(v, pairs=list(v.pairs)) for k, v in builder.timeouts.items()
        }
        self.connectors = {k: dataclasses.replace(v) for k, v in builder.connectors.items()}
        self.hooks = dict(builder.hooks)
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
        self._state_changes: dict[tuple[RunState, RunState], Any] = {}
        self._status_names = {int(m): m.name for m in status_type}
        self._members: dict[int, S] = {int(m): m for m in status_type}
        self.log = RunLog(logger, self.name, debug)
        self.signals = signals_for(store)
        self.error_counter: ErrorCounter = error_counter or MemErrorCounter()
        self._processes: dict[str, Process] = {}
        self._schedules: dict[str, _Schedule] = {}
        self._running = False
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} running={self._running}>"

    # -- encoding and validation --------------------------------------------------------

    def encode(self, obj: Any) -> bytes:
        """The object as stored JSON (see :meth:`ObjectCodec.encode`)."""
        return self._codec.encode(obj)

    def decode(self, data: bytes) -> T:
        return self._codec.decode(data)

    def status(self, value: Any, what: str = "status") -> S:
        """``value`` as a member of the status enum that is a node of the graph; anything
        else is an :class:`InvalidStatusError` (a ``ValueError``)."""
        problem = self._not_a_status(value, what)
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

    def _not_a_status(self, value: Any, what: str) -> str | None:
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

    def _status_name(self, status: int) -> str:
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
        return Run(record, status, obj, self._controller)

    # -- writes -------------------------------------------------------------------------

    async def write(self, record: Record, previous: RunState) -> None:
        """Store a record (compare-and-set) and tell everyone in this process."""
        await self.store.store(record)
        key = (previous, record.run_state)
        counter = self._state_changes.get(key)
        if counter is None:
            counter = self._state_changes[key] = self.metrics.run_state_changes.labels(
                self.name, str(previous), str(record.run_state)
            )
        counter.inc()
        self.signals.stored(record)

    def _next_version(
        self,
        record: Record,
        *,
        run_state: RunState,
        status: int | None = None,
        obj: bytes | None = None,
        reason: str | None = None,
    ) -> Record:
        st = record.status if status is None else status
        meta = record.meta
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
                status_description=self._status_name(st),
                version=meta.version + 1,
                trace_origin=meta.trace_origin,
            ),
        )

    async def _controller(self, run: Run[Any, Any], target: RunState, reason: str) -> None:
        """``run.pause()`` / ``run.cancel()`` from user code: store the run's object with it."""
        check_text(reason, "reason")
        record = run.record
        if not can_move(record.run_state, target):
            raise _run_state_error(target)(
                f"cannot move run {record.run_id} from {record.run_state} to {target}"
            )
        new = self._next_version(
            record, run_state=target, obj=self.encode(run.object), reason=reason
        )
        await self.write(new, record.run_state)

    async def apply(self, record: Record, run: Run[T, S], result: Any) -> bool:
        """Store what a step / callback / timeout returned. True when something was written.

        Raises :class:`InvalidTransitionError` (nothing written) for an undeclared move and
        :class:`ConcurrentUpdateError` when the run changed since ``record`` was read.
        """
        if run._state_changed:
            return True
        if result is None or result is SKIP:
            return False
        if isinstance(result, RunStateChange):
            await result.apply()
            return True
        if result is SAVE_AND_REPEAT:
            status, run_state = record.status, RunState.RUNNING
        else:
            current = self._status_name(record.status)
            problem = self._not_a_status(result, "the step's result")
            if problem is not None:
                raise InvalidTransitionError(
                    f"workflow {self.name!r}, at {current}: {problem}; return one of "
                    f"{self._names(self.graph.transitions(record.status))}, "
                    "run.skip(), run.save_and_repeat(), run.pause() or run.cancel()"
                )
            status = int(result)
            if not self.graph.allowed(record.status, status):
                raise InvalidTransitionError(
                    f"workflow {self.name!r}: {current} -> {result!r} is not a declared "
                    f"transition; declared: {self._names(self.graph.transitions(record.status))}"
                )
            terminal = self.graph.is_terminal(status)
            run_state = RunState.COMPLETED if terminal else RunState.RUNNING
        new = self._next_version(
            record, run_state=run_state, status=status, obj=self.encode(run.object)
        )
        await self.write(new, record.run_state)
        return True

    def _names(self, statuses: list[int]) -> list[str]:
        return [self.status_type(s).name for s in statuses]

    # -- life cycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Start every background process (idempotent); returns once all are launched."""
        async with self._lock:
            if self._running:
                return
            self._stopping = False
            self._processes = {p.name: p for p in build_processes(self)}
            for sched in self._schedules.values():
                proc = schedule_process(self, sched)
                self._processes[proc.name] = proc
            self._running = True
            for p in self._processes.values():
                p.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop every process: events in hand get up to ``grace`` seconds, then are cancelled
        (unacknowledged, so they are handled again after a restart).

        Called from this workflow's own step, callback, timeout, hook or connector, it
        returns at once and the stop completes after the calling function has returned (its
        result is stored as usual): waiting here would wait for the caller itself.
        """
        if inside.get() is self:
            if self._running and self._stop_task is None:
                self._stopping = True  # consumers take no further event from here on
                self._stop_task = asyncio.get_running_loop().create_task(
                    self._stop(grace), name=f"workflow:{self.name}:stop", context=Context()
                )
            return
        task = self._stop_task
        if task is not None:
            await asyncio.shield(task)
        await self._stop(grace)

    async def _stop(self, grace: float) -> None:
        try:
            await self._stop_processes(grace)
        finally:
            if self._stop_task is asyncio.current_task():
                self._stop_task = None

    async def _stop_processes(self, grace: float) -> None:
        async with self._lock:
            if not self._running:
                return
            self._stopping = True
            deadline = time.monotonic() + grace
            await asyncio.gather(*(p.stop(deadline) for p in self._processes.values()))
            self._running = False

    async def __aenter__(self) -> Workflow[T, S]:
        await self.run()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def states(self) -> dict[str, State]:
        """The state of each background process, by name."""
        return {name: p.state for name, p in self._processes.items()}

    # -- runs ---------------------------------------------------------------------------

    async def trigger(
        self, foreign_id: str, start_at: S | None = None, *, initial_value: T | None = None
    ) -> str:
        """Create a run and return its id. Raises :class:`WorkflowInProgressError` while the
        foreign id's latest run is unfinished."""
        _check_foreign_id(foreign_id)
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
                    "trigger(..., initial_value=...)"
                ) from err
        else:
            initial = self._codec.validate(initial_value)
        now = self.clock.now()
        record = Record(
            workflow_name=self.name,
            foreign_id=foreign_id,
            run_id=str(uuid.uuid4()),
            run_state=RunState.INITIATED,
            status=int(start),
            object=self.encode(initial),
            created_at=now,
            updated_at=now,
            meta=Meta(status_description=start.name, version=1, trace_origin=_trace_origin()),
        )
        await self.write(record, RunState.UNKNOWN)
        return record.run_id

    async def await_(
        self, foreign_id: str, run_id: str, status: S, *, timeout: float | None = None
    ) -> Run[T, S]:
        """Return the run once it is at ``status``: the version that reached it (the run may
        have moved on since). A run already there returns at once; a run that finished at
        another status raises :class:`RunFinishedError`; ``timeout`` seconds raise
        :class:`TimeoutError`. Every version written after the call is seen, also one that
        the run passed through while the first read was in flight.

        Waiting costs nothing while nothing happens: writes of this process wake the caller
        directly, and writes of other processes are found by one watcher per record store
        that reads the versions of every watched run in one batch per ``polling_frequency``.
        """
        target = int(self.status(status))
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = (self.defaults.polling_frequency or timedelta(milliseconds=500)).total_seconds()
        watch = self.signals.watch(run_id, poll)
        try:
            # Versions written while this first read is in flight are in the watch: one of
            # them may be at the target although the run has moved on by the time it is read.
            record = await self._own(await self.store.lookup(run_id), foreign_id)
            seen = 0
            fresh = [record]
            while True:
                fresh.extend(watch.take())
                by_version = {r.meta.version: r for r in fresh if r.meta.version > seen}
                versions = sorted(by_version)
                if seen and versions and versions != list(range(seen + 1, versions[-1] + 1)):
                    # written elsewhere, several versions at a time: read what was skipped
                    for r in await self._versions_since(run_id, seen):
                        by_version.setdefault(r.meta.version, r)
                    versions = sorted(by_version)
                for v in reversed(versions):
                    if by_version[v].status == target:
                        return self.new_run(by_version[v])
                if versions and versions[-1] > record.meta.version:
                    record = by_version[versions[-1]]
                seen = record.meta.version  # the newest version examined
                watch.version = max(watch.version, seen)  # the watcher brings newer ones
                if record.run_state.finished:
                    raise RunFinishedError(
                        f"run {run_id} finished at {self._status_name(record.status)} "
                        f"({record.run_state}) and will never reach {status!r}"
                    )
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"run {run_id} did not reach {status!r} within {timeout}s (it is at "
                        f"{self._status_name(record.status)}, {record.run_state})"
                    )
                await watch.wait(remaining)
                fresh = []
        finally:
            self.signals.unwatch(run_id, watch)

    async def _versions_since(self, run_id: str, version: int) -> list[Record]:
        if not isinstance(self.store, RecordHistory):
            return []
        return [r for r in await self.store.history(run_id) if r.meta.version > version]

    async def _own(self, record: Record, foreign_id: str | None = None) -> Record:
        if record.workflow_name != self.name or (
            foreign_id is not None and record.foreign_id != foreign_id
        ):
            raise RecordNotFoundError(
                f"run {record.run_id} is not a run of workflow {self.name!r}"
                + ("" if foreign_id is None else f" for foreign id {foreign_id!r}")
            )
        return record

    async def callback(self, foreign_id: str, status: S, payload: bytes = b"") -> bool:
        """Run the callbacks of ``status`` on the latest run of ``foreign_id``. False when
        nothing changed (the run is elsewhere, stopped, or every callback skipped)."""
        st = self.status(status)
        fns = self.callbacks.get(int(st))
        if not fns:
            raise ValueError(f"workflow {self.name!r} has no callback for {st!r}")
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise ValueError(f"callback payload must be bytes, got {type(payload).__name__}")
        data = bytes(payload)
        changed = False
        for fn in fns:
            record = await self.store.latest(self.name, foreign_id)
            if record.status != int(st) or record.run_state.stopped or record.run_state.finished:
                continue
            run = self.new_run(record)
            result = await call_user(fn, run, data)
            changed = await self.apply(record, run, result) or changed
        return changed

    def schedule(
        self,
        foreign_id: str,
        spec: str,
        *,
        initial_value: T | None = None,
        filter: Callable[[], Any] | None = None,
    ) -> None:
        """Trigger a run for ``foreign_id`` on a cron schedule while the workflow runs."""
        _check_foreign_id(foreign_id)
        cron = parse_schedule(spec)
        if initial_value is not None:
            self.encode(self._codec.validate(initial_value))
        if filter is not None and not callable(filter):
            raise ValueError("filter must be a callable returning bool")
        key = f"{foreign_id}-scheduler-{cron.spec}"
        if key in self._schedules:
            raise ValueError(f"schedule {spec!r} for {foreign_id!r} is already registered")
        sched = self._schedules[key] = _Schedule(foreign_id, cron, initial_value, filter)
        if self._running and not self._stopping:
            proc = schedule_process(self, sched)
            self._processes[proc.name] = proc
            proc.start()

    # -- run-state control --------------------------------------------------------------

    async def _control(self, run_id: str, target: RunState, reason: str, verb: str) -> None:
        check_text(reason, "reason")
        err = _run_state_error(target)
        for _ in range(_CONTROL_ATTEMPTS):
            record = await self._own(await self.store.lookup(run_id))
            allowed = can_move(record.run_state, target)
            if target is RunState.RUNNING:
                allowed = record.run_state is RunState.PAUSED
            if not allowed:
                raise err(f"cannot {verb} run {run_id}: it is {record.run_state}")
            try:
                await self.write(
                    self._next_version(record, run_state=target, reason=reason), record.run_state
                )
                return
            except ConcurrentUpdateError:
                continue
        raise ConcurrentUpdateError(
            f"run {run_id} kept changing while trying to {verb} it; try again"
        )

    async def pause(self, run_id: str, reason: str = "") -> None:
        await self._control(run_id, RunState.PAUSED, reason, "pause")

    async def resume(self, run_id: str) -> None:
        await self._control(run_id, RunState.RUNNING, "", "resume")

    async def cancel(self, run_id: str, reason: str = "") -> None:
        await self._control(run_id, RunState.CANCELLED, reason, "cancel")

    async def delete_data(self, run_id: str, reason: str = "") -> None:
        await self._control(run_id, RunState.REQUESTED_DATA_DELETED, reason, "delete the data of")

    # -- reads --------------------------------------------------------------------------

    async def lookup(self, run_id: str) -> Run[T, S]:
        return self.new_run(await self._own(await self.store.lookup(run_id)))

    async def latest(self, foreign_id: str) -> Run[T, S]:
        return self.new_run(await self.store.latest(self.name, foreign_id))

    async def list(
        self, *filters: Filter, offset: int = 0, limit: int = 25, order: Order = "asc"
    ) -> list[Run[T, S]]:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        records = await self.store.list(self.name, offset, limit, order, *filters)
        return [self.new_run(r) for r in records]


def _check_foreign_id(foreign_id: object) -> None:
    if not isinstance(foreign_id, str) or not foreign_id:
        raise ValueError(f"foreign_id must be a non-empty str, got {foreign_id!r}")
    check_text(foreign_id, "foreign_id")


def _run_state_error(target: RunState) -> type[RunStateError]:
    return {
        RunState.PAUSED: UnableToPauseError,
        RunState.RUNNING: UnableToResumeError,
        RunState.CANCELLED: UnableToCancelError,
        RunState.REQUESTED_DATA_DELETED: UnableToDeleteError,
    }.get(target, RunStateError)
