"""Sagas: the compensations of the steps a run completed, run newest first when a step's
retry policy gives up with ``on_exhausted="compensate"``.

The run's record carries the saga: ``meta.compensations`` is the stack of the statuses whose
steps (with a declared compensation) the run completed, pushed by ``Engine.apply``;
``meta.compensating`` is set by the give-up. While it is set, the run's versions go to the
workflow's compensation topic (not its status's), so the status's step never sees it; the
compensation consumer pops one compensation per version (each a durable, retried transition
in the history), and the last one moves the run to ``compensate_to`` (COMPLETED). A retry of
a failed compensation is scheduled on the run like a step's and run by the status's retry
process, which hands compensating runs here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._errors import NonRetryableError
from ._options import timeout_seconds
from ._process import Process
from ._record import Record
from ._retry import RetryPolicy
from ._run import Run
from ._runstate import RunState
from ._usercode import call_user, fn_name

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["DEFAULT_COMPENSATION_RETRY", "begin", "compensate", "compensation_policy"]

DEFAULT_COMPENSATION_RETRY = RetryPolicy(
    max_attempts=5,
    initial_backoff=timedelta(seconds=1),
    backoff_coefficient=2.0,
    max_backoff=timedelta(minutes=1),
)
"""A compensation that fails is retried 5 times (1 s, 2 s, 4 s, 8 s apart), then the run is
paused for a person."""


def compensation_policy(eng: Engine[Any, Any], record: Record) -> RetryPolicy:
    """The retry policy of the compensation the run runs next."""
    stack = record.meta.compensations
    cfg = eng.steps.get(stack[-1]) if stack else None
    if cfg is None or cfg.compensation_retry is None:
        return DEFAULT_COMPENSATION_RETRY
    return cfg.compensation_retry


def begin(eng: Engine[Any, Any], record: Record, why: str) -> Record:
    """The version that starts the run's compensations (or, with none to run, ends it at
    the compensated status at once)."""
    if record.meta.compensations:
        return eng.next_version(
            record,
            run_state=RunState.RUNNING,
            reason=f"{why}; compensating",
            attempt=1,
            compensating=True,
        )
    return _compensated(eng, record, f"{why}; nothing to compensate", None)


def _compensated(eng: Engine[Any, Any], record: Record, why: str, obj: bytes | None) -> Record:
    assert eng.compensated is not None  # build() checks
    return eng.next_version(
        record,
        run_state=RunState.COMPLETED,
        status=eng.compensated,
        obj=obj,
        reason=why,
        attempt=1,
        compensations=(),
        compensating=False,
    )


async def compensate(eng: Engine[Any, Any], proc: Process, run: Run[Any, Any]) -> None:
    """Run the newest compensation left and store the version after it."""
    record = run.record
    stack = record.meta.compensations
    if stack:
        top = stack[-1]
        cfg = eng.steps.get(top)
        step = eng.status_name(top)
        if cfg is None or cfg.compensation is None:
            raise NonRetryableError(
                f"the step at {step} has no compensation in this version of workflow "
                f"{eng.name!r}, but the run completed it with one: deploy the compensation "
                "again and resume the run, or move or cancel the run by hand"
            )
        opts = cfg.options.over(eng.defaults)
        await call_user(cfg.compensation, run, timeout=timeout_seconds(opts))
        why = f"compensated the step at {step} ({fn_name(cfg.compensation)})"
        obj = eng.encode(run.object)
        if len(stack) > 1:
            new = eng.next_version(
                record,
                run_state=RunState.RUNNING,
                obj=obj,
                reason=why,
                attempt=1,
                compensations=stack[:-1],
            )
        else:
            new = _compensated(eng, record, why, obj)
    else:
        new = _compensated(eng, record, "compensated", None)
    await eng.write_after(record, new)
