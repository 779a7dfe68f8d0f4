"""Child workflows: a step starts runs of another workflow (or its own) atomically with its
run's transition; a parent waits for all its children at a fan-in status
(``Builder.add_children_done``); cancelling a parent, or deleting its data, takes its
children along.

- **Start.** ``run.start_child`` builds the child's first version at once (validated by the
  child's own workflow) and keeps it on the ``Run``; ``Engine.apply`` stores it with the
  parent's new version in one ``store_many`` (the :class:`~workflow.abc.AtomicWrites`
  capability), and the compare-and-set on the parent lets only one attempt of the step
  commit: a redelivered event or a retry never adds a second set of children. The child's
  run id is a UUID derived from the parent's run id, its visit to the status and the
  child's key: the retries of a step see the same ids (useful as idempotency keys for the
  world outside), unless the run was paused and resumed in between.
- **Finish.** A child's finishing write (completed, cancelled, data deletion requested)
  carries, in the same transaction, an event on its parent workflow's
  :func:`~workflow.abc.children_topic`. The parent workflow's child-finished consumer
  re-checks the parent there: durable, event driven, no polling of children.
- **Fan-in.** At a fan-in status the check is: every child of the run finished? Then
  ``fn(run, children)`` runs (children in creation order, with their final objects and
  statuses) and its result is applied like a step's. The status's own consumer makes the
  same check when the run arrives (its children may all have finished before).
- **Cascade.** A parent's version that cancels it (or requests its data deletion) is
  written together with the matching version of every descendant: unfinished ones are
  cancelled; for a deletion, every child's data is deleted, an unfinished child's too (it
  stops there).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._adapters import AtomicWrites, Filter, RecordStore
from ._errors import WorkflowError
from ._process import Process
from ._record import Record, TypedRecord
from ._run import Run
from ._runstate import RunState, can_move
from ._text import check_foreign_id, check_text, storable
from ._usercode import call_user

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = [
    "atomic",
    "cascade",
    "cascade_in",
    "children_in",
    "children_of",
    "fan_in_work",
    "prepare_child",
    "typed_children",
]

_NAMESPACE = uuid.UUID("5f1d8c3e-9a4b-4c2d-8e7f-0a1b2c3d4e5f")
"""The namespace of the derived run ids of child runs."""

_PAGE = 500

MAX_KEY = 200


def atomic(store: RecordStore) -> AtomicWrites:
    """``store`` as a store that writes several runs in one transaction, or the error that
    says child workflows need one."""
    if not isinstance(store, AtomicWrites):
        raise WorkflowError(
            f"the record store {type(store).__name__} cannot write several runs in one "
            "transaction (no store_many): child workflows need a store that can (the "
            "memory and SQL stores can)"
        )
    return store


def prepare_child(
    parent: Engine[Any, Any],
    run: Run[Any, Any],
    workflow: Any,
    key: str,
    initial_value: Any,
    start_at: Any,
    foreign_id: str | None,
) -> Record:
    """The first version of a child run of ``run`` (not stored: see ``Engine.apply``)."""
    child = getattr(workflow, "_engine", None)
    if child is None or not hasattr(child, "new_record"):
        raise ValueError(f"start_child needs a built Workflow, got {workflow!r}")
    if child.store is not parent.store:
        raise ValueError(
            f"workflow {child.name!r} is built on another record store than {parent.name!r}: "
            "a child run is created in its parent's transaction, so build both workflows "
            "on the same record store object"
        )
    atomic(parent.store)
    if not isinstance(key, str) or not key:
        raise ValueError(f"a child's key must be a non-empty str, got {key!r}")
    check_text(key, "the child's key")
    if len(key) > MAX_KEY:
        raise ValueError(f"a child's key is longer than {MAX_KEY} characters")
    meta = run.record.meta
    visit = meta.version - (meta.attempt - 1)  # retries of one visit add to both
    run_id = str(uuid.uuid5(_NAMESPACE, f"{run.run_id}\x00{visit}\x00{key}"))
    if any(c.run_id == run_id for c in run._children):
        raise ValueError(f"this step already started a child with key {key!r}")
    fid = f"{run.foreign_id}/{key}" if foreign_id is None else foreign_id
    check_foreign_id(fid)
    record: Record = child.first_version(
        fid, start_at, initial_value, run.meta.trace_origin, "start_child"
    )
    return dataclasses.replace(
        record,
        run_id=run_id,
        meta=dataclasses.replace(
            record.meta, parent_workflow=parent.name, parent_run_id=run.run_id
        ),
    )


async def children_of(eng: Engine[Any, Any], run_id: str) -> list[Record]:
    """Every child run of ``run_id`` (any workflow, any state), in creation order."""
    return await children_in(eng.store, run_id)


async def children_in(store: RecordStore, run_id: str) -> list[Record]:
    """Every child run of ``run_id`` in ``store``, in creation order."""
    found: list[Record] = []
    offset = 0
    while True:
        page = await store.list("", offset, _PAGE, "asc", Filter.by_parent(run_id))
        found += page
        if len(page) < _PAGE:
            return found
        offset += _PAGE


async def cascade(eng: Engine[Any, Any], record: Record) -> list[tuple[Record, RunState]]:
    """The versions that take ``record``'s cancel (or data deletion request) to every
    descendant that can still move there, with each one's previous run state."""
    return await cascade_in(eng.store, eng.clock.now(), record)


