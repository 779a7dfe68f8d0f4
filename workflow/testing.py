"""Helpers for testing workflows: a one-call in-memory environment, a fake clock and
event-driven waits.

    env = in_memory(builder)            # fresh memory adapters, a FakeClock
    async with env.wf:
        run_id = await env.wf.trigger("user-1")
        env.clock.step(timedelta(hours=1))

Every helper is ``async`` and takes a ``timeout`` in real seconds (default 10); none of them
sleeps in a loop: they wake when this process stores a record or arms a timer (with a slow
polling fallback for changes made by other processes).
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ._adapters import RecordHistory
from ._builder import Builder
from ._clock import FakeClock
from ._errors import RecordNotFoundError
from ._record import Record
from ._run import Run
from ._usercode import call_user
from ._workflow import Workflow
from .adapters.memory import MemRecordStore, MemRoleScheduler, MemStreamer, MemTimeoutStore

__all__ = [
    "FakeClock",
    "InMemory",
    "await_timeout_insert",
    "in_memory",
    "require",
    "trigger_callback_on",
    "wait_for",
]

T = TypeVar("T")
S = TypeVar("S")
ST = TypeVar("ST", bound=enum.IntEnum)

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class InMemory(Generic[T, ST]):
    """A workflow built on fresh in-memory adapters driven by a :class:`FakeClock`."""

    wf: Workflow[T, ST]
    clock: FakeClock
    store: MemRecordStore
    streamer: MemStreamer
    roles: MemRoleScheduler
    timeout_store: MemTimeoutStore


def in_memory(
    builder: Builder[T, ST], *, clock: FakeClock | None = None, **build_options: Any
) -> InMemory[T, ST]:
    """Build ``builder`` on fresh memory adapters and a :class:`FakeClock` (starting at
    2024-01-01 UTC unless ``clock`` is given). ``build_options`` go to :meth:`Builder.build`
    (``pause_retry=None``, ``default_options=...``, ``metrics_registry=...``). Each call gets
    its own Prometheus registry unless one is given, so tests never share metrics."""
    clock = clock or FakeClock(DEFAULT_START)
    store, streamer = MemRecordStore(), MemStreamer(clock)
    roles, timeouts = MemRoleScheduler(), MemTimeoutStore(clock)
    build_options.setdefault("metrics_registry", CollectorRegistry())
    wf = builder.build(streamer, store, roles, timeout_store=timeouts, clock=clock, **build_options)
    return InMemory(wf, clock, store, streamer, roles, timeouts)


_FALLBACK_POLL = 0.5


async def _wait_until(
    wf: Workflow[Any, Any],
    channel: str,
    check: Callable[[], Awaitable[Any]],
    timeout: float,
    what: str,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        fut = wf._engine.signals.waiter(channel)
        try:
            result = await check()
            if result is not None:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            try:
                await asyncio.wait_for(asyncio.shield(fut), min(remaining, _FALLBACK_POLL))
            except TimeoutError:
                pass
        finally:
            fut.cancel()


async def _versions(wf: Workflow[Any, Any], record: Record) -> list[Record]:
    if not isinstance(wf._engine.store, RecordHistory):
        return [record]
    return await wf._engine.store.history(record.run_id)


async def _find_version(
    wf: Workflow[Any, Any],
    foreign_id: str,
    match: Callable[[Record], Awaitable[bool]],
    timeout: float,
    what: str,
) -> Record:
    async def check() -> Record | None:
        try:
            latest = await wf._engine.store.latest(wf.name, foreign_id)
        except RecordNotFoundError:
            return None
        for version in reversed(await _versions(wf, latest)):
            if await match(version):
                return version
        return None

    found: Record = await _wait_until(wf, f"stored:{wf.name}", check, timeout, what)
    return found


async def wait_for(
    wf: Workflow[T, Any],
    foreign_id: str,
    predicate: Callable[[Run[T, Any]], Any],
    *,
    timeout: float = 10.0,
) -> Run[T, Any]:
    """Wait until some stored version of the latest run of ``foreign_id`` satisfies
    ``predicate(run)`` (plain or async) and return that version."""

    async def match(record: Record) -> bool:
        return bool(await call_user(predicate, wf._engine.new_run(record)))

    record = await _find_version(wf, foreign_id, match, timeout, f"{foreign_id!r} to match")
    return wf._engine.new_run(record)


def _normalise(wf: Workflow[Any, Any], value: Any) -> Any:
    return json.loads(wf._engine.encode(wf._engine.codec.validate(value)))


async def require(
    wf: Workflow[T, Any],
    foreign_id: str,
    status: Any,
    expected_object: T,
    *,
    timeout: float = 10.0,
) -> Run[T, Any]:
    """Wait until the latest run of ``foreign_id`` has been at ``status`` and assert that its
    object there equals ``expected_object`` (compared as stored JSON)."""
    target = int(wf._engine.status(status))

    async def at_status(record: Record) -> bool:
        return record.status == target

    record = await _find_version(
        wf, foreign_id, at_status, timeout, f"{foreign_id!r} to reach {status!r}"
    )
    actual = json.loads(record.object)
    expected = _normalise(wf, expected_object)
    if actual != expected:
        raise AssertionError(
            f"run {record.run_id} at {status!r}: expected object {expected!r}, got {actual!r}"
        )
    return wf._engine.new_run(record)


def _payload(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, BaseModel):
        return payload.model_dump_json().encode()
    return json.dumps(payload).encode()


async def trigger_callback_on(
    wf: Workflow[Any, Any],
    foreign_id: str,
    run_id: str,
    status: Any,
    payload: Any,
    *,
    timeout: float = 10.0,
) -> bool:
    """Wait until run ``run_id`` is at ``status``, then call its callbacks with ``payload``
    (a dict or pydantic model is JSON-encoded; bytes pass through)."""
    await wf.await_(foreign_id, run_id, status, timeout=timeout)
    return await wf.callback(foreign_id, status, _payload(payload))


async def await_timeout_insert(
    wf: Workflow[Any, Any],
    foreign_id: str,
    run_id: str,
    status: Any,
    *,
    timeout: float = 10.0,
) -> None:
    """Wait until a timer is armed for run ``run_id`` at ``status``."""
    store = wf._engine.timeout_store
    if store is None:
        raise ValueError(f"workflow {wf.name!r} was built without a timeout store")
    target = int(wf._engine.status(status))

    async def check() -> bool | None:
        for t in await store.list(wf.name):
            if t.run_id == run_id and t.foreign_id == foreign_id and t.status == target:
                return True
        return None

    await _wait_until(
        wf, f"armed:{wf.name}", check, timeout, f"a timer of run {run_id} at {status!r}"
    )
