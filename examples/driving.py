"""What the composition examples (payment, signup, booking, orders) share: moving their
``FakeClock`` to each retry as soon as it is scheduled, and a run's history as text."""

from __future__ import annotations

import enum
from typing import Any

from workflow import RecordStore, Run, Workflow
from workflow.abc import RecordHistory
from workflow.testing import FakeClock, wait_for


async def retry_scheduled(wf: Workflow[Any, Any], foreign_id: str, n: int) -> Run[Any, Any]:
    """The version of the latest run of ``foreign_id`` that scheduled its attempt ``n``."""

    def scheduled(r: Run[Any, Any]) -> bool:
        return r.meta.attempt == n and r.meta.retry_at is not None

    return await wait_for(wf, foreign_id, scheduled)


async def run_retries(
    wf: Workflow[Any, Any], clock: FakeClock, foreign_id: str, attempts: range
) -> None:
    """For each attempt number in ``attempts`` (2 is the first retry): wait until the latest
    run of ``foreign_id`` has it scheduled, then move the clock to when it is due."""
    for n in attempts:
        due = await retry_scheduled(wf, foreign_id, n)
        assert due.meta.retry_at is not None
        if due.meta.retry_at > clock.now():
            clock.set(due.meta.retry_at)


async def history(store: RecordStore, run_id: str, statuses: type[enum.IntEnum]) -> list[str]:
    """One line per stored version of the run: version, status, run state and reason (or,
    for a failed attempt, when the next one is due)."""
    assert isinstance(store, RecordHistory)  # the memory and SQL stores keep every version
    lines = []
    for r in await store.history(run_id):
        status, state, why = statuses(r.status).name, r.run_state.name, r.meta.run_state_reason
        if r.meta.retry_at is not None:
            why = f"attempt {r.meta.attempt} due at {r.meta.retry_at:%H:%M:%S}"
        lines.append(f"v{r.meta.version} {status:11} {state:9} {why}".rstrip())
    return lines
