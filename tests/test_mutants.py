"""Behaviour that mutation testing (scripts/mutation.sh, docs/testing.md) found untested: each
test here kills mutants that survived the rest of the suite, and asserts what a user relies on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from workflow import (
    Builder,
    ConnectorEvent,
    InvalidTransitionError,
    OutboxEvent,
    OutboxOptions,
    RealClock,
    Run,
    RunState,
)
from workflow._cron import parse_schedule
from workflow._record import Record, TypedRecord
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock, in_memory

from .support import Obj, Status

T0 = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


async def _noop(run: Run[Obj, Status]) -> Status:
    return Status.DONE


# -- workflow/_record.py -----------------------------------------------------------------


def test_a_connector_event_survives_a_json_round_trip() -> None:
    full = ConnectorEvent("e1", "fid", "created", {"k": "v"}, T0)
    assert ConnectorEvent.from_json(full.to_json()) == full
    bare = ConnectorEvent("e2", "fid2")
    assert ConnectorEvent.from_json(bare.to_json()) == bare
    assert bare.to_json() == (
        '{"id": "e2", "foreign_id": "fid2", "type": "", "headers": {}, "created_at": null}'
    )


def test_a_connector_event_from_json_fills_in_what_is_missing() -> None:
    assert ConnectorEvent.from_json('{"id": "e", "foreign_id": "f"}') == ConnectorEvent("e", "f")
    event = ConnectorEvent.from_json(
        '{"id": "e", "foreign_id": "f", "headers": null, "created_at": "2024-05-06T07:08:09+00:00"}'
    )
    assert event.headers == {}
    assert event.created_at == T0


def test_outbox_events_are_equal_by_content_and_hash_by_id() -> None:
    data = b'{"run_id":"r","type":1,"headers":{}}'
    a = OutboxEvent("1", "wf", data, T0)
    assert a == OutboxEvent("1", "wf", data, T0)
    assert hash(a) == hash(OutboxEvent("1", "wf", b"{}", T0)) == hash("1")
    assert a != OutboxEvent("2", "wf", data, T0)
    assert a != OutboxEvent("1", "other", data, T0)
    assert a != OutboxEvent("1", "wf", data, T0 + timedelta(seconds=1))
    assert a != OutboxEvent("1", "wf", b'{"run_id":"r","type":2,"headers":{}}', T0)
    assert a != "1"
    # an event made from its parts equals the same event read back from its bytes
    parts = OutboxEvent("1", "wf", None, T0, parts=("r", 1, {}))
    assert parts == a
    assert len({a, parts}) == 1


def test_typed_record_repr_names_the_run() -> None:
    record = Record("wf", "fid", "run-1", RunState.RUNNING, 1, b"{}", T0, T0)
    text = repr(TypedRecord(record, Status.STARTED, Obj(count=2)))
    assert text == (
        "TypedRecord(workflow_name='wf', foreign_id='fid', run_id='run-1', "
        f"run_state=RUNNING, status={Status.STARTED!r}, object={Obj(count=2)!r})"
    )


# -- workflow/_graph.py -----------------------------------------------------------------


async def test_an_undeclared_transition_names_the_declared_ones(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    async def wrong(run: Run[Obj, Status], payload: bytes) -> Status:
        return Status.OTHER_END

    b = Builder[Obj, Status]("undeclared")
    b.add_callback(Status.STARTED, wrong, Status.MIDDLE, Status.DONE)
    wf = in_memory(b, clock=clock, metrics_registry=registry).wf
    await wf.trigger("u")
    with pytest.raises(InvalidTransitionError) as err:
        await wf.callback("u", Status.STARTED)
    assert str(err.value).endswith(
        "STARTED -> <Status.OTHER_END: 4> is not a declared transition; "
        "declared: ['MIDDLE', 'DONE']"
    )


# -- workflow/_options.py ----------------------------------------------------------------


def test_outbox_lookup_limit_must_be_at_least_one() -> None:
    assert OutboxOptions(lookup_limit=1).lookup_limit == 1
    with pytest.raises(ValueError) as err:
        OutboxOptions(lookup_limit=0)
    assert str(err.value) == "OutboxOptions.lookup_limit must be at least 1"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("pause_after_err_count", -1, "pause_after_err_count must be a non-negative int, got -1"),
        ("pause_after_err_count", 1.0, "pause_after_err_count must be a non-negative int, got 1.0"),
        ("parallel_count", True, "parallel_count must be a non-negative int, got True"),
        ("concurrency", 0, "concurrency must be at least 1"),
        ("parallel_count", 0, "parallel_count must be at least 1"),
        ("lag", -0.5, "lag must not be negative, got -0.5"),
        ("step_timeout", "1s", "expected a duration (timedelta or seconds), got '1s'"),
        ("err_backoff", True, "expected a duration (timedelta or seconds), got True"),
    ],
)
def test_each_bad_step_option_is_refused_naming_it(
    option: str, value: object, message: str
) -> None:
    handle = Builder[Obj, Status]("options").add_step(Status.STARTED, _noop, Status.DONE)
    with pytest.raises(ValueError) as err:
        handle.with_options(**{option: value})
    assert str(err.value) == message


def test_step_options_at_their_smallest_allowed_values_are_kept() -> None:
    b = Builder[Obj, Status]("options")
    b.add_step(Status.STARTED, _noop, Status.DONE).with_options(
        pause_after_err_count=0, parallel_count=1, concurrency=1, lag=0, step_timeout=0
    )
    wf = b.build(
        MemStreamer(), MemRecordStore(), MemRoleScheduler(), default_options={"lag_alert": 300}
    )
    options = wf._engine.steps[int(Status.STARTED)].options.over(wf._engine.defaults)
    assert options.pause_after_err_count == 0
    assert options.parallel_count == options.concurrency == 1
    assert options.lag == options.step_timeout == timedelta(0)
    # lag 0 is no lag: the alert threshold is the workflow's default, not 30 min + lag
    assert options.lag_alert == timedelta(minutes=5)


def test_a_lag_alert_given_with_a_lag_is_kept() -> None:
    b = Builder[Obj, Status]("options")
    b.add_step(Status.STARTED, _noop, Status.DONE).with_options(lag=3600, lag_alert=60)
    wf = b.build(MemStreamer(), MemRecordStore(), MemRoleScheduler())
    options = wf._engine.steps[int(Status.STARTED)].options
    assert (options.lag, options.lag_alert) == (timedelta(hours=1), timedelta(minutes=1))


# -- workflow/_clock.py ------------------------------------------------------------------


async def test_the_real_clock_sleeps_until_the_deadline() -> None:
    clock = RealClock()
    assert clock.now().tzinfo is UTC
    deadline = clock.now() + timedelta(milliseconds=30)
    await clock.sleep_until(deadline)
    assert clock.now() >= deadline
    # a deadline already passed returns at once, without waiting for anything
    await asyncio.wait_for(clock.sleep_until(clock.now() - timedelta(hours=1)), 1)


async def test_the_fake_clock_steps_by_zero_and_refuses_to_go_back_or_naive_times() -> None:
    clock = FakeClock(T0)
    clock.step(0)  # allowed: time stands still
    assert clock.now() == T0
    with pytest.raises(ValueError) as err:
        clock.step(timedelta(microseconds=-1))
    assert str(err.value) == "FakeClock.step needs a non-negative delta; use set() to go back"
    with pytest.raises(ValueError) as err:
        clock.set(datetime(2024, 1, 1))
    assert str(err.value) == "FakeClock.set needs a timezone-aware datetime"
    with pytest.raises(ValueError, match=r"^FakeClock needs a timezone-aware start"):
        FakeClock(datetime(2024, 1, 1))
    assert clock.now() == T0
    assert FakeClock().now() == datetime(2024, 1, 1, tzinfo=UTC)  # the default start
    # any timezone in, UTC out (Clock.now's promise), whatever the machine's local zone
    clock.set(datetime(2024, 6, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    assert clock.now() == datetime(2024, 6, 1, 10, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
    assert (
        FakeClock(datetime(2024, 6, 1, 12, tzinfo=timezone(timedelta(hours=2)))).now().tzinfo is UTC
    )


async def test_until_waiting_returns_once_a_wait_starts_and_says_what_is_missing() -> None:
    clock = FakeClock(T0)
    sleeper = asyncio.create_task(clock.sleep_until(T0 + timedelta(hours=1)))
    await clock.until_waiting(1, timeout=0.5)  # a short limit is enough: the wait comes at once
    assert clock.waiting == 1
    with pytest.raises(TimeoutError) as err:
        await clock.until_waiting(2, timeout=0)
    assert str(err.value) == "1 waits pending on the clock, wanted 2"
    clock.step(timedelta(hours=1))
    await sleeper


def test_an_outbox_event_without_data_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        OutboxEvent("1", "wf", None, T0)
    assert str(err.value) == "an outbox event needs its data"


# -- workflow/_cron.py -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "@every 5 minutes",
            "invalid @every duration '5 minutes': expected one or more <number><unit> groups "
            "with units ns, us, µs, ms, s, m, h (e.g. '90s', '5m', '1h30m', '1.5h')",
        ),
        (
            "@every 999ns",
            "invalid @every duration '999ns': must be at least 1us "
            "(a positive duration; the smallest supported interval is 1us)",
        ),
    ],
)
def test_a_bad_every_duration_is_refused_with_an_example(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_schedule(spec)
    assert str(err.value) == message


def test_every_rounds_down_to_whole_microseconds() -> None:
    assert parse_schedule("@every 1999ns").interval == timedelta(microseconds=1)
    assert parse_schedule("@every 1.5ms").interval == timedelta(microseconds=1500)


def test_an_every_duration_too_large_for_a_timedelta_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        parse_schedule("@every 99999999999999h")
    assert str(err.value) == "invalid @every duration '99999999999999h': too large"


def test_random_and_hashed_crontab_fields_are_refused() -> None:
    with pytest.raises(ValueError) as err:
        parse_schedule("0 0 * * R")
    assert str(err.value).startswith(
        "invalid crontab spec '0 0 * * R': random (R) and hashed (H) fields are not supported; "
        "expected '@every <duration>'"
    )


def test_a_descriptor_with_arguments_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        parse_schedule("@daily at noon")
    assert str(err.value) == "descriptor @daily takes no arguments, got '@daily at noon'"


def test_an_equal_range_in_a_list_is_its_single_value() -> None:
    schedule = parse_schedule("5-5,7 * * * *")
    assert schedule.next(datetime(2024, 1, 1, tzinfo=UTC)) == datetime(2024, 1, 1, 0, 5, tzinfo=UTC)
    assert schedule.next(datetime(2024, 1, 1, 0, 5, tzinfo=UTC)) == datetime(
        2024, 1, 1, 0, 7, tzinfo=UTC
    )


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # the 1st of the month OR a Monday: Tuesday 2 Jan 2024 -> Monday 8 Jan
    assert parse_schedule("0 0 1 * 1").next(datetime(2024, 1, 2, tzinfo=UTC)) == datetime(
        2024, 1, 8, tzinfo=UTC
    )
    # 30 February never comes, but Mondays in February do: the spec is valid
    assert parse_schedule("0 0 30 2 1").next(datetime(2024, 1, 2, tzinfo=UTC)) == datetime(
        2024, 2, 5, tzinfo=UTC
    )
    # a stepped star is not a restriction: 30 February AND every other weekday never comes
    with pytest.raises(ValueError, match="never matches any date"):
        parse_schedule("0 0 30 2 */2")


class _NoOffset(tzinfo):
    """A tzinfo that does not know its offset: the datetime is naive in all but name."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


