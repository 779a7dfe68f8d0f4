"""An in-memory event streamer and connector for tests and single-process use.

Events are kept per topic; each receiver name has a durable cursor (for the life of the
streamer object). Receivers wait on a future, never spin. Events that every receiver name of
a topic has acknowledged are dropped now and then (like a broker's retention), so a
long-lived streamer does not grow without bound; a receiver name first seen after that starts
at the oldest event kept.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from typing import Generic, TypeVar

from workflow import Clock, ConnectorEvent, Event
from workflow.abc import Ack, RealClock

__all__ = ["MemConnector", "MemStreamer"]


E = TypeVar("E")


_TRIM_EVERY = 4096


class _Log(Generic[E]):
    """An append-only list that wakes its waiters on append. Positions are absolute:
    ``base`` is the position of ``log[0]`` once older items have been trimmed."""

    __slots__ = ("base", "log", "waiters")

    def __init__(self, items: list[E] | None = None) -> None:
        self.log: list[E] = items if items is not None else []
        self.base = 0
        self.waiters: list[asyncio.Future[None]] = []

    @property
    def end(self) -> int:
        return self.base + len(self.log)

    def get(self, position: int) -> E:
        return self.log[position - self.base]

    def trim(self, upto: int) -> None:
        """Drop every item before position ``upto``."""
        if upto > self.base:
            del self.log[: upto - self.base]
            self.base = upto

    def append(self, item: E) -> None:
        self.log.append(item)
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def wait_beyond(self, position: int) -> None:
        while position >= self.end:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()


class MemStreamer:
    """In-memory :class:`~workflow.EventStreamer`. ``clock`` stamps ``Event.created_at``."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or RealClock()
        self._topics: dict[str, _Log[Event]] = {}
        self._cursors: dict[tuple[str, str], int] = {}
        self._names: dict[str, set[str]] = {}
        self._ids = itertools.count(1)

    def _topic(self, name: str) -> _Log[Event]:
        tp = self._topics.get(name)
        if tp is None:
            tp = self._topics[name] = _Log()
        return tp

    async def new_sender(self, topic: str) -> _Sender:
        return _Sender(self, topic)

    async def new_receiver(
        self,
        topic: str,
        name: str,
        *,
        poll_frequency: float | None = None,
        stream_from_latest: bool = False,
    ) -> _Receiver:
        tp = self._topic(topic)
        key = (topic, name)
        if key not in self._cursors:
            self._cursors[key] = tp.end if stream_from_latest else tp.base
            self._names.setdefault(topic, set()).add(name)
        return _Receiver(self, tp, key)

    def _send(self, topic: str, foreign_id: str, status_type: int, headers: dict[str, str]) -> None:
        event = Event(
            id=next(self._ids),
            foreign_id=foreign_id,
            type=status_type,
            headers=dict(headers),
            created_at=self._clock.now(),
        )
        tp = self._topic(topic)
        tp.append(event)
        if tp.end % _TRIM_EVERY == 0:
            names = self._names.get(topic)
            if names:
                tp.trim(min(self._cursors[(topic, n)] for n in names))


class _Sender:
    def __init__(self, streamer: MemStreamer, topic: str) -> None:
        self._streamer = streamer
        self._topic = topic

    async def send(self, foreign_id: str, status_type: int, headers: dict[str, str]) -> None:
        self._streamer._send(self._topic, foreign_id, status_type, headers)

    async def send_many(self, events: list[tuple[str, int, dict[str, str]]]) -> None:
        """Append a batch of events in order."""
        send = self._streamer._send
        for foreign_id, status_type, headers in events:
            send(self._topic, foreign_id, status_type, headers)

    async def close(self) -> None:
        return None


class _Receiver:
    def __init__(self, streamer: MemStreamer, topic: _Log[Event], key: tuple[str, str]) -> None:
        self._streamer = streamer
        self._tp = topic
        self._key = key
        self._pos = streamer._cursors[key]
        self._closed = False

    async def recv(self) -> tuple[Event, Ack]:
        if self._closed:
            raise RuntimeError("receiver is closed; create a new one with new_receiver()")
        await self._tp.wait_beyond(self._pos)
        offset = self._pos
        event = self._tp.get(offset)
        self._pos = offset + 1
        cursors = self._streamer._cursors
        key = self._key

        async def ack() -> None:
            if cursors.get(key, 0) < offset + 1:
                cursors[key] = offset + 1

        return event, ack

    def recv_ready(self, limit: int) -> list[tuple[Event, Ack]]:
        """Up to ``limit`` events already sent (:class:`~workflow.abc.ReadyReceiver`)."""
        out: list[tuple[Event, Ack]] = []
        if self._closed:
            return out
        tp, cursors, key = self._tp, self._streamer._cursors, self._key
        while len(out) < limit and self._pos < tp.end:
            offset = self._pos
            self._pos = offset + 1

            async def ack(offset: int = offset) -> None:
                if cursors.get(key, 0) < offset + 1:
                    cursors[key] = offset + 1

            out.append((tp.get(offset), ack))
        return out

    async def close(self) -> None:
        self._closed = True


class MemConnector:
    """A :class:`~workflow.ConnectorConstructor` that replays ``events`` (and any events
    added later with :meth:`append`); each consumer name keeps its own cursor."""

    def __init__(self, events: Iterable[ConnectorEvent] = ()) -> None:
        self._log: _Log[ConnectorEvent] = _Log(list(events))
        self._cursors: dict[str, int] = {}

    def append(self, event: ConnectorEvent) -> None:
        self._log.append(event)

    async def make(self, name: str) -> _ConnectorConsumer:
        return _ConnectorConsumer(self._log, self._cursors, name)


class _ConnectorConsumer:
    def __init__(self, log: _Log[ConnectorEvent], cursors: dict[str, int], name: str) -> None:
        self._log = log
        self._cursors = cursors
        self._name = name
        self._pos = cursors.get(name, 0)

    async def recv(self) -> tuple[ConnectorEvent, Ack]:
        await self._log.wait_beyond(self._pos)
        offset = self._pos
        self._pos += 1
        cursors, name = self._cursors, self._name

        async def ack() -> None:
            if cursors.get(name, 0) < offset + 1:
                cursors[name] = offset + 1

        return self._log.get(offset), ack

    async def close(self) -> None:
        return None
