"""An event streamer on SQL (SQLite or PostgreSQL): an append-only ``workflow_events`` table and
a durable cursor per (topic, receiver name) in ``workflow_cursors`` (like luno's reflex).

**Order without gaps.** A receiver reads the events of its topic with ``id`` above its
position, in id order, and never looks back. On PostgreSQL, ids come from a sequence and could
become visible out of order: transaction A takes id 10, B takes id 11 and commits first; a
reader that saw 11 would skip 10 for ever. So every insert transaction first takes a
transaction-scoped advisory lock for its topic (``pg_advisory_xact_lock(LOCK_NAMESPACE,
hashtext(topic))``, :data:`adapters._postgres.TOPIC_LOCK`), before the sequence hands out
ids, and holds it until commit: the inserts of one topic commit one at a time and in id order
(different topics still write in parallel). Anything else that writes to the table must do
the same: use :func:`insert_events` (every writer of events goes through the one statement of
:mod:`adapters._statements`). SQLite serialises writers by itself.

**Wake-ups.** A send wakes the waiting receivers of this process at once (through the
notifier every ``SQLStreamer`` on the same engine shares, kept by the engine's
:class:`~adapters._sqlengine.EngineShared`). On PostgreSQL the insert transaction also does
``pg_notify(channel, topic)`` and each ``SQLStreamer`` LISTENs on one connection of its own
(opened lazily by its first waiting receiver), so receivers in other processes (and on other
engines) wake at once too. Polling every ``poll_frequency`` seconds is only the fallback (and
the way SQLite receivers on other engines or in other OS processes learn of new events).

**Acks** are coalesced: a receiver writes its cursor at most every ``ack_interval`` seconds
(a timer writes the last ack of a burst), before it waits for new events (on a busy topic,
whose last read found several, once it has waited :data:`IDLE_FLUSH` for them), and on
``close()``.
A crash may redeliver an acked event (at-least-once); an event that was not acked is always
redelivered, and after ``close()`` a new receiver resumes right after the last acked event.
The cursor only ever holds acked positions and never moves backwards.

**Pruning.** Once every cursor of a topic has passed an event it is deleted: each sender prunes
its topic every ``prune_every`` events (in the background, :data:`PRUNE_CHUNK` rows per
transaction) and :meth:`SQLStreamer.prune` prunes every topic. A
topic nobody has a cursor on is never pruned, and the newest row of the table is always kept
(SQLite would otherwise hand out a deleted id again). A receiver name created after a prune
starts at the oldest event left.

Call :meth:`SQLStreamer.close` (or use ``async with``) when done: it closes the streamer's
receivers and its LISTEN connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from workflow import Event
from workflow.abc import Ack, Clock, RealClock

from . import _statements
from ._lograte import Throttle
from ._postgres import LOCK_NAMESPACE, lock_params
from ._schemacheck import check_schema
from ._sqlengine import TopicHub, shared
from ._sqlsetup import prepare
from ._statements import FETCH_EVENTS, MOVE_CURSOR, PRUNE_TOPIC, EventTuple, event_from, event_rows
from .sqlschema import cursors, events

__all__ = [
    "DEFAULT_CHANNEL",
    "LOCK_NAMESPACE",
    "SQLReceiver",
    "SQLSender",
    "SQLStreamer",
    "insert_events",
]

log = logging.getLogger(__name__)
_throttled = Throttle(log)

IDLE_FLUSH = 0.01
"""Seconds a receiver with an unwritten ack waits for new events before it writes its cursor
(it then waits on as usual): a busy topic's short pauses do not each cost a cursor write."""

PRUNE_CHUNK = 5000
"""Most events one pruning transaction deletes (a sender's prune repeats until done)."""

DEFAULT_CHANNEL = "workflow_events"
"""The PostgreSQL NOTIFY channel; the payload is the topic."""

_MIN_POLL = 0.005


async def insert_events(
    conn: AsyncConnection,
    topic: str,
    batch: Sequence[EventTuple],
    now: datetime,
    *,
    channel: str = DEFAULT_CHANNEL,
    payload: str | None = None,
) -> None:
    """Append ``batch`` to ``topic`` inside the caller's transaction, the way every writer of
    the events table must: on PostgreSQL it takes the topic's insert lock first and NOTIFYs
    ``channel`` (with ``payload``, default the topic) at commit. In-process receivers are not
    woken (:class:`SQLSender` does that)."""
    if not batch:
        return
    db = shared(conn.engine)
    rows = event_rows(topic, batch, now, db.encode_time)
    await _statements.insert_events(conn, rows, lock_params(topic, channel, payload))


