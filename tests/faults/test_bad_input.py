"""Bad input against the public API: every bad value raises a typed error and changes nothing.

Properties are fuzzed with hypothesis on the in-memory adapters (each example builds its own
workflow); the same kinds of bad input run as a fixed list on SQLite and PostgreSQL through the
``backend`` fixture. "Changes nothing" is checked on a snapshot of the record store: every run,
every stored version of it (``history``) and the outbox.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict

from workflow import (
    Builder,
    InvalidTransitionError,
    RecordNotFoundError,
    Run,
    UnableToCancelError,
    UnableToDeleteError,
    UnableToPauseError,
    UnableToResumeError,
    Workflow,
    WorkflowInProgressError,
)
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.adapters.memtimeoutstore import MemTimeoutStore
from workflow.testing import FakeClock, wait_for

from ..backends import Backend

TYPED = (
    ValueError,  # includes pydantic's ValidationError
    RecordNotFoundError,
    InvalidTransitionError,
    UnableToPauseError,
    UnableToResumeError,
    UnableToCancelError,
    UnableToDeleteError,
    WorkflowInProgressError,
)
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    WAITING = 2
    DONE = 3
    OTHER = 4
    UNUSED = 5  # a member of the enum that is no node of the graph


class Foreign(enum.IntEnum):
    SEVEN = 7
    NINE = 9
    NEG = -1


class Obj(BaseModel):
    count: int = 0
    note: str = ""


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int
    ok: bool


NODES = {1, 2, 3, 4}
FROM_STARTED = {int(Status.WAITING)}  # the step's declared transitions
FROM_WAITING = {int(Status.DONE), int(Status.OTHER)}  # the callback's declared transitions


class Holder:
    """What the step / callback returns; set per example."""

    def __init__(self) -> None:
        self.step_result: Any = Status.WAITING
        self.callback_result: Any = None


def builder(h: Holder) -> Builder[Obj, Status]:
    async def step(run: Run[Obj, Status]) -> Any:
        run.object.count += 1
        run.object.note = "changed by the step"
        return h.step_result

    async def cb(run: Run[Obj, Status], data: bytes) -> Any:
        payload = Payload.model_validate_json(data)
        run.object.count += payload.amount
        if h.callback_result is not None:
            return h.callback_result
        return Status.WAITING if run.status is Status.STARTED else Status.DONE

    b = Builder[Obj, Status]("fuzz")
    b.add_step(Status.STARTED, step, Status.WAITING).with_options(err_backoff=timedelta(hours=1))
    b.add_callback(Status.WAITING, cb, Status.DONE, Status.OTHER)
    b.add_callback(Status.STARTED, cb, Status.WAITING)
    return b


def clock() -> FakeClock:
    return FakeClock(datetime(2023, 4, 9, 8, 30, tzinfo=UTC))


def mem_workflow(h: Holder | None = None, **kwargs: Any) -> Workflow[Obj, Status]:
    c = clock()
    return builder(h or Holder()).build(
        MemStreamer(c),
        MemRecordStore(),
        MemRoleScheduler(),
        timeout_store=MemTimeoutStore(c),
        clock=c,
        metrics_registry=CollectorRegistry(),
        **kwargs,
    )


async def snapshot(wf: Workflow[Any, Any]) -> Any:
    """Everything a bad call could have touched: runs, their versions, the outbox."""
    store: Any = wf._engine.store
    records = await store.list("", 0, 10_000, "asc")
    history = {r.run_id: await store.history(r.run_id) for r in records}
    outbox = [(e.id, e.data) for e in await store.list_outbox_events(wf.name, 10_000)]
    return records, history, outbox


async def seeded(wf: Workflow[Obj, Status]) -> tuple[str, str]:
    """A run at STARTED (``a``) and one at WAITING (``b``), neither consumed."""
    a = await wf.trigger("a", initial_value=Obj(note="a"))
    b = await wf.trigger("b", Status.WAITING, initial_value=Obj(note="b"))
    return a, b


async def refused(
    wf: Workflow[Any, Any], call: Callable[[], Awaitable[Any]], *errors: type[BaseException]
) -> BaseException:
    """``call`` raises one of ``errors`` (default: any typed error) and changes nothing."""
    before = await snapshot(wf)
    with pytest.raises(errors or TYPED) as info:
        await call()
    assert await snapshot(wf) == before, f"{info.value!r} left a partial write"
    return info.value


async def raises(call: Callable[[], Awaitable[Any]], *errors: type[BaseException]) -> None:
    """``call`` raises one of ``errors``; the caller compares snapshots around a batch."""
    with pytest.raises(errors or TYPED):
        await call()


# -- strategies ----------------------------------------------------------------------------

not_a_status = st.one_of(
    st.integers().filter(lambda i: i not in NODES),
    st.sampled_from([Status.UNKNOWN, Status.UNUSED, *Foreign]),
    st.text(max_size=20),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.sampled_from([1.0, 2.0, "1", "STARTED", b"\x01", [1], (2,), {"status": 1}]),
)
bad_objects = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.fixed_dictionaries(
        {"count": st.one_of(st.text(alphabet="abc xyz", min_size=1), st.lists(st.none()))}
    ),
    st.fixed_dictionaries({"note": st.one_of(st.integers(), st.lists(st.text(), min_size=1))}),
    st.builds(lambda v: Obj.model_construct(count=v), st.text(min_size=1)),
    st.builds(lambda v: Payload(amount=v, ok=True), st.integers()),
)
id_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=200,
)


# -- statuses outside the enum / the graph ----------------------------------------------------


@FUZZ
@given(bad=not_a_status)
def test_status_outside_the_graph_is_a_value_error(bad: Any) -> None:
    async def body() -> None:
        wf = mem_workflow()
        a, _ = await seeded(wf)
        if bad is not None:  # trigger(fid, None) is the default start
            await refused(wf, lambda bad=bad: wf.trigger("new", bad), ValueError)
        await refused(
            wf, lambda bad=bad: wf.callback("b", bad, b'{"amount": 1, "ok": true}'), ValueError
        )
        await refused(wf, lambda bad=bad: wf.await_("a", a, bad, timeout=0.1), ValueError)

    asyncio.run(body())


@FUZZ
@given(
    bad=st.one_of(not_a_status, st.sampled_from([*Status]).filter(lambda s: s not in FROM_WAITING))
)
def test_callback_returning_an_undeclared_transition_changes_nothing(bad: Any) -> None:
    async def body() -> None:
        h = Holder()
        h.callback_result = bad if bad is not None else Status.STARTED
        wf = mem_workflow(h)
        _, b = await seeded(wf)
        before = await wf._engine.store.history(b)  # type: ignore[attr-defined]
        await refused(
            wf,
            lambda: wf.callback("b", Status.WAITING, b'{"amount": 5, "ok": true}'),
            InvalidTransitionError,
        )
        after = await wf._engine.store.history(b)  # type: ignore[attr-defined]
        assert after == before and len(after) == 1 and after[0].meta.version == 1
        assert (await wf.lookup(b)).object == Obj(note="b")

    asyncio.run(body())


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


async def check_step_refused(wf: Workflow[Obj, Status], log: Captured) -> None:
    async with wf:
        rid = await wf.trigger("s", initial_value=Obj(note="s"))
        first = await wf._engine.store.lookup(rid)
        # the failed attempt schedules the run's retry: nothing else is written
        await wait_for(wf, "s", lambda r: r.meta.retry_at is not None, timeout=10)
    history = await wf._engine.store.history(rid)  # type: ignore[attr-defined]
    assert [(r.status, r.object, r.meta.attempt) for r in history] == [
        (first.status, first.object, 1),
        (first.status, first.object, 2),
    ], "an undeclared transition was stored"
    run = await wf.lookup(rid)
    assert run.status is Status.STARTED and run.object == Obj(note="s")
    assert log.errors and all(isinstance(e, InvalidTransitionError) for e in log.errors), log.errors


def step_workflow(bad: Any, build: Callable[..., Workflow[Obj, Status]]) -> tuple[Any, ...]:
    h = Holder()
    h.step_result = bad
    log = Captured()
    logger = logging.getLogger(f"fuzz.{id(log)}")
    logger.propagate = False
    logger.addHandler(log)
    wf = build(builder(h), logger=logger)
    return wf, log


undeclared_step_results = st.one_of(
    not_a_status.filter(lambda v: v is not None),
    st.sampled_from([s for s in Status if s not in FROM_STARTED]),
)


@settings(max_examples=25, deadline=None)
@given(bad=undeclared_step_results)
def test_step_returning_an_undeclared_transition_changes_nothing(bad: Any) -> None:
    async def body() -> None:
        c = clock()

        def build(b: Builder[Obj, Status], **kw: Any) -> Workflow[Obj, Status]:
            return b.build(
                MemStreamer(c),
                MemRecordStore(),
                MemRoleScheduler(),
                clock=c,
                metrics_registry=CollectorRegistry(),
                **kw,
            )

        await check_step_refused(*step_workflow(bad, build))

    asyncio.run(body())


# -- objects that fail validation ------------------------------------------------------------


@FUZZ
@given(bad=bad_objects)
def test_initial_value_of_the_wrong_shape_is_a_value_error(bad: Any) -> None:
    async def body() -> None:
        wf = mem_workflow()
        await seeded(wf)
        await refused(wf, lambda bad=bad: wf.trigger("new", initial_value=bad), ValueError)
        before = await snapshot(wf)
        with pytest.raises(ValueError):
            wf.schedule("new", "@every 1m", initial_value=bad)
        assert await snapshot(wf) == before

    asyncio.run(body())


# -- callback payloads -------------------------------------------------------------------------

wrong_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
).filter(lambda v: not (isinstance(v, dict) and set(v) == {"amount", "ok"}))
bad_payloads = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    wrong_json.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"{", b'{"amount": 1, "ok": tru', b"\xff\xfe", b"null", b"[]"]),
    st.sampled_from([b'{"amount": "x", "ok": true}', b'{"amount": 1, "ok": true, "x": 1}']),
)


@FUZZ
@given(payload=bad_payloads)
def test_malformed_callback_payload_is_a_validation_error(payload: bytes) -> None:
    async def body() -> None:
        wf = mem_workflow()
        _, b = await seeded(wf)
        await refused(
            wf, lambda payload=payload: wf.callback("b", Status.WAITING, payload), ValueError
        )
        assert (await wf.lookup(b)).meta.version == 1

    asyncio.run(body())


@pytest.mark.parametrize("mb", [1, 5])
@pytest.mark.parametrize("kind", ["random bytes", "extra field", "deep nesting", "huge number"])
def test_oversized_callback_payload_is_refused(mb: int, kind: str) -> None:
    size = mb * 1024 * 1024
    payload = {
        "random bytes": random.Random(mb).randbytes(size),
        "extra field": json.dumps({"amount": 1, "ok": True, "pad": "x" * size}).encode(),
        "deep nesting": b"[" * size,
        "huge number": b'{"amount": ' + b"9" * size + b', "ok": true}',
    }[kind]

    async def body() -> None:
        wf = mem_workflow()
        await seeded(wf)
        await refused(
            wf, lambda payload=payload: wf.callback("b", Status.WAITING, payload), ValueError
        )

    asyncio.run(body())


@pytest.mark.parametrize("payload", [None, 5, 1.5, ["x"], {"amount": 1, "ok": True}, object()])
async def test_callback_payload_of_the_wrong_type_is_a_value_error(payload: Any) -> None:
    wf = mem_workflow()
    await seeded(wf)
    await refused(wf, lambda payload=payload: wf.callback("b", Status.WAITING, payload), ValueError)


# -- cron specs --------------------------------------------------------------------------------

field_atom = st.one_of(
    st.just("*"),
    st.just("?"),
    st.integers(-5, 100).map(str),
    st.tuples(st.integers(0, 80), st.integers(0, 80)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.integers(0, 70).map(lambda n: f"*/{n}"),
    st.lists(st.integers(0, 70).map(str), min_size=2, max_size=3).map(",".join),
    st.sampled_from(["jan", "MON", "sun-sat", "L", "W", "#", "1#2", "5L", "H", "R", "-", ""]),
)
valid_looking = st.lists(field_atom, min_size=5, max_size=5).map(" ".join)
wrong_count = (
    st.lists(st.sampled_from(["*", "0", "1-2", "*/5"]), max_size=9)
    .filter(lambda f: len(f) != 5)
    .map(" ".join)
)
FIELD_LIMITS = (60, 24, 32, 13, 8)  # the first out-of-range number of each field
out_of_range = (
    st.tuples(st.integers(0, 4), st.integers(0, 10**30))
    .map(lambda t: (t[0], FIELD_LIMITS[t[0]] + t[1]))
    .map(lambda t: " ".join(str(t[1]) if i == t[0] else "*" for i in range(5)))
)
every = st.one_of(
    st.text(max_size=15),
    st.tuples(
        st.integers(0, 10**25), st.sampled_from(["ns", "us", "ms", "s", "m", "h", "d", ""])
    ).map(lambda t: f"{t[0]}{t[1]}"),
).map(lambda d: f"@every {d}")
any_spec = st.one_of(st.text(max_size=40), valid_looking, wrong_count, out_of_range, every)


def try_schedule(wf: Workflow[Obj, Status], spec: Any) -> None:
    try:
        wf.schedule("cron", spec)
    except ValueError:
        pass


@settings(max_examples=100, deadline=None)
@given(spec=any_spec)
def test_a_cron_spec_parses_or_is_a_value_error(spec: str) -> None:
    wf = mem_workflow()
    try_schedule(wf, spec)  # anything but ValueError fails the test


@FUZZ
@given(spec=st.one_of(wrong_count, out_of_range))
def test_wrong_field_counts_and_out_of_range_fields_are_value_errors(spec: str) -> None:
    wf = mem_workflow()
    with pytest.raises(ValueError):
        wf.schedule("cron", spec)


@pytest.mark.parametrize("spec", [None, 5, b"* * * * *", ["*"] * 5, 1.5])
def test_a_cron_spec_that_is_no_str_is_a_value_error(spec: Any) -> None:
    wf = mem_workflow()
    with pytest.raises(ValueError):
        wf.schedule("cron", spec)


# -- unknown run ids -----------------------------------------------------------------------------


@FUZZ
@given(run_id=id_text, fid=id_text)
def test_unknown_run_ids_are_record_not_found(run_id: str, fid: str) -> None:
    async def body() -> None:
        wf = mem_workflow()
        a, b = await seeded(wf)
        if run_id in (a, b):
            return
        for call in (
            lambda run_id=run_id: wf.lookup(run_id),
            lambda run_id=run_id: wf.pause(run_id),
            lambda run_id=run_id: wf.resume(run_id),
            lambda run_id=run_id: wf.cancel(run_id),
            lambda run_id=run_id: wf.delete_data(run_id),
            lambda: wf.await_(fid, run_id, Status.DONE, timeout=0.1),
        ):
            await refused(wf, call, RecordNotFoundError)
        if fid not in ("a", "b"):
            await refused(wf, lambda: wf.latest(fid), RecordNotFoundError)
            # the wrong foreign id for a real run
            await refused(
                wf, lambda: wf.await_(fid, a, Status.DONE, timeout=0.1), RecordNotFoundError
            )

    asyncio.run(body())


# -- hostile foreign ids ---------------------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE records; --",
    '" OR 1=1 --',
    "%",
    "_",
    "\\",
    "a'b\"c`d",
    "$1",
    "ünïcödé ✓ \U0001d518 🙂",
    "\u202eRTL\u200b",
    " ",
    "x" * 10_000,
]


async def hostile_round_trip(wf: Workflow[Obj, Status], fid: str) -> None:
    rid = await wf.trigger(fid, initial_value=Obj(note=fid))
    run = await wf.latest(fid)
    assert (run.run_id, run.foreign_id, run.object.note) == (rid, fid, fid)
    assert (await wf.lookup(rid)).foreign_id == fid
    assert await wf.callback(fid, Status.STARTED, b'{"amount": 2, "ok": true}')
    assert (await wf.latest(fid)).status is Status.WAITING
    await raises(lambda: wf.trigger(fid), WorkflowInProgressError)
    assert len(await wf._engine.store.history(rid)) == 2  # type: ignore[attr-defined]
    await wf.cancel(rid, reason=fid)
    assert (await wf.lookup(rid)).meta.run_state_reason == fid


@FUZZ
@given(fid=st.one_of(id_text.filter(bool), st.sampled_from(HOSTILE)))
def test_hostile_foreign_ids_round_trip(fid: str) -> None:
    async def body() -> None:
        wf = mem_workflow()
        a, b = await seeded(wf)
        if fid in ("a", "b"):
            return
        others = [await wf._engine.store.history(r) for r in (a, b)]  # type: ignore[attr-defined]
        await hostile_round_trip(wf, fid)
        assert [await wf._engine.store.history(r) for r in (a, b)] == others  # type: ignore[attr-defined]

    asyncio.run(body())


NUL_IDS = ["\x00", "a\x00b", "run\x00'; --"]


async def check_nul(wf: Workflow[Obj, Status], fid: str) -> None:
    """NUL cannot be stored in PostgreSQL text. The engine refuses it everywhere, the same way:
    a ValueError from trigger, and "no such run" from every read."""
    await refused(wf, lambda: wf.latest(fid), RecordNotFoundError)
    await refused(wf, lambda: wf.lookup(fid), RecordNotFoundError)
    await refused(wf, lambda: wf.cancel(fid), RecordNotFoundError)
    await refused(
        wf,
        lambda: wf.callback(fid, Status.STARTED, b'{"amount": 2, "ok": true}'),
        RecordNotFoundError,
    )
    await refused(wf, lambda: wf.trigger(fid), ValueError)


@pytest.mark.parametrize("fid", ["", None, 5, b"a", ["a"]])
async def test_foreign_id_that_is_no_text_is_a_value_error(fid: Any) -> None:
    wf = mem_workflow()
    await seeded(wf)
    await refused(wf, lambda: wf.trigger(fid), ValueError)
    before = await snapshot(wf)
    with pytest.raises(ValueError):
        wf.schedule(fid, "@every 1m")
    assert await snapshot(wf) == before


# -- run-state misuse ------------------------------------------------------------------------


async def check_run_state_misuse(wf: Workflow[Obj, Status]) -> None:
    a, b = await seeded(wf)
    await refused(wf, lambda: wf.trigger("a"), WorkflowInProgressError)
    await refused(wf, lambda: wf.resume(a), UnableToResumeError)
    await wf.cancel(b)
    for call, err in (
        (lambda: wf.pause(b), UnableToPauseError),
        (lambda: wf.resume(b), UnableToResumeError),
        (lambda: wf.cancel(b), UnableToCancelError),
    ):
        await refused(wf, call, err)
    await wf.delete_data(b)
    await refused(wf, lambda: wf.delete_data(b), UnableToDeleteError)


# -- builder ---------------------------------------------------------------------------------


async def _noop(run: Run[Obj, Status]) -> Status:
    return Status.WAITING


BUILDER_MISUSE: list[Callable[[Builder[Obj, Status]], Any]] = [
    lambda b: b.add_step(Status.UNKNOWN, _noop, Status.WAITING),
    lambda b: b.add_step(Status.STARTED, _noop, Status.UNKNOWN),
    lambda b: b.add_step(Foreign.SEVEN, _noop, Status.WAITING),
    lambda b: b.add_step("STARTED", _noop, Status.WAITING),
    lambda b: b.add_step(None, _noop, Status.WAITING),
    lambda b: b.add_step(True, _noop, Status.WAITING),
    lambda b: b.add_step(1.0, _noop, Status.WAITING),
    lambda b: b.add_step(Status.STARTED, _noop),
    lambda b: b.add_step(Status.STARTED, "not callable", Status.WAITING),
    lambda b: b.add_callback(Status.STARTED, None, Status.WAITING),
    lambda b: b.add_timeout(Status.STARTED, None, _noop, Status.WAITING),
    lambda b: b.add_step(Status.STARTED, _noop, Status.WAITING).with_options(parallel_count=0),
    lambda b: b.add_step(Status.STARTED, _noop, Status.WAITING).with_options(parallel_count=-2),
    lambda b: b.add_step(Status.STARTED, _noop, Status.WAITING).with_options(parallel_count="2"),
    lambda b: b.add_step(Status.STARTED, _noop, Status.WAITING).with_options(err_backoff=-1),
    lambda b: b.add_step(Status.STARTED, _noop, Status.WAITING).with_options(lag="soon"),
    lambda b: b.add_step(Status.STARTED, _noop, Status.WAITING).with_options(
        pause_after_err_count=-1
    ),
    lambda b: b.build(None, MemRecordStore(), MemRoleScheduler()),
    lambda b: b.build(MemStreamer(), MemRecordStore(), MemRoleScheduler(), pause_retry=-1),
]

OPTION_TYPOS: list[Callable[[Builder[Obj, Status]], Any]] = [
    lambda b: b.add_step(Status.STARTED, _noop, Status.WAITING).with_options(bogus=1),
    lambda b: b.build(
        MemStreamer(), MemRecordStore(), MemRoleScheduler(), default_options={"x": 1}
    ),
]


@pytest.mark.parametrize("misuse", BUILDER_MISUSE)
def test_builder_misuse_is_a_value_error(misuse: Callable[[Builder[Obj, Status]], Any]) -> None:
    b = Builder[Obj, Status]("fuzz")
    with pytest.raises(ValueError):
        misuse(b)


@pytest.mark.parametrize("typo", OPTION_TYPOS)
def test_an_unknown_option_is_a_type_error(typo: Callable[[Builder[Obj, Status]], Any]) -> None:
    b = Builder[Obj, Status]("typo")
    b.add_step(Status.WAITING, _noop, Status.STARTED)
    with pytest.raises(TypeError):
        typo(b)


# -- the same bad input on memory, SQLite and PostgreSQL -----------------------------------

SQL_BAD_STATUSES: list[Any] = [0, 5, -1, 2**70, Foreign.SEVEN, "1", None, True, 1.0, float("nan")]
SQL_BAD_OBJECTS: list[Any] = [5, "x", [1], {"count": "abc"}, Obj.model_construct(count="x")]
SQL_BAD_PAYLOADS = [b"", b"\xff", b"{", b"[]", b'{"amount": "x", "ok": 1}', b"x" * 2_000_000]
SQL_UNKNOWN_IDS = ["nope", "", "x" * 10_000, "'; DROP TABLE records; --", "ü🙂", "%"]


async def test_backend_bad_statuses_objects_payloads(backend: Backend) -> None:
    wf = backend.build(builder(Holder()))
    a, _ = await seeded(wf)
    before = await snapshot(wf)
    for bad in SQL_BAD_STATUSES:
        if bad is not None:  # trigger(fid, None) is the default start
            await raises(lambda bad=bad: wf.trigger("new", bad), ValueError)
        await refused(
            wf, lambda bad=bad: wf.callback("b", bad, b'{"amount": 1, "ok": true}'), ValueError
        )
        await raises(lambda bad=bad: wf.await_("a", a, bad, timeout=0.1), ValueError)
    for bad in SQL_BAD_OBJECTS:
        await raises(lambda bad=bad: wf.trigger("new", initial_value=bad), ValueError)
    for payload in SQL_BAD_PAYLOADS:
        await refused(
            wf, lambda payload=payload: wf.callback("b", Status.WAITING, payload), ValueError
        )
    assert await snapshot(wf) == before


async def test_backend_callback_undeclared_transition(backend: Backend) -> None:
    h = Holder()
    wf = backend.build(builder(h))
    await seeded(wf)
    before = await snapshot(wf)
    for bad in [Status.STARTED, Status.WAITING, Status.UNUSED, 99, "DONE", 3.0, True]:
        h.callback_result = bad
        await raises(
            lambda: wf.callback("b", Status.WAITING, b'{"amount": 5, "ok": true}'),
            InvalidTransitionError,
        )
    assert await snapshot(wf) == before


@pytest.mark.parametrize("bad", [Status.DONE, 99, "WAITING"])
async def test_backend_step_undeclared_transition(backend: Backend, bad: Any) -> None:
    await check_step_refused(*step_workflow(bad, backend.build))


async def test_backend_unknown_run_ids(backend: Backend) -> None:
    wf = backend.build(builder(Holder()))
    a, _ = await seeded(wf)
    before = await snapshot(wf)
    for run_id in SQL_UNKNOWN_IDS:
        for call in (
            lambda run_id=run_id: wf.lookup(run_id),
            lambda run_id=run_id: wf.pause(run_id),
            lambda run_id=run_id: wf.resume(run_id),
            lambda run_id=run_id: wf.cancel(run_id),
            lambda run_id=run_id: wf.delete_data(run_id),
            lambda run_id=run_id: wf.await_("a", run_id, Status.DONE, timeout=0.1),
            lambda run_id=run_id: wf.latest(run_id),
        ):
            await raises(call, RecordNotFoundError)
        await raises(
            lambda run_id=run_id: wf.await_(run_id, a, Status.DONE, timeout=0.1),
            RecordNotFoundError,
        )
    assert await snapshot(wf) == before


async def test_backend_hostile_foreign_ids(backend: Backend) -> None:
    wf = backend.build(builder(Holder()))
    await seeded(wf)
    for fid in HOSTILE:
        await hostile_round_trip(wf, fid)
    assert len(await wf.list(limit=100)) == 2 + len(HOSTILE)


@pytest.mark.parametrize("fid", NUL_IDS)
async def test_backend_nul_in_ids_is_refused(backend: Backend, fid: str) -> None:
    wf = backend.build(builder(Holder()))
    await seeded(wf)
    await check_nul(wf, fid)


async def test_backend_run_state_misuse(backend: Backend) -> None:
    await check_run_state_misuse(backend.build(builder(Holder())))


async def test_backend_nul_in_the_object_round_trips_or_is_refused(backend: Backend) -> None:
    """A str field holding NUL is a valid ``Obj``; jsonb cannot hold ``\\u0000``. Either it
    round-trips, or trigger refuses it with a ValueError and stores nothing -- on every back end.
    """
    wf = backend.build(builder(Holder()))
    await seeded(wf)
    before = await snapshot(wf)
    try:
        rid = await wf.trigger("nul", initial_value=Obj(note="a\x00b"))
    except ValueError:
        assert await snapshot(wf) == before
    else:
        assert (await wf.lookup(rid)).object == Obj(note="a\x00b")
