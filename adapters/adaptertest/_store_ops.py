"""Record-store checks for operations (the CLI and HTTP API): the ``updated_after`` /
``updated_before`` and ``object_field`` filters, and ``purge_finished`` when offered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta

from workflow import Filter, RecordNotFoundError, RunState
from workflow.abc import Purge, RecordHistory

from ._roles import check, resolve
from ._store import BASE, WF, RecordStoreFactory, _next, _record

__all__ = ["operations_checks"]


async def updated_filters(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    old = _record("old")
    await store.store(old)
    new = _record("new", created_at=BASE + timedelta(hours=1))
    await store.store(new)
    moved = replace(_next(old, RunState.RUNNING, 2), updated_at=BASE + timedelta(hours=2))
    await store.store(moved)
    after = await store.list(WF, 0, 10, "asc", Filter.updated_after(BASE + timedelta(minutes=90)))
    check([r.foreign_id for r in after] == ["old"], f"updated_after gave {after}")
    before = await store.list(WF, 0, 10, "asc", Filter.updated_before(BASE + timedelta(hours=2)))
    check([r.foreign_id for r in before] == ["new"], f"updated_before gave {before}")


async def object_fields(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    objects = {
        "a": b'{"customer":{"country":"NL","vip":true},"total":42}',
        "b": b'{"customer":{"country":"DE","vip":false},"total":4.5}',
        "c": b'{"customer":null,"total":"42"}',
    }
    for fid, obj in objects.items():
        await store.store(replace(_record(fid), object=obj))

    async def found(path: str, value: str) -> list[str]:
        runs = await store.list(WF, 0, 10, "asc", Filter.object_field(path, value))
        return sorted(r.foreign_id for r in runs)

    for path, value, want in (
        ("customer.country", "NL", ["a"]),
        ("customer.vip", "true", ["a"]),
        ("customer.vip", "false", ["b"]),
        ("total", "42", ["a", "c"]),  # the number 42 and the string "42"
        ("total", "4.5", ["b"]),
        ("customer.country", "FR", []),
        ("missing.key", "x", []),
    ):
        got = await found(path, value)
        check(got == want, f"object_field({path!r}, {value!r}) gave {got}, want {want}")


async def purge(factory: RecordStoreFactory) -> None:
    store = await resolve(factory())
    if not isinstance(store, Purge):
        return
    kept = []
    for i, state in enumerate(
        (RunState.COMPLETED, RunState.CANCELLED, RunState.DATA_DELETED, RunState.COMPLETED)
    ):
        v1 = _record(f"done-{i}")
        await store.store(v1)
        await store.store(replace(_next(v1, state, 9), updated_at=BASE + timedelta(minutes=i)))
    for fid, state in (("paused", RunState.PAUSED), ("asked", RunState.REQUESTED_DATA_DELETED)):
        v1 = _record(fid)
        await store.store(v1)
        await store.store(_next(v1, state, 1))
        kept.append(fid)
    late = _record("late")
    await store.store(late)
    await store.store(
        replace(_next(late, RunState.COMPLETED, 9), updated_at=BASE + timedelta(days=2))
    )
    kept.append("late")
    cut = BASE + timedelta(days=1)
    n = await store.purge_finished(cut, 3)
    check(n == 3, f"purge_finished(limit=3) deleted {n} runs, want 3")
    n = await store.purge_finished(cut, 3)
    check(n == 1, f"the second purge_finished deleted {n} runs, want the 1 left")
    check(await store.purge_finished(cut, 3) == 0, "a third purge_finished deleted runs")
    left = sorted(r.foreign_id for r in await store.list(WF, 0, 50))
    check(left == sorted(kept), f"after the purge the store has {left}, want {sorted(kept)}")
    try:
        await store.latest(WF, "done-0")
    except RecordNotFoundError:
        pass
    else:
        raise AssertionError("latest() still finds a purged run")
    if isinstance(store, RecordHistory):
        try:
            await store.history(late.run_id)
        except RecordNotFoundError:
            raise AssertionError("purge removed the history of a run it kept") from None


def operations_checks(
    factory: RecordStoreFactory,
) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    return [
        ("updated_after / updated_before filters", lambda: updated_filters(factory)),
        ("object_field filter", lambda: object_fields(factory)),
        ("purge_finished", lambda: purge(factory)),
    ]