def _hub_for(engine: AsyncEngine) -> TopicHub:
    """The wake-ups of this process's receivers on ``engine`` (tests replace it)."""
    return shared(engine).topics


class SQLStreamer:
    """:class:`~workflow.EventStreamer` on the ``workflow_events``/``workflow_cursors`` tables.

    ``clock`` stamps ``Event.created_at`` and cursor updates; ``poll_frequency`` is the
    fallback polling interval of receivers that are not given one; ``batch_size`` rows are
    read per query; acks are written at most every ``ack_interval`` seconds; a sender prunes
    its topic every ``prune_every`` events; ``channel`` is the PostgreSQL NOTIFY channel;
    ``close()``, its receivers' included, gives up after ``close_timeout`` seconds on a
    database that does not answer.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock | None = None,
        poll_frequency: float = 0.5,
        batch_size: int = 500,
        ack_interval: float = 0.05,
        prune_every: int = 1000,
        channel: str = DEFAULT_CHANNEL,
        close_timeout: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._engine = prepare(engine)
        self._clock: Clock = clock or RealClock()
        self._poll = poll_frequency
        self._batch = batch_size
        self._ack_interval = ack_interval
        self._prune_every = prune_every
        self._channel = channel
        self._close_timeout = close_timeout
        self._db = shared(engine)
        self._pg = self._db.postgres
        self._hub = _hub_for(engine)
        self._sent: dict[str, int] = {}
        self._pruning: dict[str, asyncio.Future[None]] = {}
        self._receivers: weakref.WeakSet[SQLReceiver] = weakref.WeakSet()
        self._closed = False
        # PostgreSQL LISTEN connection, opened by the first receiver that waits.
        self._listener: AsyncConnection | None = None
        self._driver: Any = None
        self._dead: list[AsyncConnection] = []
        self._opening: asyncio.Task[None] | None = None
        self._listen_retry_at = 0.0

    # -- EventStreamer -------------------------------------------------------------------

    async def new_sender(self, topic: str) -> SQLSender:
        self._check_open()
        await check_schema(self._engine)
        return SQLSender(self, topic)

    async def new_receiver(
        self,
        topic: str,
        name: str,
        *,
        poll_frequency: float | None = None,
        stream_from_latest: bool = False,
    ) -> SQLReceiver:
        """A receiver on ``topic`` resuming after the last event ``name`` acked. A name
        without a cursor gets one now: after the topic's newest event if
        ``stream_from_latest``, else before its oldest."""
        self._check_open()
        await check_schema(self._engine)
        where = sa.and_(cursors.c.topic == topic, cursors.c.name == name)
        async with self._engine.begin() as conn:
            position = (await conn.execute(sa.select(cursors.c.position).where(where))).scalar()
            if position is None:
                start = 0
                if stream_from_latest:
                    newest = sa.select(sa.func.max(events.c.id)).where(events.c.topic == topic)
                    start = (await conn.execute(newest)).scalar() or 0
                insert = postgresql.insert if self._pg else sqlite.insert
                await conn.execute(
                    insert(cursors)
                    .values(topic=topic, name=name, position=start, updated_at=self._clock.now())
                    .on_conflict_do_nothing()
                )
                position = (await conn.execute(sa.select(cursors.c.position).where(where))).scalar()
        poll = self._poll if poll_frequency is None else poll_frequency
        receiver = SQLReceiver(self, topic, name, int(position or 0), max(poll, _MIN_POLL))
        self._receivers.add(receiver)
        return receiver

    # -- maintenance ---------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete the events that every cursor of their topic has passed, in every topic,
        never the newest row of the table (SQLite would hand its id out again); how many.
        (A sender prunes its own topic with :data:`PRUNE_TOPIC`, in chunks.)"""
        newest = events.alias("newest")
        passed = sa.select(sa.func.min(cursors.c.position)).where(cursors.c.topic == events.c.topic)
        stmt = sa.delete(events).where(
            events.c.id <= passed.scalar_subquery(),
            events.c.id < sa.select(sa.func.max(newest.c.id)).scalar_subquery(),
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount)

    async def close(self) -> None:
        """Close this streamer's open receivers (writing their last acks) and its LISTEN
        connection, within ``close_timeout`` seconds: with the database unreachable, what
        is not done by then is given up (logged; acks not written are deliveries again).
        Idempotent. Senders and receivers cannot be made afterwards."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout

        async def bounded(aw: Any, what: str) -> None:
            task = asyncio.ensure_future(aw)
            done, _ = await asyncio.wait((task,), timeout=max(deadline - loop.time(), 0))
            if not done:
                task.cancel()
                _throttled.warning(
                    f"close {what}",
                    "closing the SQL streamer: gave up %s after close_timeout=%gs (the "
                    "database does not answer)",
                    what,
                    self._close_timeout,
                )
            elif not task.cancelled() and task.exception() is not None:
                log.debug("closing the SQL streamer: %s failed: %r", what, task.exception())

        try:
            for receiver in list(self._receivers):
                await bounded(receiver.close(), "writing a receiver's last ack")
        finally:
            for task in list(self._pruning.values()):  # each ends after its current chunk
                await bounded(asyncio.shield(task), "pruning")
                task.cancel()
            if self._opening is not None:
                await bounded(asyncio.shield(self._opening), "opening the LISTEN connection")
                self._opening.cancel()
            conn, driver = self._listener, self._driver
            self._listener = self._driver = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    driver.remove_termination_listener(self._on_terminated)
                await bounded(driver.remove_listener(self._channel, self._on_notify), "UNLISTEN")
                self._dead.append(conn)
            await bounded(self._discard_dead(), "closing the LISTEN connection")

    aclose = close

    async def __aenter__(self) -> SQLStreamer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- publishing from another writer's transaction (SQLRecordStore(streamer=...)) --------

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def channel(self) -> str:
        """The PostgreSQL NOTIFY channel of this streamer."""
        return self._channel

    def notify_payload(self, topic: str) -> str:
        """The NOTIFY payload for a send that wakes this process's receivers itself (then
        :meth:`published`): their LISTEN connections skip it."""
        return f"{topic}\x1f{self._hub.token}"

    def now(self) -> datetime:
        """``created_at`` for an event appended now (this streamer's clock)."""
        return self._clock.now()

    async def published(self, topic: str, count: int) -> None:
        """Tell the streamer that ``count`` events of ``topic`` were committed by another
        writer through :func:`insert_events`: wakes this process's receivers and counts them
        towards pruning."""
        self._hub.wake(topic)
        await self._count_sent(topic, count)

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("SQLStreamer is closed")

    async def _append(self, topic: str, batch: Sequence[EventTuple]) -> None:
        if not batch:
            return
        try:
            async with self._engine.begin() as conn:
                await insert_events(
                    conn,
                    topic,
                    batch,
                    self._clock.now(),
                    channel=self._channel,
                    payload=self.notify_payload(topic),
                )
        finally:
            self._hub.wake(topic)  # a spurious wake-up (after a failure) costs one query
        await self._count_sent(topic, len(batch))

    async def _count_sent(self, topic: str, count: int) -> None:
        sent = self._sent.get(topic, 0) + count
        self._sent[topic] = 0 if sent >= self._prune_every else sent
        if sent >= self._prune_every and topic not in self._pruning:
            # In the background: the write that counted the send does not wait for it.
            task = asyncio.ensure_future(self._prune_topic(topic))
            self._pruning[topic] = task
            task.add_done_callback(lambda _t: self._pruning.pop(topic, None))

    async def _prune_topic(self, topic: str) -> None:
        """Delete what every cursor of ``topic`` has passed, ``PRUNE_CHUNK`` rows per
        transaction: a large backlog (a cursor that caught up) never holds SQLite's write
        lock for long."""
        try:
            while not self._closed:
                # on the driver: on SQLite a job of the writing thread, which every writer
                # of this engine hands over to at once (no busy handler's sleeps)
                params = {"topic": topic, "limit": PRUNE_CHUNK}
                if await self._db.execute(PRUNE_TOPIC, params) < PRUNE_CHUNK:
                    return
        except Exception as err:  # the events are stored; retried after more sends
            _throttled.warning(f"prune {topic}", "pruning topic %r failed: %r", topic, err)

    async def _fetch(self, topic: str, after: int) -> list[Event]:
        params = {"topic": topic, "after": after, "limit": self._batch}
        return [event_from(r) for r in await self._db.fetch(FETCH_EVENTS, params)]

    async def _write_cursor(self, topic: str, name: str, position: int) -> None:
        params = {
            "topic": topic,
            "name": name,
            "position": position,
            "updated_at": self._db.encode_time(self._clock.now()),
        }
        await self._db.execute(MOVE_CURSOR, params)

    async def _listen(self) -> None:
        """Make sure this streamer LISTENs (PostgreSQL); on failure fall back to polling."""
        if not self._pg or self._listener is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._listen_retry_at:
            return
        if self._opening is None:
            self._opening = loop.create_task(self._open_listener())
        # shielded: a cancelled recv leaves the connection to finish opening for the next one
        await asyncio.shield(self._opening)

    async def _open_listener(self) -> None:
        try:
            await self._discard_dead()
            conn = await self._engine.connect()
            try:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await driver.add_listener(self._channel, self._on_notify)
                driver.add_termination_listener(self._on_terminated)
            except Exception:
                await self._close_quietly(conn)
                raise
            self._listener, self._driver = conn, driver
        except Exception as err:
            _throttled.warning(
                f"listen {self._hub.token}",
                "LISTEN %s failed (%r); polling instead, and trying again",
                self._channel,
                err,
            )
            self._listen_retry_at = asyncio.get_running_loop().time() + max(self._poll, 1.0)
        finally:
            self._opening = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        topic, marked, token = payload.rpartition("\x1f")
        if not marked:
            self._hub.wake(payload)
        elif token != self._hub.token:
            self._hub.wake(topic)

    def _on_terminated(self, _conn: Any) -> None:
        """The LISTEN connection died: reconnect on the next wait, and let every receiver
        look again (notifications may have been lost)."""
        if self._listener is not None:
            self._dead.append(self._listener)
        self._listener = self._driver = None
        self._hub.wake_all()

    async def _discard_dead(self) -> None:
        dead, self._dead = self._dead, []
        for conn in dead:
            await self._close_quietly(conn)

    @staticmethod
    async def _close_quietly(conn: AsyncConnection) -> None:
        # invalidate: a connection that LISTENed is never handed back to the pool
        with contextlib.suppress(Exception):
            await conn.invalidate()
        with contextlib.suppress(Exception):
            await conn.close()


class SQLSender:
    """Appends events to one topic; made by :meth:`SQLStreamer.new_sender`."""

    def __init__(self, streamer: SQLStreamer, topic: str) -> None:
        self._streamer = streamer
        self._topic = topic

    async def send(self, foreign_id: str, status_type: int, headers: dict[str, str]) -> None:
        """Store one event; return once it is committed."""
        await self._streamer._append(self._topic, [(foreign_id, status_type, headers)])

    async def send_many(self, events: list[tuple[str, int, dict[str, str]]]) -> None:
        """Store ``(foreign_id, status_type, headers)`` events in order, in one transaction:
        all of them or none."""
        await self._streamer._append(self._topic, events)

    async def close(self) -> None:
        return None


class SQLReceiver:
    """Reads one topic through the durable cursor ``name``; made by
    :meth:`SQLStreamer.new_receiver`. Not for concurrent ``recv`` calls.

    Database reads and cursor writes run in tasks of their own that a cancelled ``recv`` or
    ``ack`` does not interrupt: their result lands in the receiver for the next call."""

    def __init__(
        self, streamer: SQLStreamer, topic: str, name: str, position: int, poll: float
    ) -> None:
        self._streamer = streamer
        self._topic = topic
        self._name = name
        self._poll = poll
        self._read = position  # newest id fetched into the buffer (runs ahead of the acks)
        self._acked = position  # newest id acked
        self._written = position  # newest id stored in the cursor row
        self._buffer: deque[Event] = deque()
        self._last_write = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._fetching: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None
        self._closed = False
        self._waiting = False
        # the wake-up future taken before the last read, and whether that read was full
        self._since: asyncio.Future[None] | None = None
        self._full = False
        self._busy = False  # the last read found several events: the topic is busy

    async def recv(self) -> tuple[Event, Ack]:
        """The next event of the topic and its ack. Waits (without polling delay for events
        sent through any ``SQLStreamer`` on the same database) until there is one."""
        streamer = self._streamer
        while not self._buffer:
            if self._closed:
                raise RuntimeError("receiver is closed; create a new one with new_receiver()")
            await streamer._listen()
            since, self._since = self._since, None
            if since is not None and not since.done() and not self._full:
                # The last read took every event committed before `since` was taken, and no
                # send has woken it since: wait instead of reading again (an empty read).
                woken = since
            else:
                woken = streamer._hub.waiter(self._topic)
                joined = self._fetching is not None  # left by a cancelled recv: may predate woken
                if self._fetching is None:
                    self._fetching = _task(self._fetch(), "reading", self._topic)
                await asyncio.shield(self._fetching)
                if self._buffer:
                    if not joined:
                        self._since = woken
                    break
                if joined:
                    continue
            if self._acked > self._written and (
                not self._busy
                or asyncio.get_running_loop().time() >= self._last_write + streamer._ack_interval
            ):
                await self._flush()
            self._waiting = True
            try:
                if self._acked > self._written and self._busy:
                    # A busy topic pauses between batches: wait a moment before writing the
                    # cursor, so that under load it is written once per ack_interval, not
                    # once per batch. Idle after that moment: the position is written now.
                    await asyncio.wait((woken,), timeout=min(IDLE_FLUSH, self._poll))
                    if not woken.done() and self._acked > self._written:
                        await self._flush()
                if not woken.done():
                    await asyncio.wait((woken,), timeout=self._poll)
            finally:
                self._waiting = False
        if self._closed:
            raise RuntimeError("receiver is closed; create a new one with new_receiver()")
        event = self._buffer.popleft()
        return event, self._ack_for(event.id)

    def recv_ready(self, limit: int) -> list[tuple[Event, Ack]]:
        """Up to ``limit`` events already read ahead (:class:`~workflow.abc.ReadyReceiver`)."""
        out: list[tuple[Event, Ack]] = []
        buffer = self._buffer
        while buffer and len(out) < limit and not self._closed:
            event = buffer.popleft()
            out.append((event, self._ack_for(event.id)))
        return out

    async def _fetch(self) -> None:
        try:
            fetched = await self._streamer._fetch(self._topic, self._read)
            self._full = len(fetched) >= self._streamer._batch
            self._busy = len(fetched) > 1
            if fetched and not self._closed:
                self._buffer.extend(fetched)
                self._read = fetched[-1].id
        finally:
            self._fetching = None

    def _ack_for(self, event_id: int) -> Ack:
        async def ack() -> None:
            await self._ack(event_id)

        return ack

    async def _ack(self, event_id: int) -> None:
        if event_id <= self._acked:
            return
        self._acked = event_id
        if self._closed:
            await self._flush()
            return
        loop = asyncio.get_running_loop()
        due = self._last_write + self._streamer._ack_interval
        if loop.time() >= due:
            await self._flush()
        elif self._timer is None and self._writing is None:
            self._timer = loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._acked > self._written:
            self._start_write()

    def _start_write(self) -> asyncio.Task[None]:
        if self._writing is None:
            self._writing = _task(
                self._write(), "writing the cursor of", self._topic, logging.WARNING
            )
        return self._writing

    async def _write(self) -> None:
        try:
            while self._acked > self._written:  # acks that came in meanwhile are written too
                target = self._acked
                self._last_write = asyncio.get_running_loop().time()
                await self._streamer._write_cursor(self._topic, self._name, target)
                self._written = max(self._written, target)
        finally:
            self._writing = None

    async def _flush(self) -> None:
        if self._acked > self._written or self._writing is not None:
            await asyncio.shield(self._start_write())

    async def close(self) -> None:
        """Write the last ack and stop. Events received but not acked go to the next receiver
        of this name. Idempotent. Within the streamer's ``close_timeout``: with the database
        unreachable, a read under way is left behind and the last ack given up (logged; the
        events after the cursor are delivered again), so a workflow's ``stop()`` returns."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed = True
        self._streamer._receivers.discard(self)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._streamer._close_timeout
        if self._fetching is not None:
            await asyncio.wait((self._fetching,), timeout=self._streamer._close_timeout)
        self._buffer.clear()
        try:
            await asyncio.wait_for(self._flush(), max(deadline - loop.time(), 0))
        except TimeoutError:
            _throttled.warning(
                f"close {self._topic}",
                "closing the receiver of topic %r: gave up writing its last ack after "
                "close_timeout=%gs (the database does not answer)",
                self._topic,
                self._streamer._close_timeout,
            )


def _task(
    coro: Coroutine[Any, Any, None], doing: str, topic: str, level: int = logging.DEBUG
) -> asyncio.Task[None]:
    """A task whose failure is logged even if nobody is left waiting for it."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _throttled.log(
                f"{doing} {topic}",
                level,
                "%s topic %r failed: %r",
                doing,
                topic,
                task.exception(),
                exc_info=task.exception(),
            )

    task = asyncio.get_running_loop().create_task(coro)
    task.add_done_callback(done)
    return task