def test_next_refuses_a_time_without_an_offset() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_schedule("@every 1h").next(datetime(2024, 1, 1, tzinfo=_NoOffset()))


def test_a_schedule_spec_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        parse_schedule(5)  # type: ignore[arg-type]
    assert str(err.value) == "a schedule spec must be a str, got int"


# -- workflow/_signals.py ----------------------------------------------------------------


class _NoVersionsStore:
    """A record store without the optional ``versions`` capability (all else delegated)."""

    def __init__(self, inner: MemRecordStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "versions":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_await_follows_writes_elsewhere_on_a_store_without_versions(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    async def step(run: Run[Obj, Status]) -> Status:
        return Status.DONE

    def workflow() -> Builder[Obj, Status]:
        b = Builder[Obj, Status]("no versions")
        b.add_step(Status.STARTED, step, Status.DONE)
        return b

    shared = MemRecordStore()
    worker = workflow().build(
        MemStreamer(clock), shared, MemRoleScheduler(), clock=clock, metrics_registry=registry
    )
    waiter = workflow().build(
        MemStreamer(clock),
        _NoVersionsStore(shared),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=CollectorRegistry(),
        default_options={"polling_frequency": 0.05},
    )
    rid = await worker.trigger("v")
    done = asyncio.create_task(waiter.await_("v", rid, Status.DONE, timeout=10))
    async with worker:  # written through the other store object: found by one lookup per poll
        run = await done
    assert run.status is Status.DONE and run.run_id == rid
