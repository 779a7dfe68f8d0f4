"""Conformance suite for :class:`workflow.TimeoutStore` adapters.

Run it against your own store from any test runner::

    from workflow.adapters.adaptertest import run_timeout_store_test

    async def test_my_timeout_store() -> None:
        await run_timeout_store_test(make_empty_timeout_store)  # plain or async, no arguments

The factory must return a fresh, empty store on every call: the suite calls it once per
behaviour. A failed behaviour raises ``AssertionError`` naming it, e.g.
``timeout store: list_valid missed a timer whose expire_at == now``. The store may stamp
``created_at`` with any clock; the suite only requires it to be timezone-aware.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from workflow import TimeoutRecord, TimeoutStore

from ._roles import check, resolve, run_checks

__all__ = ["TimeoutStoreFactory", "run_timeout_store_test"]

TimeoutStoreFactory = Callable[[], TimeoutStore | Awaitable[TimeoutStore]]

WF = "example"
NOW = datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=UTC)
EXPIRED = NOW - timedelta(hours=1)


async def _seed(store: TimeoutStore, n: int) -> list[int]:
    """luno's seed: timers for runs "1".."n" of foreign id "andrew" at status 1, expired."""
    ids = []
    for i in range(1, n + 1):
        ids.append(await store.create(WF, "andrew", str(i), 1, EXPIRED, index=i - 1))
    check(
        all(isinstance(i, int) and not isinstance(i, bool) for i in ids),
        f"create returned ids {ids!r}, not ints",
    )
    check(len(set(ids)) == n, f"create returned duplicate ids {ids!r}")
    check(ids == sorted(ids), f"create returned ids that do not increase: {ids!r}")
    return ids


def _expect(
    got: Sequence[TimeoutRecord], runs: Sequence[int], ids: Sequence[int], what: str
) -> None:
    """``got`` holds the seeded timers of runs ``runs`` (1-based), in that order."""
    got_runs = [t.run_id for t in got]
    want_runs = [str(r) for r in runs]
    check(got_runs == want_runs, f"{what} returned the timers of runs {got_runs}, not {want_runs}")
    for t, run in zip(got, runs, strict=True):
        want = {
            "id": ids[run - 1],
            "workflow_name": WF,
            "foreign_id": "andrew",
            "status": 1,
            "completed": False,
            "expire_at": EXPIRED,
            "index": run - 1,
        }
        have = {name: getattr(t, name) for name in want}
        check(have == want, f"{what}: a timer came back as {have!r}, expected {want!r}")
        check(
            t.expire_at.utcoffset() is not None and t.created_at.utcoffset() is not None,
            f"{what}: naive expire_at or created_at in {t!r}",
        )


async def _complete_and_cancel(factory: TimeoutStoreFactory) -> None:
    store = await resolve(factory())
    ids = await _seed(store, 3)
    await store.complete(ids[1])
    await store.cancel(ids[2])
    _expect(await store.list_valid(WF, 1, NOW), [1], ids, "list_valid after complete and cancel")
    _expect(await store.list(WF), [1], ids, "list after complete and cancel")


async def _list(factory: TimeoutStoreFactory) -> None:
    store = await resolve(factory())
    ids = await _seed(store, 3)
    _expect(await store.list(WF), [1, 2, 3], ids, "list")
    _expect(await store.list_valid(WF, 1, NOW), [1, 2, 3], ids, "list_valid")
    more = await store.create(WF, "andrew", "4", 1, EXPIRED)
    check(more > ids[-1], f"ids do not increase: {ids[-1]} then {more}")
    check(await store.list("other") == [], "list returned another workflow's timers")


async def _list_valid(factory: TimeoutStoreFactory) -> None:
    store = await resolve(factory())
    second = timedelta(seconds=1)
    due = await store.create(WF, "due", "due", 2, NOW)
    past = await store.create(WF, "past", "past", 2, NOW - second)
    await store.create(WF, "future", "future", 2, NOW + second)
    await store.create(WF, "tiny", "tiny", 2, NOW + timedelta(microseconds=1))
    await store.create(WF, "status", "status", 3, NOW - second)
    await store.create("other", "other", "other", 2, NOW - second)
    done = await store.create(WF, "done", "done", 2, NOW - second)
    await store.complete(done)
    valid = await store.list_valid(WF, 2, NOW)
    got = [t.run_id for t in valid]
    check("due" in got, f"list_valid missed a timer whose expire_at == now (got {got})")
    check("future" not in got and "tiny" not in got, f"list_valid returned a future timer: {got}")
    check("status" not in got, f"list_valid returned a timer of another status: {got}")
    check("other" not in got, f"list_valid returned another workflow's timer: {got}")
    check("done" not in got, f"list_valid returned a completed timer: {got}")
    check(sorted(got) == ["due", "past"], f"list_valid returned {got}, expected due and past")
    check({t.id for t in valid} == {due, past}, "list_valid returned the wrong timer ids")
    listed = [t.run_id for t in await store.list(WF)]
    check(
        listed == ["due", "past", "future", "tiny", "status"],
        f"list returned {listed}: it must hold every uncompleted timer, in creation order",
    )


