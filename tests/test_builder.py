"""Builder declarations and build-time validation: each mistake is a ValueError naming it."""

from __future__ import annotations

import enum
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from workflow import Builder, Run, State, mermaid
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.testing import FakeClock

from .support import Obj, Status, build


async def noop(run: Run[Obj, Status]) -> Status:
    return Status.DONE


def adapters() -> tuple[MemStreamer, MemRecordStore, MemRoleScheduler]:
    return MemStreamer(), MemRecordStore(), MemRoleScheduler()


def test_generic_and_explicit_forms_build_the_same_workflow(registry: CollectorRegistry) -> None:
    a = Builder[Obj, Status]("a")
    a.add_step(Status.STARTED, noop, Status.DONE)
    b = Builder("b", Obj, Status)
    b.add_step(Status.STARTED, noop, Status.DONE)
    wa = a.build(*adapters(), metrics_registry=registry)
    wb = b.build(*adapters(), metrics_registry=registry)
    assert wa._engine.object_type is Obj and wb._engine.object_type is Obj
    assert wa._engine.status_type is Status and wb._engine.status_type is Status
    assert wa._engine.default_start is Status.STARTED


def test_object_type_is_required() -> None:
    b: Builder[Obj, Status] = Builder("untyped")
    b.add_step(Status.STARTED, noop, Status.DONE)
    with pytest.raises(ValueError, match="object type"):
        b.build(*adapters())


def test_second_step_for_a_status_is_refused() -> None:
    b = Builder[Obj, Status]("dup")
    b.add_step(Status.STARTED, noop, Status.DONE)
    with pytest.raises(ValueError, match="already exists"):
        b.add_step(Status.STARTED, noop, Status.MIDDLE)


def test_no_starting_point_is_refused() -> None:
    b = Builder[Obj, Status]("empty")
    with pytest.raises(ValueError, match="at least one starting point"):
        b.build(*adapters())


def test_timeouts_need_a_timeout_store() -> None:
    b = Builder[Obj, Status]("t")
    b.add_timeout(Status.STARTED, lambda r, now: now, noop, Status.DONE)
    with pytest.raises(ValueError, match="timeout store"):
        b.build(*adapters())


@pytest.mark.parametrize("bad", [Status.UNKNOWN, 0, 7, "STARTED", None])
def test_reserved_or_foreign_statuses_are_refused(bad: object) -> None:
    b = Builder[Obj, Status]("s")
    with pytest.raises(ValueError):
        b.add_step(bad, noop, Status.DONE)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        b.add_step(Status.STARTED, noop, bad)  # type: ignore[arg-type]


def test_mixing_status_enums_is_refused() -> None:
    class Other(enum.IntEnum):
        UNKNOWN = 0
        X = 1

    b = Builder[Obj, Status]("mix")
    b.add_step(Status.STARTED, noop, Status.DONE)
    with pytest.raises(ValueError, match="one status enum"):
        b.add_step(Other.X, noop, Status.DONE)  # type: ignore[arg-type]


def test_destinations_are_required() -> None:
    b = Builder[Obj, Status]("nodest")
    with pytest.raises(ValueError, match="destination"):
        b.add_step(Status.STARTED, noop)


def test_options_are_validated() -> None:
    b = Builder[Obj, Status]("opts")
    h = b.add_step(Status.STARTED, noop, Status.DONE)
    with pytest.raises(TypeError, match="parralel_count"):  # a typo fails at the call
        h.with_options(parralel_count=2)  # type: ignore[call-arg]
    typo = Builder[Obj, Status]("typo")
    typo.add_step(Status.STARTED, noop, Status.DONE)
    with pytest.raises(TypeError, match="unknown option"):
        typo.build(MemStreamer(), MemRecordStore(), MemRoleScheduler(), default_options={"lagg": 1})
    with pytest.raises(ValueError, match="parallel_count"):
        h.with_options(parallel_count=0)
    with pytest.raises(ValueError, match="negative"):
        h.with_options(err_backoff=-1)
    t = b.add_timeout(Status.MIDDLE, lambda r, now: now, noop, Status.DONE)
    with pytest.raises(ValueError, match="parallel_count"):
        t.with_options(parallel_count=2)
    with pytest.raises(ValueError, match="lag"):
        t.with_options(lag=timedelta(seconds=5))


