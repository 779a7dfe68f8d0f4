"""Clocks: the engine reads time and waits for deadlines only through a :class:`Clock`."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "RealClock", "as_timedelta"]


@runtime_checkable
class Clock(Protocol):
    """Where the engine gets ``now`` and how it waits for a moment in time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep_until(self, deadline: datetime) -> None:
        """Return once ``now() >= deadline`` (at once if it already is). Cancellable."""
        ...


class RealClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, deadline: datetime) -> None:
        delay = (deadline - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


class FakeClock:
    """A clock that moves only when told to: ``step(delta)`` or ``set(dt)``.

    Every wait on it (error backoff, lag, timers, schedules, pause retry) completes as soon as
    time is moved to or past its deadline. Call ``step``/``set`` from the event loop's thread.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2024, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError(
                "FakeClock needs a timezone-aware start, e.g. datetime(..., tzinfo=UTC)"
            )
        self._now = start.astimezone(UTC)
        self._waiters: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._on_wait: list[asyncio.Future[None]] = []

    def now(self) -> datetime:
        return self._now

    def step(self, delta: timedelta | float) -> None:
        """Move time forward by ``delta`` and wake every wait whose deadline has passed."""
        delta = as_timedelta(delta)
        if delta < timedelta(0):
            raise ValueError("FakeClock.step needs a non-negative delta; use set() to go back")
        self.set(self._now + delta)

    def set(self, dt: datetime) -> None:
        """Move time to ``dt`` (timezone-aware) and wake every wait whose deadline has passed."""
        if dt.tzinfo is None:
            raise ValueError("FakeClock.set needs a timezone-aware datetime")
        self._now = dt.astimezone(UTC)
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    async def sleep_until(self, deadline: datetime) -> None:
        if deadline <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (deadline, next(self._seq), fut))
        if self._on_wait:
            watchers, self._on_wait = self._on_wait, []
            for w in watchers:
                if not w.done():
                    w.set_result(None)
        await fut

    @property
    def waiting(self) -> int:
        """How many waits are pending (useful to know a process has gone to sleep)."""
        self._waiters = [w for w in self._waiters if not w[2].done()]
        heapq.heapify(self._waiters)
        return len(self._waiters)

    async def until_waiting(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait (real time, at most ``timeout`` s) until at least ``count`` waits are pending
        on this clock, e.g. a process sleeping through its error backoff. Step the clock
        after this to be sure the wait sees the step."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.waiting < count:
            fut: asyncio.Future[None] = loop.create_future()
            self._on_wait.append(fut)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.waiting} waits pending on the clock, wanted {count}")
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                continue


def as_timedelta(value: timedelta | float | int) -> timedelta:
    """Durations may be given as ``timedelta`` or seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a duration (timedelta or seconds), got {value!r}")
    return timedelta(seconds=value)