async def cascade_in(
    store: RecordStore, now: datetime, record: Record
) -> list[tuple[Record, RunState]]:
    """:func:`cascade` on a store alone (the operations API has no engine)."""
    target = record.run_state
    if not isinstance(store, AtomicWrites):
        return []  # such a store has no children
    verb = "cancelled" if target is RunState.CANCELLED else "asked to delete its data"
    out: list[tuple[Record, RunState]] = []
    queue = [record.run_id]
    seen = {record.run_id}
    while queue:
        parent_id = queue.pop()
        for child in await children_in(store, parent_id):
            if child.run_id in seen:
                continue
            seen.add(child.run_id)
            queue.append(child.run_id)
            if target is RunState.CANCELLED:
                if child.run_state.finished or not can_move(child.run_state, target):
                    continue
            elif child.run_state in (RunState.REQUESTED_DATA_DELETED, RunState.DATA_DELETED):
                continue  # a data deletion also stops an unfinished child: personal data goes
            meta = child.meta
            new = dataclasses.replace(
                child,
                run_state=target,
                updated_at=now,
                meta=dataclasses.replace(
                    meta,
                    version=meta.version + 1,
                    run_state_reason=storable(
                        f"parent run {parent_id} ({record.workflow_name}) was {verb}"
                    ),
                    retry_at=None,
                    paused_by="",
                ),
            )
            out.append((new, child.run_state))
    return out


def typed_children(eng: Engine[Any, Any], records: list[Record]) -> list[TypedRecord[Any, Any]]:
    """Children as user code sees them, each decoded by its own workflow (built in this
    process on the same record store)."""
    out: list[TypedRecord[Any, Any]] = []
    for r in records:
        child = eng.signals.engines.get(r.workflow_name)
        if child is None:
            raise WorkflowError(
                f"run {r.run_id} is a child of workflow {r.workflow_name!r}, which is not "
                "built in this process: build every child workflow (on the same record "
                "store) in the processes that run its parent"
            )
        run = child.new_run(r)
        out.append(TypedRecord(r, run.status, run.object))
    return out


def fan_in_work(
    eng: Engine[Any, Any], fn: Callable[..., Any], timeout: float | None
) -> Callable[[Process, Run[Any, Any]], Awaitable[None]]:
    """The work of a fan-in status: nothing until every child finished, then ``fn``."""

    async def work(proc: Process, run: Run[Any, Any]) -> None:
        children = await children_of(eng, run.run_id)
        if any(not c.run_state.finished for c in children):
            proc.skip("children unfinished")
            return
        result = await call_user(fn, run, typed_children(eng, children), timeout=timeout)
        if not await eng.apply(run.record, run, result, compensable=_compensable(eng, run)):
            proc.skip("next value specified skip")

    return work


def _compensable(eng: Engine[Any, Any], run: Run[Any, Any]) -> bool:
    cfg = eng.steps.get(run.record.status)
    return cfg is not None and cfg.compensation is not None
