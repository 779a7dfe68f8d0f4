"""Conformance suite for :class:`workflow.RecordStore` adapters.

Run it against your own store from any test runner::

    from workflow.adapters.adaptertest import run_record_store_test

    async def test_my_store() -> None:
        await run_record_store_test(make_empty_store)  # plain or async, no arguments

The factory must return a fresh, empty store on every call: the suite calls it once per
behaviour (the listing checks count every row). A failed behaviour raises ``AssertionError``
naming it, e.g. ``record store: stale write was accepted ...``. Records are built with
:class:`workflow.Record` and timezone-aware UTC times, which a store must give back exactly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from workflow import (
    ConcurrentUpdateError,
    Filter,
    Meta,
    Order,
    Record,
    RecordNotFoundError,
    RecordStore,
    RunState,
    WorkflowInProgressError,
    make_outbox_event,
)
from workflow.abc import RecordHistory, RunVersions, decode_outbox_data

from ._roles import check, resolve

__all__ = ["RecordStoreFactory", "core_checks"]

RecordStoreFactory = Callable[[], RecordStore | Awaitable[RecordStore]]

WF = "my_workflow"
WF2 = "my_second_workflow"
FID = "Andrew Wormald"
BASE = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _record(
    foreign_id: str = FID,
    *,
    workflow_name: str = WF,
    run_state: RunState = RunState.INITIATED,
    status: int = 1,
    created_at: datetime = BASE,
) -> Record:
    """A new run (version 1) as the engine's ``trigger`` writes it."""
    return Record(
        workflow_name=workflow_name,
        foreign_id=foreign_id,
        run_id=str(uuid.uuid4()),
        run_state=run_state,
        status=status,
        object=b'{"name":"Andrew Wormald"}',
        created_at=created_at,
        updated_at=created_at,
        meta=Meta(status_description="Started", version=1, trace_origin="adaptertest"),
    )


def _next(record: Record, run_state: RunState, status: int, reason: str = "") -> Record:
    """The record's next version, as a step or run-state change writes it."""
    return replace(
        record,
        run_state=run_state,
        status=status,
        object=record.object[:-1] + b',"v":' + str(record.meta.version + 1).encode() + b"}",
        updated_at=record.updated_at + timedelta(seconds=1),
        meta=replace(
            record.meta,
            version=record.meta.version + 1,
            run_state_reason=reason,
            status_description=f"Status {status}",
        ),
    )


def _same(got: Record, want: Record, what: str) -> None:
    for name in ("created_at", "updated_at"):
        value = getattr(got, name)
        check(
            isinstance(value, datetime) and value.utcoffset() is not None,
            f"{what} returned a naive or missing {name}: {value!r}",
        )
    check(
        isinstance(got.run_state, RunState),
        f"{what} returned run_state {got.run_state!r}, not a workflow.RunState",
    )
    # Objects are JSON: a store may normalise them (PostgreSQL's jsonb reorders keys and
    # spaces), so they are compared as JSON values; everything else must be equal.
    check(
        json.loads(got.object) == json.loads(want.object),
        f"{what} returned a different object:\n  got  {got.object!r}\n  want {want.object!r}",
    )
    check(
        replace(got, object=b"") == replace(want, object=b""),
        f"{what} returned a different record:\n  got  {got!r}\n  want {want!r}",
    )


async def _rejects(
    store: RecordStore, record: Record, errors: tuple[type[Exception], ...], what: str
) -> None:
    try:
        await store.store(record)
    except errors:
        return
    names = " or ".join(e.__name__ for e in errors)
    raise AssertionError(f"{what} was accepted (expected {names})")


async def _absent(call: Awaitable[object], what: str) -> None:
    try:
        got = await call
    except RecordNotFoundError:
        return
    raise AssertionError(f"{what} returned {got!r} instead of raising RecordNotFoundError")


async def _outbox_size(store: RecordStore, workflow_name: str = WF) -> int:
    return len(await store.list_outbox_events(workflow_name, 10_000))


