"""Record-store checks for calls made at the same time: a store may send them to its database
together (the SQL store batches concurrent lookups and writes), and each must still get the
answer it would have got alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace

from workflow import (
    ConcurrentUpdateError,
    IdempotencyKeyUsedError,
    Record,
    RecordNotFoundError,
    RunState,
    WorkflowInProgressError,
)
from workflow.abc import RecordHistory

from ._roles import check, resolve
from ._store import RecordStoreFactory, _next, _outbox_size, _record, _same

__all__ = ["concurrency_checks"]

N = 40


async def _answers(calls: list[Awaitable[object]]) -> list[object]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def mixed_writes(factory: RecordStoreFactory) -> None:
    """New runs, updates, a stale update, a second unfinished run of a foreign id, a reused
    idempotency key and a data deletion, all at once: each gets its own answer, and a refused
    write leaves nothing behind (no row, no history, no outbox row)."""
    store = await resolve(factory())
    old = [_record(f"old-{i}") for i in range(N)]
    keyed = replace(_record("keyed"), meta=replace(_record("k").meta, idempotency_key="k1"))
    for r in (*old, keyed):
        await store.store(r)
    moved = [_next(r, RunState.RUNNING, 2) for r in old]
    stale = _next(_next(old[0], RunState.RUNNING, 2), RunState.RUNNING, 3)  # skips version 2
    fresh = [_record(f"new-{i}") for i in range(N)]
    second = _record("old-1")  # old-1 is unfinished
    reused = replace(_record("other"), meta=replace(keyed.meta))  # keyed's idempotency key
    twice = [_record("dup"), _record("dup")]  # two new runs of one foreign id at once
    deleted = replace(
        _next(old[2], RunState.DATA_DELETED, 1), object=b'{"result":"deleted"}'
    )  # old[2] again: its update in `moved` and this one race from version 1
    calls: list[Awaitable[object]] = []
    for r in (*moved[3:], *fresh, stale, second, reused, *twice, moved[1], moved[2], deleted):
        calls.append(store.store(r))
    answers = await _answers(calls)
    names = [
        *(f"moved-{i}" for i in range(3, N)),
        *(f"fresh-{i}" for i in range(N)),
        "stale",
        "second",
        "reused",
        "dup-a",
        "dup-b",
        "moved-1",
        "moved-2",
        "deleted",
    ]
    got = dict(zip(names, answers, strict=True))
    for name, answer in got.items():
        if name.startswith(("moved-", "fresh-")) and name != "moved-2":
            check(answer is None, f"{name}: a good write made with others raised {answer!r}")
    check(
        isinstance(got["stale"], ConcurrentUpdateError),
        f"a stale write made with others gave {got['stale']!r}, want ConcurrentUpdateError",
    )
    check(
        isinstance(got["second"], WorkflowInProgressError),
        f"a second unfinished run made with others gave {got['second']!r}, want "
        "WorkflowInProgressError",
    )
    check(
        isinstance(got["reused"], IdempotencyKeyUsedError),
        f"a reused idempotency key made with others gave {got['reused']!r}, want "
        "IdempotencyKeyUsedError",
    )
    dups = [got["dup-a"], got["dup-b"]]
    check(
        sorted(type(a).__name__ for a in dups) == ["NoneType", "WorkflowInProgressError"],
        f"two new runs of one foreign id at once gave {dups!r}: want one stored and one "
        "WorkflowInProgressError",
    )
    race = [got["moved-2"], got["deleted"]]
    check(
        sorted(type(a).__name__ for a in race) == ["ConcurrentUpdateError", "NoneType"],
        f"two writes of version 2 of one run at once gave {race!r}: want one stored and one "
        "ConcurrentUpdateError",
    )
    for r in (*moved[3:], *fresh, moved[1]):
        _same(await store.lookup(r.run_id), r, "lookup after writes made together")
    winner = moved[2] if got["moved-2"] is None else deleted
    _same(await store.lookup(old[2].run_id), winner, "lookup of the run two writes raced for")
    _same(await store.lookup(old[0].run_id), old[0], "lookup of a run whose stale write failed")
    for r in (second, reused):
        try:
            await store.lookup(r.run_id)
        except RecordNotFoundError:
            continue
        raise AssertionError(f"a refused new run ({r.foreign_id}) was stored")
    written = 1 + N + (N - 3) + N + 1 + 1 + 1  # keyed, old, moved[3:], fresh, dup, moved-1, race
    outbox = await _outbox_size(store)
    check(outbox == written, f"{outbox} outbox rows after {written} accepted writes")
    if isinstance(store, RecordHistory):
        versions = [r.meta.version for r in await store.history(old[0].run_id)]
        check(versions == [1], f"a refused stale write left history versions {versions}")
        kept = await store.history(old[2].run_id)
        check(len(kept) == 2, f"the raced run has {len(kept)} versions in its history, want 2")
        if winner is deleted:
            objects = [json.loads(r.object) for r in kept]
            check(
                all(o == {"result": "deleted"} for o in objects),
                f"the deletion won the race but the history still holds {objects}",
            )


async def many_lookups(factory: RecordStoreFactory) -> None:
    """Lookups at the same time, of runs that exist and of runs that do not, each get their
    own run or ``RecordNotFoundError``, also asking for one run twice."""
    store = await resolve(factory())
    runs = [_record(f"look-{i}") for i in range(N)]
    for r in runs:
        await store.store(r)
    asked = [r.run_id for r in runs] + ["missing-1", runs[0].run_id, "missing-2", "x\x00y"]
    answers = await _answers([store.lookup(i) for i in asked])
    for run, answer in zip(runs, answers, strict=False):
        check(isinstance(answer, Record), f"lookup of {run.run_id} with others gave {answer!r}")
        assert isinstance(answer, Record)
        _same(answer, run, "lookup made with others")
    check(
        isinstance(answers[N + 1], Record) and answers[N + 1] == answers[0],
        "the same run looked up twice at once gave two different answers",
    )
    for i in (N, N + 2, N + 3):
        check(
            isinstance(answers[i], RecordNotFoundError),
            f"lookup of missing run {asked[i]!r} with others gave {answers[i]!r}",
        )


async def lookups_while_writing(factory: RecordStoreFactory) -> None:
    """A lookup made with a write of the same run sees the run either before or after it,
    never a mix: the version and the object go together."""
    store = await resolve(factory())
    runs = [_record(f"rw-{i}") for i in range(N)]
    for r in runs:
        await store.store(r)
    nxt = [_next(r, RunState.RUNNING, 2) for r in runs]
    calls: list[Awaitable[object]] = []
    for r, n in zip(runs, nxt, strict=True):
        calls += [store.store(n), store.lookup(r.run_id)]
    answers = await _answers(calls)
    for i, (r, n) in enumerate(zip(runs, nxt, strict=True)):
        check(answers[2 * i] is None, f"write of {r.run_id} raised {answers[2 * i]!r}")
        seen = answers[2 * i + 1]
        check(isinstance(seen, Record), f"lookup of {r.run_id} raised {seen!r}")
        assert isinstance(seen, Record)
        _same(seen, r if seen.meta.version == 1 else n, "lookup made during a write")


def concurrency_checks(
    factory: RecordStoreFactory,
) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    return [
        ("concurrent writes each get their own answer", lambda: mixed_writes(factory)),
        ("concurrent lookups each get their own answer", lambda: many_lookups(factory)),
        ("lookups made during writes", lambda: lookups_while_writing(factory)),
    ]
