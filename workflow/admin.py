"""Operations on stored runs: what the CLI (``aioworkflow``) and the HTTP API do, for any code.

:class:`Admin` works on a record store alone, so an operator's shell needs none of the
workflows' code: it lists and shows runs, pauses, resumes, cancels and deletes the data of a
run, resumes a dead letter in bulk, and purges old finished runs. When the run's workflow is
registered (``Admin(store, workflows=[wf, ...])``, as the HTTP API does), run-state changes go
through that workflow (the same code path as ``wf.pause`` and friends, timers included);
otherwise they are written to the store directly, with the same rules: a compare-and-set on
the version, the reason kept in the history, cancels and data deletions cascading to
children.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._adapters import AtomicWrites, Filter, Order, Purge, RecordHistory, RecordStore
from ._children import cascade_in
from ._clock import Clock, RealClock
from ._engine import run_state_error
from ._errors import ConcurrentUpdateError, RunStateError, WorkflowError
from ._mermaid import mermaid
from ._record import Record
from ._retry import FRESH_ATTEMPTS_ON_RESUME, PausedBy
from ._runstate import RunState, can_move
from ._text import check_text, storable
from ._workflow import Workflow

__all__ = ["Admin", "Change", "RunDetail", "Version"]

_ATTEMPTS = 5
_PAGE = 500


@dataclass(frozen=True, slots=True)
class Change:
    """One field of the object that a version changed (``path`` in dotted keys; ``None``
    for a field that was absent)."""

    path: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a run in its history, with what it changed."""

    record: Record
    changes: list[Change]


@dataclass(frozen=True, slots=True)
class RunDetail:
    """A run as it is now, with every stored version (oldest first)."""

    record: Record
    history: list[Version]