async def _cancel_absent(factory: TimeoutStoreFactory) -> None:
    store = await resolve(factory())
    ids = await _seed(store, 2)
    await store.cancel(ids[-1] + 1000)
    _expect(await store.list(WF), [1, 2], ids, "list after cancelling an absent id")
    await store.cancel(ids[0])
    await store.cancel(ids[0])
    _expect(await store.list(WF), [2], ids, "list after cancelling one timer twice")
    await store.complete(ids[1])
    check(await store.list(WF) == [], "list returned a completed timer")
    check(await store.list_valid(WF, 1, NOW) == [], "list_valid returned a completed timer")


async def _cancel_run(factory: TimeoutStoreFactory) -> None:
    store = await resolve(factory())
    gone = [
        await store.create(WF, "andrew", "run-1", 2, NOW, index=0),
        await store.create(WF, "andrew", "run-1", 2, NOW, index=1),
    ]
    kept = [
        await store.create(WF, "andrew", "run-1", 3, NOW),  # another status
        await store.create(WF, "other", "run-2", 2, NOW),  # another run
        await store.create("other", "andrew", "run-1", 2, NOW),  # another workflow
    ]
    await store.cancel_run(WF, "run-1", 2)
    await store.cancel_run(WF, "run-1", 2)  # idempotent
    left = {t.id for t in await store.list(WF)} | {t.id for t in await store.list("other")}
    check(
        left == set(kept) and not left & set(gone),
        f"cancel_run(run-1, status 2) left timers {sorted(left)}; want {sorted(kept)}",
    )


async def _ids_never_reused(factory: TimeoutStoreFactory) -> None:
    """A removed timer's id is never given to a later timer: the timeout process completes or
    cancels the timer it fired by id, after the run's own move may have removed it
    (``cancel_run``); a reused id would make it complete another run's timer, which then
    never fires. Both ways of removing a timer, of the newest timer (SQLite's plain
    ``INTEGER PRIMARY KEY`` hands out ``max(id) + 1``) and of an older one."""
    store = await resolve(factory())
    fast = await store.create(WF, "fast", "run-fast", 1, EXPIRED)
    await store.cancel_run(WF, "run-fast", 1)  # the run left the status while its timer fired
    slow = await store.create(WF, "slow", "run-slow", 1, EXPIRED)  # another run's timer
    check(
        slow != fast,
        f"create gave the id {fast} of a timer removed by cancel_run to a new timer",
    )
    await store.complete(fast)  # the timeout process is done with the timer it fired
    _ids(await store.list(WF), [slow], "list after complete(id of a removed timer)")
    await store.cancel(fast)
    _ids(await store.list(WF), [slow], "list after cancel(id of a removed timer)")

    await store.cancel(slow)
    again = await store.create(WF, "again", "run-again", 1, EXPIRED)
    check(
        again not in (fast, slow),
        f"create gave the id {again} of a cancelled timer to a new timer",
    )
    await store.complete(slow)
    await store.cancel(slow)
    _ids(await store.list(WF), [again], "list after complete and cancel of a cancelled id")

    older = await store.create(WF, "older", "run-older", 1, EXPIRED)
    newest = await store.create(WF, "newest", "run-newest", 1, EXPIRED)
    await store.cancel(older)
    await store.cancel_run(WF, "run-newest", 1)
    later = [await store.create(WF, f"later-{i}", f"run-later-{i}", 1, EXPIRED) for i in range(2)]
    used = {fast, slow, again, older, newest}
    check(
        not used & set(later) and min(later) > max(used),
        f"create gave ids {later} after ids {sorted(used)} were handed out: ids must increase "
        "and never come back",
    )
    await store.complete(older)
    await store.cancel(newest)
    _ids(await store.list(WF), [again, *later], "list after removed ids were used again")


def _ids(got: Sequence[TimeoutRecord], want: Sequence[int], what: str) -> None:
    have = [t.id for t in got]
    check(have == list(want), f"{what} returned timers {have}, expected {list(want)}")


async def run_timeout_store_test(factory: TimeoutStoreFactory) -> None:
    """Check a :class:`~workflow.TimeoutStore`: create, complete, cancel, list and
    ``list_valid`` (a timer is due once ``expire_at <= now``); ids increase and are never
    reused."""
    await run_checks(
        "timeout store",
        [
            ("complete and cancel", lambda: _complete_and_cancel(factory)),
            ("list in creation order", lambda: _list(factory)),
            ("list_valid selects due timers", lambda: _list_valid(factory)),
            ("cancel and complete", lambda: _cancel_absent(factory)),
            ("cancel_run removes a run's timers at a status", lambda: _cancel_run(factory)),
            ("a removed timer's id is never reused", lambda: _ids_never_reused(factory)),
        ],
    )