async def _store_and_lookup(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    first = _record()
    await store.store(first)
    _same(await store.lookup(first.run_id), first, "lookup")
    _same(await store.latest(WF, FID), first, "latest")
    second = _next(first, RunState.RUNNING, 2, "running now")
    await store.store(second)
    _same(await store.lookup(first.run_id), second, "lookup after an update")
    _same(await store.latest(WF, FID), second, "latest after an update")
    listed = await store.list(WF, 0, 25)
    check(len(listed) == 1, f"list returned {len(listed)} rows for one run with two versions")
    _same(listed[0], second, "list after an update")
    await _absent(store.lookup(str(uuid.uuid4())), "lookup of an unknown run id")
    await _absent(store.latest(WF, "nobody"), "latest of an unknown foreign id")
    await _absent(store.latest(WF2, FID), "latest of a foreign id in another workflow")


async def _latest_is_newest_created(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    old = _record()
    await store.store(old)
    old = _next(old, RunState.COMPLETED, 3)
    await store.store(old)
    new = _record(created_at=BASE + timedelta(minutes=1))
    await store.store(new)
    _same(await store.latest(WF, FID), new, "latest after a second run")
    await store.store(_next(old, RunState.REQUESTED_DATA_DELETED, 3))
    _same(await store.latest(WF, FID), new, "latest (after an update of an older run)")
    new = _next(new, RunState.RUNNING, 2)
    await store.store(new)
    _same(await store.latest(WF, FID), new, "latest after an update of the newest run")
    await store.store(_record(workflow_name=WF2, created_at=BASE + timedelta(minutes=2)))
    _same(await store.latest(WF, FID), new, "latest (after a run of another workflow)")


async def _compare_and_set(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    v1 = _record()
    await store.store(v1)
    skip = _next(_next(v1, RunState.RUNNING, 2), RunState.RUNNING, 3)
    await _rejects(store, skip, (ConcurrentUpdateError,), "storing version 3 over version 1")
    _same(await store.lookup(v1.run_id), v1, "lookup after a rejected write")
    check(await _outbox_size(store) == 1, "a rejected write added an outbox row")
    v2 = _next(v1, RunState.RUNNING, 2)
    await store.store(v2)
    stale = replace(_next(v1, RunState.RUNNING, 3), object=b'{"stale":true}')
    await _rejects(store, stale, (ConcurrentUpdateError,), "stale write (version 2 twice)")
    _same(await store.lookup(v1.run_id), v2, "lookup after a rejected stale write")
    check(await _outbox_size(store) == 2, "a rejected stale write added an outbox row")
    await _rejects(
        store,
        replace(v1, updated_at=v1.updated_at + timedelta(hours=1)),
        (ConcurrentUpdateError, WorkflowInProgressError),
        "storing version 1 of an existing run again",
    )
    ghost = _next(_record("ghost"), RunState.RUNNING, 2)
    await _rejects(store, ghost, (ConcurrentUpdateError,), "storing version 2 of an unknown run")
    await _absent(store.lookup(ghost.run_id), "lookup of a run whose only write was rejected")
    _same(await store.lookup(v1.run_id), v2, "lookup after rejected writes")


async def _in_progress(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    first = _record()
    await store.store(first)
    second = _record(created_at=BASE + timedelta(minutes=1))
    problem = "a second run of a foreign id whose run is unfinished"
    for state in (RunState.RUNNING, RunState.PAUSED, None):
        await _rejects(store, second, (WorkflowInProgressError,), f"{problem} ({first.run_state})")
        await _absent(store.lookup(second.run_id), "lookup of a rejected new run")
        _same(await store.latest(WF, FID), first, "latest after a rejected new run")
        if state is not None:
            first = _next(first, state, 2)
            await store.store(first)
    check(await _outbox_size(store) == 3, "a rejected new run added an outbox row")
    first = _next(first, RunState.COMPLETED, 3)
    await store.store(first)
    await store.store(second)
    _same(await store.latest(WF, FID), second, "latest after a new run of a finished foreign id")
    other = _record(workflow_name=WF2)
    await store.store(other)  # another workflow's runs are independent
    _same(await store.latest(WF2, FID), other, "latest of another workflow")


async def _outbox(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    v1 = _record()
    await store.store(v1)
    rows = await store.list_outbox_events(WF, 1000)
    check(len(rows) == 1, f"storing one record wrote {len(rows)} outbox rows, not 1")
    row = rows[0]
    check(row.id.startswith("outbox-id-"), f"outbox id {row.id!r} lacks the outbox-id- prefix")
    check(row.workflow_name == WF, f"outbox row of workflow {row.workflow_name!r}")
    check(row.created_at.utcoffset() is not None, f"outbox created_at {row.created_at!r} naive")
    run_id, status, headers = decode_outbox_data(row.data)
    check(run_id == v1.run_id and status == 1, f"outbox row is for {run_id!r} at {status}")
    expected = {
        "topic": "my_workflow-1",
        "foreign_id": FID,
        "workflow_name": WF,
        "run_id": v1.run_id,
        "run_state": "1",
        "record_version": "1",
    }
    check(headers == expected, f"outbox headers {headers!r}, expected {expected!r}")
    v2 = _next(v1, RunState.RUNNING, 2)
    v3 = _next(v2, RunState.COMPLETED, 3)
    for record in (v2, v3):
        await store.store(record)
    await store.store(_record(workflow_name=WF2))
    rows = await store.list_outbox_events(WF, 1000)
    check(len(rows) == 3, f"3 stores of a workflow's run left {len(rows)} outbox rows")
    for row, record in zip(rows, (v1, v2, v3), strict=True):
        check(
            decode_outbox_data(row.data) == decode_outbox_data(make_outbox_event(record).data),
            f"outbox rows are not oldest first or differ from make_outbox_event: {rows!r}",
        )
    check(len({r.id for r in rows}) == 3, "outbox ids are not unique")
    limited = await store.list_outbox_events(WF, 2)
    check([r.id for r in limited] == [r.id for r in rows[:2]], "outbox limit not honoured")
    check(await _outbox_size(store, WF2) == 1, "outbox rows are not kept per workflow name")
    await store.delete_outbox_event(rows[0].id)
    left = [r.id for r in await store.list_outbox_events(WF, 1000)]
    check(left == [r.id for r in rows[1:]], f"deleting one outbox row left {left!r}")
    await store.delete_outbox_event(rows[0].id)  # already gone: not an error
    await store.delete_outbox_event("outbox-id-absent")
    left = [r.id for r in await store.list_outbox_events(WF, 1000)]
    check(left == [r.id for r in rows[1:]], "deleting an absent outbox id removed another row")
    check(await _outbox_size(store, WF2) == 1, "deleting removed another workflow's outbox row")


async def _seed(store: RecordStore, records: Sequence[Record]) -> list[Record]:
    for record in records:
        await store.store(record)
    return list(records)


def _ids(records: Sequence[Record]) -> list[str]:
    return [r.run_id for r in records]


def _at(i: int) -> datetime:
    return BASE + timedelta(milliseconds=i)


async def _list_paging(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    made = [
        _record(f"fid-{i}", workflow_name=WF2 if i > 500 else WF, created_at=_at(i))
        for i in range(1000)
    ]
    ids = _ids(await _seed(store, made))
    pages: list[tuple[int, int, Order, list[str]]] = [
        (0, 53, "asc", ids[:53]),
        (53, 100, "asc", ids[53:153]),
        (153, 847, "asc", ids[153:]),
        (950, 1000, "asc", ids[950:]),
        (0, 10, "desc", ids[::-1][:10]),
        (950, 1000, "desc", ids[::-1][950:]),
        (0, 5, "asc", ids[:5]),
    ]
    for offset, limit, order, want in pages:
        got = _ids(await store.list("", offset, limit, order))
        check(
            got == want,
            f"list('', offset_id={offset}, limit={limit}, order={order!r}) returned "
            f"{len(got)} rows, not the {len(want)} expected"
            + (" (desc must return the newest first)" if order == "desc" else ""),
        )
    listed = await store.list("", 0, 1)
    _same(listed[0], made[0], "list")
    for name, count in ((WF, 501), (WF2, 499)):
        got_records = await store.list(name, 0, 2000)
        check(
            _ids(got_records) == [r.run_id for r in made if r.workflow_name == name],
            f"list({name!r}) returned {len(got_records)} rows, not its {count} runs in order",
        )


async def _count(
    store: RecordStore, want: list[str], what: str, *filters: Filter, limit: int = 2000
) -> None:
    got = _ids(await store.list(WF, 0, limit, "asc", *filters))
    check(got == want, f"list filtered by {what} returned {len(got)} rows, not {len(want)}")


async def _list_filters(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    fids = ("MSDVUI-OBEWF-BYUIOW", "FRELBJK-SRGIUE-RGTJDSF")
    done = RunState.COMPLETED
    runs = await _seed(
        store, [_record(fids[i % 2], run_state=done, created_at=_at(i)) for i in range(40)]
    )
    for limit, fid in zip((2000, 100), fids, strict=True):
        want = [r.run_id for r in runs if r.foreign_id == fid]
        await _count(store, want, f"foreign id {fid!r}", Filter.by_foreign_id(fid), limit=limit)
    await _count(store, _ids(runs), "two foreign ids", Filter.by_foreign_id(*fids))
    await _count(store, [], "an unknown foreign id", Filter.by_foreign_id("random"))

    store = await resolve(factory())
    counts = {
        RunState.INITIATED: 10,
        RunState.RUNNING: 100,
        RunState.COMPLETED: 20,
        RunState.PAUSED: 3,
        RunState.CANCELLED: 1,
        RunState.DATA_DELETED: 15,
    }
    specs = [state for state, n in counts.items() for _ in range(n)]
    runs = await _seed(
        store,
        [_record(f"fid-{i}", run_state=s, created_at=_at(i)) for i, s in enumerate(specs)],
    )
    for state in counts:
        want = [r.run_id for r in runs if r.run_state is state]
        await _count(store, want, f"run state {state.name}", Filter.by_run_state(state))
    both = (RunState.RUNNING, RunState.PAUSED)
    want = [r.run_id for r in runs if r.run_state in both]
    await _count(store, want, "run states RUNNING and PAUSED", Filter.by_run_state(*both))

    store = await resolve(factory())
    statuses = [1] * 10 + [2] * 100 + [3] * 20
    runs = await _seed(
        store, [_record(f"fid-{i}", status=s, created_at=_at(i)) for i, s in enumerate(statuses)]
    )
    for status in (1, 2, 3):
        want = [r.run_id for r in runs if r.status == status]
        await _count(store, want, f"status {status}", Filter.by_status(status), limit=100)
    status_2 = [r.run_id for r in runs if r.status == 2]
    got = _ids(await store.list(WF, 10, 20, "asc", Filter.by_status(2)))
    check(got == status_2[10:30], "offset_id/limit are not applied after the filters")
    got = _ids(await store.list(WF, 0, 5, "desc", Filter.by_status(2)))
    check(got == status_2[::-1][:5], "a filtered desc list is not newest first")


async def _list_created(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    await _seed(store, [_record(f"same-{i}") for i in range(100)])
    minute = timedelta(minutes=1)
    around = (Filter.created_after(BASE - minute), Filter.created_before(BASE + minute))
    got = await store.list(WF, 0, 100, "asc", *around)
    check(len(got) == 100, f"created_after+created_before around now returned {len(got)}")
    for f in (Filter.created_after(BASE + minute), Filter.created_before(BASE - minute)):
        got = await store.list(WF, 0, 100, "asc", f)
        check(not got, f"{f.kind} {f.time} returned {len(got)} rows, not 0")

    store = await resolve(factory())
    step = timedelta(seconds=1)
    runs = await _seed(store, [_record(f"t-{i}", created_at=BASE + i * step) for i in range(10)])
    ids = _ids(runs)
    t = [r.created_at for r in runs]
    await _count(store, ids[4:], "created_after (strictly)", Filter.created_after(t[3]))
    await _count(store, ids[:3], "created_before (strictly)", Filter.created_before(t[3]))
    window = (Filter.created_after(t[2]), Filter.created_before(t[5]))
    await _count(store, ids[3:5], "created_after and created_before", *window)


async def _deletion_erases_history(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    v1 = _record()
    await store.store(v1)
    v2 = _next(v1, RunState.RUNNING, 2)
    await store.store(v2)
    v3 = _next(v2, RunState.REQUESTED_DATA_DELETED, 2)
    await store.store(v3)
    v4 = replace(_next(v3, RunState.DATA_DELETED, 2), object=b'{"result":"deleted"}')
    await store.store(v4)
    _same(await store.lookup(v1.run_id), v4, "lookup after the DATA_DELETED write")
    if isinstance(store, RunVersions):
        got = await store.versions([v1.run_id, "no-such-run"])
        check(got == {v1.run_id: 4}, f"versions() of a run at version 4 and a missing one: {got}")
    if not isinstance(store, RecordHistory):
        return  # a store without history keeps only the current version
    versions = await store.history(v1.run_id)
    check(
        [r.meta.version for r in versions] == [1, 2, 3, 4],
        f"history after deletion has versions {[r.meta.version for r in versions]}",
    )
    kept = [r.meta.version for r in versions if json.loads(r.object) != {"result": "deleted"}]
    check(
        not kept,
        f"after the DATA_DELETED write, versions {kept} of the history still hold the run's "
        "object: deleted data must not survive in the history",
    )


def core_checks(factory: RecordStoreFactory) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """The behaviours every record store has had from the start (see
    ``run_record_store_test``)."""
    return [
        ("store, lookup, latest and list", lambda: _store_and_lookup(factory)),
        ("latest is the newest created run", lambda: _latest_is_newest_created(factory)),
        ("compare-and-set on meta.version", lambda: _compare_and_set(factory)),
        ("one unfinished run per foreign id", lambda: _in_progress(factory)),
        ("transactional outbox", lambda: _outbox(factory)),
        ("list paging and order", lambda: _list_paging(factory)),
        ("list filters", lambda: _list_filters(factory)),
        ("list created_at filters", lambda: _list_created(factory)),
        ("deletion erases the history", lambda: _deletion_erases_history(factory)),
    ]
