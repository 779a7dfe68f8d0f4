"""The ``Workflow``: what users call (trigger, await, callbacks, control, reads, life
cycle). The machinery behind it is the private :class:`~workflow._engine.Engine`."""

from __future__ import annotations

import asyncio
import enum
import os
import sys
import time
from collections.abc import Callable
from contextvars import Context
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _tracing as tracing
from ._adapters import (
    Filter,
    Order,
    RecordHistory,
)
from ._consumers import resumed, schedule_process
from ._cron import parse_schedule
from ._engine import Engine, Schedule, check_foreign_id, run_state_error
from ._errors import (
    ConcurrentUpdateError,
    RecordNotFoundError,
    RunFinishedError,
    RunStateError,
)
from ._process import Process, inside
from ._processes import build_processes
from ._record import Record
from ._retry import PausedBy
from ._run import Run
from ._runstate import RunState, State, can_move
from ._text import check_text
from ._usercode import call_user

if TYPE_CHECKING:
    pass

__all__ = ["Workflow"]

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


class Workflow(Generic[T, S]):
    """A built workflow. Create it with :meth:`Builder.build`."""

    def __init__(self, engine: Engine[T, S]) -> None:
        self._engine = engine
        self._engine.api = self
        self._processes: dict[str, Process] = {}
        self._schedules: dict[str, Schedule] = {}
        self._running = False
        self._stop_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} running={self._running}>"

    @property
    def name(self) -> str:
        """The workflow's name, as given to the builder."""
        return self._engine.name

    # -- life cycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Start every background process (idempotent); returns once all are launched."""
        async with self._lock:
            if self._running:
                return
            self._engine.stopping = False
            self._processes = {p.name: p for p in build_processes(self._engine)}
            for sched in self._schedules.values():
                proc = schedule_process(self._engine, sched)
                self._processes[proc.name] = proc
            self._running = True
            for p in self._processes.values():
                p.start()
            try:
                await self._engine.report_stranded()
            except Exception as err:  # a report, not a reason to refuse to start
                self._engine.log.warning(f"could not look for stranded runs: {err!r}")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop every process: events in hand get up to ``grace`` seconds, then are cancelled
        (unacknowledged, so they are handled again after a restart).

        Called from this workflow's own step, callback, timeout, hook or connector, it
        returns at once and the stop completes after the calling function has returned (its
        result is stored as usual): waiting here would wait for the caller itself.
        """
        if inside.get() is self._engine:
            if self._running and self._stop_task is None:
                self._engine.stopping = True  # consumers take no further event from here on
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
            self._engine.stopping = True
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
        self,
        foreign_id: str,
        start_at: S | None = None,
        *,
        initial_value: T | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Create a run and return its id. Raises :class:`WorkflowInProgressError` while the
        foreign id's latest run is unfinished.

        With ``idempotency_key``, a second trigger with the same key (for this workflow)
        creates nothing and returns the first run's id, whatever that run's state (finished
        too), atomically in the record store: a retried request starts one run. Keys are kept
        as long as the run's record."""
        return await self._engine.trigger(
            foreign_id,
            start_at,
            initial_value,
            trace_origin=_trace_origin(),
            idempotency_key=idempotency_key,
        )

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
        target = int(self._engine.status(status))
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = (
            self._engine.defaults.polling_frequency or timedelta(milliseconds=500)
        ).total_seconds()
        watch = self._engine.signals.watch(run_id, poll)
        try:
            # Versions written while this first read is in flight are in the watch: one of
            # them may be at the target although the run has moved on by the time it is read.
            record = await self._own(await self._engine.store.lookup(run_id), foreign_id)
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
                        return self._engine.new_run(by_version[v])
                if versions and versions[-1] > record.meta.version:
                    record = by_version[versions[-1]]
                seen = record.meta.version  # the newest version examined
                watch.version = max(watch.version, seen)  # the watcher brings newer ones
                if record.run_state.finished:
                    raise RunFinishedError(
                        f"run {run_id} finished at {self._engine.status_name(record.status)} "
                        f"({record.run_state}) and will never reach {status!r}"
                    )
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"run {run_id} did not reach {status!r} within {timeout}s (it is at "
                        f"{self._engine.status_name(record.status)}, {record.run_state})"
                    )
                await watch.wait(remaining)
                fresh = []
        finally:
            self._engine.signals.unwatch(run_id, watch)

    async def _versions_since(self, run_id: str, version: int) -> list[Record]:
        if not isinstance(self._engine.store, RecordHistory):
            return []
        return [r for r in await self._engine.store.history(run_id) if r.meta.version > version]

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
        st = self._engine.status(status)
        fns = self._engine.callbacks.get(int(st))
        if not fns:
            raise ValueError(f"workflow {self.name!r} has no callback for {st!r}")
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise ValueError(f"callback payload must be bytes, got {type(payload).__name__}")
        data = bytes(payload)
        changed = False
        for fn in fns:
            record = await self._engine.store.latest(self.name, foreign_id)
            if (
                record.status != int(st)
                or record.run_state.stopped
                or record.run_state.finished
                or record.meta.compensating
            ):
                continue
            with tracing.run_span(tracing.CALLBACK, self._engine, record, link_caller=True):
                run = self._engine.new_run(record)
                result = await call_user(fn, run, data)
                changed = await self._engine.apply(record, run, result) or changed
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
        check_foreign_id(foreign_id)
        cron = parse_schedule(spec)
        if initial_value is not None:
            self._engine.encode(self._engine.codec.validate(initial_value))
        if filter is not None and not callable(filter):
            raise ValueError("filter must be a callable returning bool")
        key = f"{foreign_id}-scheduler-{cron.spec}"
        if key in self._schedules:
            raise ValueError(f"schedule {spec!r} for {foreign_id!r} is already registered")
        sched = self._schedules[key] = Schedule(foreign_id, cron, initial_value, filter)
        if self._running and not self._engine.stopping:
            proc = schedule_process(self._engine, sched)
            self._processes[proc.name] = proc
            proc.start()

    # -- run-state control --------------------------------------------------------------

    async def _control(self, run_id: str, target: RunState, reason: str, verb: str) -> None:
        check_text(reason, "reason")
        err = run_state_error(target)
        for _ in range(_CONTROL_ATTEMPTS):
            record = await self._own(await self._engine.store.lookup(run_id))
            allowed = can_move(record.run_state, target)
            if target is RunState.RUNNING:
                allowed = record.run_state is RunState.PAUSED
            if not allowed:
                raise err(f"cannot {verb} run {run_id}: it is {record.run_state}")
            if target is RunState.RUNNING:
                new = resumed(self._engine, record)
            else:
                new = self._engine.next_version(
                    record, run_state=target, reason=reason, paused_by=PausedBy.OPERATOR
                )
            try:
                await self._engine.write_after(record, new)
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

    async def move(self, run_id: str, status: S, reason: str) -> Run[T, S]:
        """Move an unfinished run to ``status`` (any status of the graph, declared transition
        or not): the operator's way out for a run parked at a status a changed workflow no
        longer has. A compare-and-set on the version read here (:class:`ConcurrentUpdateError`
        if the run changed meanwhile: look again, then retry); ``reason`` is stored with the
        new version, so the history says who moved it and why. A paused run stays paused;
        a terminal ``status`` completes the run. Returns the moved run."""
        eng = self._engine
        target = eng.status(status)
        check_text(reason, "reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("move() needs a reason: it is kept in the run's history")
        record = await self._own(await eng.store.lookup(run_id))
        if record.run_state.finished:
            raise RunStateError(
                f"cannot move run {run_id}: it is {record.run_state} (finished runs stay put)"
            )
        if record.run_state is RunState.PAUSED:
            state = RunState.PAUSED
        elif eng.graph.is_terminal(int(target)):
            state = RunState.COMPLETED
        else:
            state = RunState.RUNNING
        new = eng.next_version(
            record,
            run_state=state,
            status=int(target),
            reason=f"moved from {eng.status_name(record.status)}: {reason}",
            attempt=1,
            paused_by=record.meta.paused_by,
        )
        await eng.write_after(record, new)
        eng.log.info(
            f"moved run from {eng.status_name(record.status)} to {target.name}: {reason}",
            run_id=run_id,
            foreign_id=record.foreign_id,
        )
        return eng.new_run(new)

    # -- reads --------------------------------------------------------------------------

    async def lookup(self, run_id: str) -> Run[T, S]:
        return self._engine.new_run(await self._own(await self._engine.store.lookup(run_id)))

    async def latest(self, foreign_id: str) -> Run[T, S]:
        return self._engine.new_run(await self._engine.store.latest(self.name, foreign_id))

    async def list(
        self, *filters: Filter, offset: int = 0, limit: int = 25, order: Order = "asc"
    ) -> list[Run[T, S]]:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        records = await self._engine.store.list(self.name, offset, limit, order, *filters)
        return [self._engine.new_run(r) for r in records]