class Admin:
    """Operations on the runs of ``store`` (see the module documentation)."""

    def __init__(
        self,
        store: RecordStore,
        workflows: Iterable[Workflow[Any, Any]] = (),
        *,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or RealClock()
        self.workflows: dict[str, Workflow[Any, Any]] = {}
        for wf in workflows:
            if wf._engine.store is not store:
                raise ValueError(f"workflow {wf.name!r} is built on another record store")
            self.workflows[wf.name] = wf

    # -- reading --------------------------------------------------------------------------

    async def runs(
        self,
        *,
        workflow: str = "",
        status: int | None = None,
        run_state: RunState | None = None,
        foreign_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        object_field: tuple[str, str] | None = None,
        paused_by: str | None = None,
        offset: int = 0,
        limit: int = 25,
        order: Order = "desc",
    ) -> list[Record]:
        """A page of runs, newest first by default. ``paused_by`` keeps paused runs with
        that reason (filtered after the store's page, so a page may hold fewer)."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        if offset < 0 or not 1 <= limit <= 1000:
            raise ValueError("offset must be >= 0 and limit between 1 and 1000")
        filters: list[Filter] = []
        if status is not None:
            filters.append(Filter.by_status(int(status)))
        if run_state is not None:
            filters.append(Filter.by_run_state(RunState(run_state)))
        elif paused_by is not None:
            filters.append(Filter.by_run_state(RunState.PAUSED))
        if foreign_id is not None:
            filters.append(Filter.by_foreign_id(foreign_id))
        for t, make in (
            (created_after, Filter.created_after),
            (created_before, Filter.created_before),
            (updated_after, Filter.updated_after),
            (updated_before, Filter.updated_before),
        ):
            if t is not None:
                if t.tzinfo is None:
                    raise ValueError(f"times need a timezone, got {t.isoformat()}")
                filters.append(make(t))
        if object_field is not None:
            filters.append(Filter.object_field(*object_field))
        found = await self.store.list(workflow, offset, limit, order, *filters)
        if paused_by is not None:
            found = [r for r in found if r.meta.paused_by == paused_by]
        return found

    async def run(self, run_id: str) -> RunDetail:
        """The run with its history and what each version changed in the object."""
        record = await self.store.lookup(run_id)
        versions = [record]
        if isinstance(self.store, RecordHistory):
            versions = await self.store.history(run_id)
        out: list[Version] = []
        before: Any = None
        for r in versions:
            try:
                now: Any = json.loads(r.object)
            except ValueError:
                now = None
            out.append(Version(r, _diff(before, now) if out else _diff(None, now)))
            before = now
        return RunDetail(record, out)

    def status_name(self, record: Record) -> str:
        """The status's member name when the workflow is registered, else its number."""
        wf = self.workflows.get(record.workflow_name)
        if wf is not None:
            return wf._engine.status_name(record.status)
        return record.meta.status_description or str(record.status)

    def graph(self, workflow: str) -> str:
        """The registered workflow's status graph as Mermaid text."""
        wf = self.workflows.get(workflow)
        if wf is None:
            raise ValueError(
                f"workflow {workflow!r} is not registered here; registered: "
                f"{sorted(self.workflows)}"
            )
        return mermaid(wf)

    # -- run-state changes ------------------------------------------------------------------

    async def pause(self, run_id: str, reason: str = "") -> Record:
        return await self._control(run_id, RunState.PAUSED, reason)

    async def resume(self, run_id: str) -> Record:
        return await self._control(run_id, RunState.RUNNING, "")

    async def cancel(self, run_id: str, reason: str = "") -> Record:
        return await self._control(run_id, RunState.CANCELLED, reason)

    async def delete_data(self, run_id: str, reason: str = "") -> Record:
        return await self._control(run_id, RunState.REQUESTED_DATA_DELETED, reason)

    async def resume_paused(
        self, *, workflow: str = "", paused_by: str | None = None, limit: int = 1000
    ) -> list[str]:
        """Resume up to ``limit`` paused runs (of ``workflow``, paused for ``paused_by``):
        replay a dead letter. Returns the ids resumed; a run that changed meanwhile is left."""
        if paused_by is not None and paused_by not in {str(p) for p in PausedBy}:
            raise ValueError(
                f"paused_by must be one of {[str(p) for p in PausedBy]}, got {paused_by!r}"
            )
        resumed: list[str] = []
        offset = 0
        while len(resumed) < limit:
            page = await self.store.list(
                workflow, offset, _PAGE, "asc", Filter.by_run_state(RunState.PAUSED)
            )
            left = 0  # runs of this page still paused: the next page starts after them
            for r in page:
                if len(resumed) >= limit:
                    break
                if paused_by is not None and r.meta.paused_by != paused_by:
                    left += 1
                    continue
                try:
                    await self.resume(r.run_id)
                except (ConcurrentUpdateError, RunStateError):
                    left += 1
                    continue
                resumed.append(r.run_id)
            if len(page) < _PAGE:
                break
            offset += left
        return resumed

    async def purge(self, finished_before: datetime, *, batch: int = 500) -> int:
        """Delete the runs that finished before ``finished_before`` (completed, cancelled,
        data deleted) with their history, ``batch`` runs per transaction. Returns how many."""
        if finished_before.tzinfo is None:
            raise ValueError("finished_before needs a timezone")
        if not 1 <= batch <= 10_000:
            raise ValueError("batch must be between 1 and 10000")
        store = self.store
        if not isinstance(store, Purge):
            raise WorkflowError(
                f"the record store {type(store).__name__} cannot purge runs (no purge_finished)"
            )
        total = 0
        while True:
            n = await store.purge_finished(finished_before, batch)
            total += n
            if n < batch:
                return total

    async def _control(self, run_id: str, target: RunState, reason: str) -> Record:
        check_text(reason, "reason")
        record = await self.store.lookup(run_id)
        wf = self.workflows.get(record.workflow_name)
        if wf is not None:
            verbs = {
                RunState.PAUSED: wf.pause,
                RunState.CANCELLED: wf.cancel,
                RunState.REQUESTED_DATA_DELETED: wf.delete_data,
            }
            if target is RunState.RUNNING:
                await wf.resume(run_id)
            else:
                await verbs[target](run_id, reason)
            return await self.store.lookup(run_id)
        for _ in range(_ATTEMPTS):
            allowed = (
                record.run_state is RunState.PAUSED
                if target is RunState.RUNNING
                else can_move(record.run_state, target)
            )
            if not allowed:
                raise run_state_error(target)(
                    f"cannot move run {run_id} to {target}: it is {record.run_state}"
                )
            new = self._next(record, target, reason)
            extra = []
            if target in (RunState.CANCELLED, RunState.REQUESTED_DATA_DELETED):
                extra = [r for r, _ in await cascade_in(self.store, new.updated_at, new)]
            try:
                if extra and isinstance(self.store, AtomicWrites):
                    await self.store.store_many([new, *extra])
                else:
                    await self.store.store(new)
                return new
            except ConcurrentUpdateError:
                record = await self.store.lookup(run_id)
        raise ConcurrentUpdateError(f"run {run_id} kept changing; try again")

    def _next(self, record: Record, target: RunState, reason: str) -> Record:
        meta = record.meta
        attempt = meta.attempt
        if target is RunState.RUNNING and meta.paused_by in FRESH_ATTEMPTS_ON_RESUME:
            attempt = 1
        return dataclasses.replace(
            record,
            run_state=target,
            updated_at=self.clock.now(),
            meta=dataclasses.replace(
                meta,
                version=meta.version + 1,
                run_state_reason=storable(reason),
                attempt=attempt,
                retry_at=None,
                paused_by=PausedBy.OPERATOR if target is RunState.PAUSED else "",
            ),
        )


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value


def _diff(before: Any, after: Any) -> list[Change]:
    """The fields (dotted paths; lists compared whole) that differ between two objects."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    if before is not None:
        _flatten(before, "", a)
    if after is not None:
        _flatten(after, "", b)
    return [
        Change(path, a.get(path), b.get(path))
        for path in sorted(set(a) | set(b))
        if a.get(path) != b.get(path) or (path in a) != (path in b)
    ]
