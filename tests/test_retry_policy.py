"""RetryPolicy: validation, the backoff it computes, and build()'s check of ``on_exhausted``."""

from __future__ import annotations

import enum
from datetime import timedelta

import pytest

from workflow import Builder, NonRetryableError, ProcessOptions, RetryPolicy, Run

from .support import Obj, Status, build


def test_the_default_is_lunos_behaviour() -> None:
    p = RetryPolicy()
    assert p.max_attempts is None and p.on_exhausted == "pause"
    assert [p.backoff(n) for n in (1, 2, 50)] == [timedelta(seconds=1)] * 3
    assert not p.exhausted(10_000)


def test_exponential_backoff_is_capped_and_jittered_within_its_fraction() -> None:
    p = RetryPolicy(initial_backoff=1, backoff_coefficient=2, max_backoff=timedelta(seconds=60))
    assert [p.backoff(n).total_seconds() for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert p.backoff(10_000) == timedelta(seconds=60)  # no overflow
    j = RetryPolicy(initial_backoff=10, jitter=0.2)
    waits = {j.backoff(1).total_seconds() for _ in range(200)}
    assert all(8.0 <= w <= 12.0 for w in waits) and len(waits) > 100
    unbounded = RetryPolicy(initial_backoff=1, backoff_coefficient=10)
    assert unbounded.backoff(400) == timedelta(days=3650)  # at most ten years


def test_attempts_run_out_after_max_attempts() -> None:
    p = RetryPolicy(max_attempts=3)
    assert [p.exhausted(n) for n in (1, 2, 3)] == [False, False, True]
    assert RetryPolicy(non_retryable=(KeyError,)).gives_up_on(KeyError("x"))
    assert not RetryPolicy(non_retryable=KeyError).gives_up_on(ValueError("x"))
    assert RetryPolicy().gives_up_on(NonRetryableError("declined"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"max_attempts": 1.5},
        {"initial_backoff": -1},
        {"initial_backoff": "soon"},
        {"backoff_coefficient": 0.5},
        {"backoff_coefficient": float("nan")},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"non_retryable": (KeyError, "ValueError")},
        {"non_retryable": 42},
        {"on_exhausted": "explode"},
    ],
)
def test_bad_policies_are_value_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_with_options_takes_only_a_policy_and_connectors_refuse_one() -> None:
    b = Builder[Obj, Status]("opts")
    with pytest.raises(ValueError, match="RetryPolicy"):
        b.add_step(Status.STARTED, lambda run: Status.DONE, Status.DONE).with_options(
            retry={"max_attempts": 3}  # type: ignore[arg-type]
        )


async def _step(run: Run[Obj, Status]) -> Status:
    return Status.DONE


class Other(enum.IntEnum):
    UNKNOWN = 0
    FAILED = 4


def test_build_checks_that_on_exhausted_is_a_declared_move(clock, registry) -> None:  # type: ignore[no-untyped-def]
    ok = Builder[Obj, Status]("declared")
    ok.add_step(Status.STARTED, _step, Status.DONE, Status.OTHER_END).with_options(
        retry=RetryPolicy(on_exhausted=Status.OTHER_END)
    )
    build(ok, clock, registry)
    undeclared = Builder[Obj, Status]("undeclared")
    undeclared.add_step(Status.STARTED, _step, Status.DONE).with_options(
        retry=RetryPolicy(on_exhausted=Status.OTHER_END)
    )
    with pytest.raises(ValueError, match="not declared"):
        build(undeclared, clock, registry)
    foreign = Builder[Obj, Status]("foreign")
    foreign.add_step(Status.STARTED, _step, Status.DONE)
    with pytest.raises(ValueError, match="not a Status"):
        build(
            foreign,
            clock,
            registry,
            default_options=ProcessOptions(retry=RetryPolicy(on_exhausted=Other.FAILED)),
        )
