"""Record-store checks for failure handling: the bookkeeping fields of ``Meta`` round-trip,
``due_retries`` finds exactly the runs whose retry is due, idempotency keys are unique per
workflow (atomically with the write), and ``unfinished_by_status`` counts (when offered)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from workflow import IdempotencyKeyUsedError, Record, RunState
from workflow.abc import RecordHistory, StatusCounts

from ._roles import check, resolve, run_checks
from ._store import (
    BASE,
    WF,
    WF2,
    RecordStoreFactory,
    _next,
    _outbox_size,
    _record,
    _same,
    core_checks,
)
from ._store_concurrent import concurrency_checks
from ._store_many import composition_checks
from ._store_ops import operations_checks

__all__ = ["run_record_store_test"]


def _retrying(record: Record, attempt: int, due_in: timedelta) -> Record:
    """The next version of ``record``: its failed attempt scheduled attempt ``attempt``."""
    nxt = _next(record, record.run_state, record.status)
    return replace(
        nxt, meta=replace(nxt.meta, attempt=attempt, retry_at=record.updated_at + due_in)
    )


async def meta_round_trip(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    v1 = _record()
    v1 = replace(v1, meta=replace(v1.meta, idempotency_key="order-42/charge"))
    await store.store(v1)
    v2 = _retrying(v1, 2, timedelta(seconds=30))
    await store.store(v2)
    v3 = _next(v2, RunState.PAUSED, v2.status, reason="retries exhausted")
    v3 = replace(v3, meta=replace(v3.meta, paused_by="retries exhausted", retry_at=None))
    await store.store(v3)
    _same(await store.lookup(v1.run_id), v3, "lookup of a paused run (attempt, paused_by)")
    listed = await store.list(WF, 0, 10)
    check(len(listed) == 1, f"list returned {len(listed)} runs, want 1")
    _same(listed[0], v3, "list")
    if isinstance(store, RecordHistory):
        history = await store.history(v1.run_id)
        check(len(history) == 3, f"history has {len(history)} versions, want 3")
        for got, want in zip(history, (v1, v2, v3), strict=False):
            _same(got, want, f"history version {want.meta.version}")


async def due_retries(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    now = BASE + timedelta(minutes=10)
    runs = {}
    # (foreign id, workflow, status, run state, retry due after the write, or None)
    cases = [
        ("due-late", WF, 1, RunState.RUNNING, timedelta(minutes=5)),
        ("due-early", WF, 1, RunState.INITIATED, timedelta(minutes=1)),
        ("due-exactly", WF, 1, RunState.RUNNING, timedelta(minutes=9)),
        ("not-yet", WF, 1, RunState.RUNNING, timedelta(minutes=20)),
        ("no-retry", WF, 1, RunState.RUNNING, None),
        ("other-status", WF, 2, RunState.RUNNING, timedelta(minutes=1)),
        ("other-workflow", WF2, 1, RunState.RUNNING, timedelta(minutes=1)),
        ("paused", WF, 1, RunState.PAUSED, timedelta(minutes=1)),
    ]
    for fid, wf, status, state, due_in in cases:
        v1 = _record(fid, workflow_name=wf, status=status)
        await store.store(v1)
        v2 = _next(v1, state, status)
        if due_in is not None:
            v2 = replace(v2, meta=replace(v2.meta, attempt=2, retry_at=v1.updated_at + due_in))
        await store.store(v2)
        runs[fid] = v2
    # updated_at is BASE + 1 s: "due-exactly" is due at BASE + 9 min + 1 s
    now = BASE + timedelta(minutes=9, seconds=1)
    got = [r.foreign_id for r in await store.due_retries(WF, 1, now, 10)]
    want = ["due-early", "due-late", "due-exactly"]
    check(
        got == want,
        f"due_retries(now) returned {got}; want {want}: initiated or running runs of the "
        "workflow at the status with retry_at <= now, earliest due first",
    )
    _same((await store.due_retries(WF, 1, now, 10))[0], runs["due-early"], "due_retries")
    got = [r.foreign_id for r in await store.due_retries(WF, 1, now, 2)]
    check(got == want[:2], f"due_retries(limit=2) returned {got}, want {want[:2]}")
    # a write that clears retry_at (the retry ran and moved the run on) takes it out
    done = _next(runs["due-early"], RunState.RUNNING, 2)
    done = replace(done, meta=replace(done.meta, attempt=1, retry_at=None))
    await store.store(done)
    got = [r.foreign_id for r in await store.due_retries(WF, 1, now, 10)]
    check(got == want[1:], f"after the retry ran, due_retries returned {got}, want {want[1:]}")
    got = [r.foreign_id for r in await store.due_retries(WF, 2, now, 10)]
    check(got == ["other-status"], f"due_retries at status 2 returned {got}")


async def idempotency_keys(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    key = "payment-7f3a"
    first = _record("first")
    first = replace(first, meta=replace(first.meta, idempotency_key=key))
    await store.store(first)
    before = await _outbox_size(store)
    for fid, what in (("second", "another foreign id"), ("first", "the same foreign id")):
        again = _record(fid)
        again = replace(again, meta=replace(again.meta, idempotency_key=key))
        try:
            await store.store(again)
        except IdempotencyKeyUsedError as used:
            check(
                used.run_id == first.run_id,
                f"IdempotencyKeyUsedError names run {used.run_id}, want {first.run_id}",
            )
        else:
            raise AssertionError(
                f"a new run with a used idempotency key ({what}) was stored; want "
                "IdempotencyKeyUsedError carrying the first run's id"
            )
    check(await _outbox_size(store) == before, "a refused run left an outbox event behind")
    listed = await store.list(WF, 0, 10)
    check(len(listed) == 1, f"a refused run was stored: list has {len(listed)} runs")
    # the key stays taken after the run finished
    await store.store(_next(first, RunState.COMPLETED, 9))
    late = _record("late")
    late = replace(late, meta=replace(late.meta, idempotency_key=key))
    try:
        await store.store(late)
        raise AssertionError("a finished run's idempotency key was given to a new run")
    except IdempotencyKeyUsedError:
        pass
    # keys are per workflow, and runs without a key never clash
    other = _record("first", workflow_name=WF2)
    await store.store(replace(other, meta=replace(other.meta, idempotency_key=key)))
    await store.store(_record("keyless-1"))
    await store.store(_record("keyless-2"))
    # concurrent writers with one key: exactly one run
    racers = []
    for i in range(10):
        r = _record(f"racer-{i}")
        racers.append(replace(r, meta=replace(r.meta, idempotency_key="race")))
    results = await asyncio.gather(*(store.store(r) for r in racers), return_exceptions=True)
    stored = [r for r, res in zip(racers, results, strict=True) if res is None]
    refused = [res for res in results if isinstance(res, IdempotencyKeyUsedError)]
    check(
        len(stored) == 1 and len(refused) == 9,
        f"10 concurrent runs with one key: {len(stored)} stored, {len(refused)} refused with "
        f"IdempotencyKeyUsedError, others: {[r for r in results if r is not None]}",
    )
    check(
        all(e.run_id == stored[0].run_id for e in refused),
        "a refused racer was not given the stored run's id",
    )


async def unfinished_counts(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    if not isinstance(store, StatusCounts):
        return
    for fid, status, state in (
        ("a", 1, RunState.RUNNING),
        ("b", 1, RunState.PAUSED),
        ("c", 3, RunState.INITIATED),
        ("d", 3, RunState.COMPLETED),
        ("e", 5, RunState.CANCELLED),
    ):
        v1 = _record(fid, status=status)
        await store.store(v1)
        if state is not RunState.INITIATED:
            await store.store(_next(v1, state, status))
    await store.store(_record("x", workflow_name=WF2, status=7))
    got = await store.unfinished_by_status(WF)
    check(got == {1: 2, 3: 1}, f"unfinished_by_status returned {got}, want {{1: 2, 3: 1}}")


async def run_record_store_test(factory: RecordStoreFactory) -> None:
    """Check a :class:`~workflow.RecordStore`: round trips, latest, compare-and-set on
    ``meta.version``, one unfinished run per foreign id, not-found errors, the transactional
    outbox, listing (paging, order, workflow name, every filter), that the DATA_DELETED
    write leaves no earlier version's object in the history, the failure-handling fields of
    ``Meta`` (attempt, retry_at, paused_by, idempotency_key), ``due_retries``, unique
    idempotency keys, ``unfinished_by_status`` when the store offers it, and what child
    workflows need (``run_atomic_writes_test``: the parent and saga fields of ``Meta``,
    ``Filter.by_parent``, and ``store_many`` when the store offers it), and what operations
    need (the ``updated_*`` and ``object_field`` filters, ``purge_finished`` when offered),
    and that calls made at the same time each get the answer they would have got alone."""
    await run_checks(
        "record store",
        [
            *core_checks(factory),
            (
                "meta round trip (attempt, retry_at, paused_by, key)",
                lambda: meta_round_trip(factory),
            ),
            ("due_retries", lambda: due_retries(factory)),
            ("idempotency keys", lambda: idempotency_keys(factory)),
            ("unfinished_by_status", lambda: unfinished_counts(factory)),
            *composition_checks(factory),
            *operations_checks(factory),
            *concurrency_checks(factory),
        ],
    )