def test_options_accept_seconds_and_timedelta_and_lag_raises_lag_alert(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    b = Builder[Obj, Status]("opts2")
    b.add_step(Status.STARTED, noop, Status.MIDDLE).with_options(
        parallel_count=3, err_backoff=2.5, lag=timedelta(hours=1)
    )
    b.add_step(Status.MIDDLE, noop, Status.DONE)
    wf = build(b, clock, registry, default_options={"err_backoff": 7, "pause_after_err_count": 4})
    step = wf._engine.steps[int(Status.STARTED)].options.over(wf._engine.defaults)
    assert step.parallel_count == 3
    assert step.err_backoff == timedelta(seconds=2.5)
    assert step.lag_alert == timedelta(minutes=30) + timedelta(hours=1)
    assert step.pause_after_err_count == 4  # from default_options
    other = wf._engine.steps[int(Status.MIDDLE)].options.over(wf._engine.defaults)
    assert other.err_backoff == timedelta(seconds=7)
    # defaults not named in default_options keep the built-in values (luno bug 9 fixed)
    assert other.polling_frequency == timedelta(milliseconds=500)
    assert other.lag_alert == timedelta(minutes=30)


def test_connector_names_are_unique() -> None:
    from workflow.adapters.memstreamer import MemConnector

    b = Builder[Obj, Status]("conn")
    b.add_step(Status.STARTED, noop, Status.DONE)
    b.add_connector("c", MemConnector(), lambda wf, e: None)
    with pytest.raises(ValueError, match="unique"):
        b.add_connector("c", MemConnector(), lambda wf, e: None)


def test_default_start_is_first_from_status_even_in_a_cycle(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    b = Builder[Obj, Status]("cycle")
    b.add_step(Status.MIDDLE, noop, Status.STARTED, Status.DONE)
    b.add_step(Status.STARTED, noop, Status.MIDDLE)
    wf = build(b, clock, registry)
    assert wf._engine.default_start is Status.MIDDLE


async def test_process_names_match_luno(clock: FakeClock, registry: CollectorRegistry) -> None:
    from workflow.adapters.memstreamer import MemConnector

    b = Builder[Obj, Status]("example")
    b.add_step(Status.STARTED, noop, Status.MIDDLE)
    b.add_step(Status.MIDDLE, noop, Status.DONE).with_options(parallel_count=3)
    b.add_timeout(Status.STARTED, lambda r, now: None, noop, Status.OTHER_END)
    b.add_connector("consume-other-stream", MemConnector(), lambda wf, e: None).with_options(
        parallel_count=2
    )
    b.on_complete(lambda rec: None)
    wf = build(b, clock, registry)
    assert wf.states() == {}
    await wf.run()
    await wf.stop()
    assert wf.states() == {
        "started-consumer-1-of-1": State.SHUTDOWN,
        "middle-consumer-1-of-3": State.SHUTDOWN,
        "middle-consumer-2-of-3": State.SHUTDOWN,
        "middle-consumer-3-of-3": State.SHUTDOWN,
        # not in luno: the retries of each step run apart from its events
        "started-retry-consumer": State.SHUTDOWN,
        "middle-retry-consumer": State.SHUTDOWN,
        "started-timeout-auto-inserter-consumer": State.SHUTDOWN,
        "started-timeout-consumer": State.SHUTDOWN,
        "consume-other-stream-connector-to-example-consumer-1-of-2": State.SHUTDOWN,
        "consume-other-stream-connector-to-example-consumer-2-of-2": State.SHUTDOWN,
        "completed-run-state-change-hook-consumer": State.SHUTDOWN,
        "outbox-consumer": State.SHUTDOWN,
        "delete-consumer": State.SHUTDOWN,
        "paused-records-retry-consumer": State.SHUTDOWN,
    }


async def test_outbox_and_pause_retry_can_be_disabled(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    b = Builder[Obj, Status]("lean")
    b.add_step(Status.STARTED, noop, Status.DONE)
    wf = build(b, clock, registry, outbox=None, pause_retry=None)
    async with wf:
        names = set(wf.states())
    assert "outbox-consumer" not in names
    assert "paused-records-retry-consumer" not in names
    assert "started-consumer-1-of-1" in names


def test_mermaid_diagram(clock: FakeClock, registry: CollectorRegistry) -> None:
    b = Builder[Obj, Status]("diagram me")
    b.add_step(Status.STARTED, noop, Status.MIDDLE, Status.OTHER_END)
    b.add_step(Status.MIDDLE, noop, Status.DONE)
    text = mermaid(build(b, clock, registry))
    assert text.startswith("---\ntitle: Workflow diagram of diagram me\n---\nstateDiagram-v2\n")
    for line in (
        "\t1: Started",
        "\t2: Middle",
        "\t3: Done",
        "\t4: Other End",
        "\t[*] --> 1",
        "\t1 --> 2",
        "\t1 --> 4",
        "\t2 --> 3",
        "\t3 --> [*]",
        "\t4 --> [*]",
    ):
        assert line in text.splitlines()
    assert "\t2 --> [*]" not in text
    with pytest.raises(ValueError):
        mermaid(object())


# -- every ValueError of workflow/_builder.py -------------------------------------------------


def test_duration_timer_refuses_a_negative_duration() -> None:
    from workflow import duration_timer

    with pytest.raises(ValueError, match="non-negative duration"):
        duration_timer(timedelta(seconds=-1))


def test_timeouts_refuse_concurrency() -> None:
    b = Builder[Obj, Status]("t")
    t = b.add_timeout(Status.STARTED, lambda r, now: now, noop, Status.DONE)
    with pytest.raises(ValueError, match="cannot be configured with concurrency"):
        t.with_options(concurrency=2)
    t.with_options(err_backoff=5)  # other options are fine


@pytest.mark.parametrize("name", ["", "   ", None])
def test_a_workflow_needs_a_name(name: object) -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        Builder(name, Obj, Status)  # type: ignore[arg-type]


def test_the_status_type_must_be_an_int_enum() -> None:
    class Plain(enum.Enum):
        A = 1

    with pytest.raises(ValueError, match=r"must be an enum\.IntEnum"):
        Builder("bad", Obj, Plain)  # type: ignore[type-var]


def test_status_zero_is_reserved() -> None:
    b = Builder[Obj, Status]("zero")
    with pytest.raises(ValueError, match="reserved for 'unknown'"):
        b.add_step(Status.UNKNOWN, noop, Status.DONE)


def test_functions_must_be_callable() -> None:
    b = Builder[Obj, Status]("calls")
    with pytest.raises(ValueError, match="a step function must be callable"):
        b.add_step(Status.STARTED, "noop", Status.DONE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a hook must be callable"):
        b.on_complete(42)  # type: ignore[arg-type]
    b.add_step(Status.STARTED, noop, Status.DONE)
    with pytest.raises(ValueError, match="custom_delete must be callable"):
        b.build(*adapters(), custom_delete="redact")  # type: ignore[arg-type]


def test_connectors_need_a_name_and_a_constructor() -> None:
    from workflow.adapters.memstreamer import MemConnector

    b = Builder[Obj, Status]("conn")
    b.add_step(Status.STARTED, noop, Status.DONE)
    with pytest.raises(ValueError, match="non-empty name"):
        b.add_connector("", MemConnector(), lambda wf, e: None)
    with pytest.raises(ValueError, match="needs an async make"):
        b.add_connector("c", object(), lambda wf, e: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_build_needs_every_adapter(missing: int) -> None:
    b = Builder[Obj, Status]("adapters")
    b.add_step(Status.STARTED, noop, Status.DONE)
    given: list[object] = list(adapters())
    given[missing] = None
    what = ("event_streamer", "record_store", "role_scheduler")[missing]
    with pytest.raises(ValueError, match=f"build\\(\\) needs a {what}"):
        b.build(*given)  # type: ignore[arg-type]


@pytest.mark.parametrize("retry", [0, -1, timedelta(0)])
def test_pause_retry_must_be_positive(retry: object) -> None:
    b = Builder[Obj, Status]("retry")
    b.add_step(Status.STARTED, noop, Status.DONE)
    with pytest.raises(ValueError, match="pause_retry must be positive"):
        b.build(*adapters(), pause_retry=retry)  # type: ignore[arg-type]


def test_build_takes_a_snapshot_of_the_builder(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    """Changing the builder after build() (options, steps, callbacks, timeouts) changes
    nothing in the built workflow."""
    b = Builder[Obj, Status]("snapshot")
    h = b.add_step(Status.STARTED, noop, Status.MIDDLE).with_options(err_backoff=3)
    t = b.add_timeout(Status.MIDDLE, lambda r, now: now, noop, Status.DONE)
    wf = build(b, clock, registry)
    h.with_options(err_backoff=9, concurrency=4)
    t.with_options(err_backoff=9)
    b.add_step(Status.MIDDLE, noop, Status.OTHER_END)
    b.add_callback(Status.STARTED, noop, Status.DONE)
    b.add_timeout(Status.MIDDLE, lambda r, now: now, noop, Status.DONE)
    assert wf._engine.steps[int(Status.STARTED)].options.err_backoff == timedelta(seconds=3)
    assert wf._engine.steps[int(Status.STARTED)].options.concurrency is None
    assert wf._engine.timeouts[int(Status.MIDDLE)].options.err_backoff is None
    assert len(wf._engine.timeouts[int(Status.MIDDLE)].pairs) == 1
    assert int(Status.MIDDLE) not in wf._engine.steps
    assert wf._engine.callbacks == {}
    assert not wf._engine.graph.is_node(int(Status.OTHER_END))
    assert not wf._engine.graph.allowed(int(Status.STARTED), int(Status.DONE))
