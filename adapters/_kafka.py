"""Machinery shared by the Kafka adapters (:mod:`adapters.kafkastreamer`): routing of aiokafka
options to the producer, consumers and admin client, topic creation, and
:class:`OrderedReader`, a consumer on every partition of one topic whose acks commit offsets
in order.

**Why partitions are assigned, not subscribed.** A reader's consumer has ``group_id`` set to
the receiver (or connector) name, so its offsets are stored and read under that group, but it
takes every partition with ``assign()`` instead of joining the group with ``subscribe()``. The
engine already lets only one holder of a role (its receiver name) run at a time through its
:class:`~workflow.RoleScheduler`, so a Kafka group rebalance would add nothing but a join delay
(≈ ``session_timeout_ms / 2`` on every start on some brokers) and revoked-partition handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError, for_code  # type: ignore[import-untyped]

from workflow import WorkflowError
from workflow.abc import Ack

__all__ = [
    "KafkaTopicLostError",
    "OrderedReader",
    "TopicMaker",
    "created_at",
    "decode_headers",
    "finish",
    "limit_aiokafka_logs",
    "open_reader",
    "uncancelled",
    "route_options",
]

log = logging.getLogger("adapters.kafkastreamer")
T = TypeVar("T")

CLOSE_TIMEOUT = 2.0
"""Default seconds a closing reader waits for its last offset commit (or a cancelled opening
for its broker requests) before it gives up on them: see :meth:`OrderedReader.close`."""


PROBE_EVERY = 5.0
MISSING_FOR = 3.0
"""Seconds a topic (or some of its partitions) must stay missing from the consumer's metadata
before it counts as lost: a metadata refresh can miss a topic for a moment (Tansu does,
right after another client created a topic), and a false loss restarts the receiver."""
"""Seconds between two checks of a reader's committed offsets against the broker's (see
:class:`OrderedReader`)."""


class KafkaTopicLostError(WorkflowError):
    """A topic a reader was reading vanished from the cluster (deleted, or the broker lost its
    data) or was re-created under it. The reader is closed; a new one starts at the beginning
    of the topic as it is now."""


class _RepeatFilter(logging.Filter):
    """Lets one record of each (logger, message template, level) through per ``every``
    seconds; the next one that passes says how many were dropped meanwhile. aiokafka logs
    each failed connection attempt, metadata refresh and commit retry (ten a second per
    client while a broker is down)."""

    def __init__(self, every: float) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple[str, str, int], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg), record.levelno)
        now = time.monotonic()
        if len(self._last) > 1000:  # messages formatted in place would each be a template
            self._last.clear()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.every:
            self._last[key] = (last[0], last[1] + 1)
            return False
        self._last[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.msg} [{last[1]} similar aiokafka lines dropped]"
        return True


_AIOKAFKA_FILTER: _RepeatFilter | None = None
_LIMIT_CHOSEN = False


def limit_aiokafka_logs(every: float | None = 30.0) -> None:
    """Rate-limit aiokafka's warnings and errors: one line per message template and logger
    every ``every`` seconds (``None``: remove the limit). The Kafka adapters call this with
    the default when the first streamer or connector is made; call it yourself to change or
    remove it (a later call wins)."""
    global _AIOKAFKA_FILTER, _LIMIT_CHOSEN
    _LIMIT_CHOSEN = True
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "aiokafka"]
    loggers = [logging.getLogger(n) for n in sorted({"aiokafka", *names})]
    if _AIOKAFKA_FILTER is not None:
        for logger in loggers:
            logger.removeFilter(_AIOKAFKA_FILTER)
        _AIOKAFKA_FILTER = None
    if every is not None:
        _AIOKAFKA_FILTER = _RepeatFilter(every)
        for logger in loggers:
            logger.addFilter(_AIOKAFKA_FILTER)


def default_aiokafka_log_limit() -> None:
    """Apply :func:`limit_aiokafka_logs` unless it was called already."""
    if not _LIMIT_CHOSEN:
        limit_aiokafka_logs()


_RESERVED = {"loop", "bootstrap_servers", "topics", "group_id", "enable_auto_commit"}


def _accepted(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls).parameters) - _RESERVED


PRODUCER_KEYS = _accepted(AIOKafkaProducer)
CONSUMER_KEYS = _accepted(AIOKafkaConsumer)
ADMIN_KEYS = _accepted(AIOKafkaAdminClient)


async def uncancelled(call: Awaitable[T]) -> T:
    """Await an aiokafka call to its end even if the caller is cancelled meanwhile, then
    re-raise that cancellation (the call's result is dropped). aiokafka does not survive
    being cancelled half way through opening a broker connection (in ``start()``, a metadata
    or offsets request, ``stop()``): the half-open connection is never closed and is
    reported as a ResourceWarning when collected. So this adapter never cancels one."""
    task = asyncio.ensure_future(call)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the caller is gone
        raise asyncio.CancelledError
    return task.result()


async def finish(cleanup: Awaitable[Any]) -> None:
    """Run a ``stop()``/``close()`` to its end (see :func:`uncancelled`); a failure is
    logged, not raised."""
    try:
        await uncancelled(cleanup)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.warning("stopping a Kafka client failed", exc_info=True)


async def _stop_quietly(cleanup: Awaitable[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await finish(cleanup)


def route_options(
    common: Mapping[str, Any],
    *,
    producer: Mapping[str, Any] | None = None,
    consumer: Mapping[str, Any] | None = None,
    admin: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split ``common`` aiokafka options into (producer, consumer, admin) keyword arguments:
    each goes to every client whose constructor takes it. The specific dicts are added
    unfiltered on top. An option no client takes, or a reserved one, raises ``TypeError``."""
    for key in common:
        if key in _RESERVED:
            raise TypeError(f"{key!r} is set by the Kafka adapter and cannot be passed")
        if key not in PRODUCER_KEYS | CONSUMER_KEYS | ADMIN_KEYS:
            raise TypeError(f"unknown aiokafka option {key!r}")
    out = []
    for keys, extra in ((PRODUCER_KEYS, producer), (CONSUMER_KEYS, consumer), (ADMIN_KEYS, admin)):
        picked = {k: v for k, v in common.items() if k in keys}
        for key in extra or {}:
            if key in _RESERVED:
                raise TypeError(f"{key!r} is set by the Kafka adapter and cannot be passed")
        picked.update(extra or {})
        out.append(picked)
    return out[0], out[1], out[2]


class TopicMaker:
    """Creates topics on first use with an admin client (started lazily); an existing topic
    is left as it is."""

    def __init__(
        self, bootstrap_servers: str | list[str], options: dict[str, Any], partitions: int, rf: int
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._options = options
        self._partitions = partitions
        self._rf = rf
        self._admin: AIOKafkaAdminClient | None = None
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()

    async def ensure(self, topic: str) -> None:
        fut = self._ready.get(topic)
        if fut is None or (fut.done() and fut.exception() is not None):
            fut = self._ready[topic] = asyncio.ensure_future(self._create(topic))
        await asyncio.shield(fut)

    def forget(self, topic: str) -> None:
        """The topic may be gone: the next :meth:`ensure` creates it again."""
        fut = self._ready.get(topic)
        if fut is not None and fut.done():
            del self._ready[topic]

    async def _create(self, topic: str) -> None:
        async with self._lock:
            if self._admin is None:
                admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, **self._options)
                try:
                    await admin.start()
                except BaseException:
                    await _stop_quietly(admin.close())
                    raise
                self._admin = admin
            admin = self._admin
        response = await admin.create_topics([NewTopic(topic, self._partitions, self._rf)])
        for name, code, message in (e[:3] for e in response.topic_errors):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise for_code(code)(f"creating topic {name!r}: {message}")

    async def close(self) -> None:
        pending = [fut for fut in self._ready.values() if not fut.done()]
        self._ready.clear()
        if pending:  # not cancelled: see uncancelled()
            await finish(asyncio.gather(*pending, return_exceptions=True))
        admin, self._admin = self._admin, None
        if admin is not None:
            await finish(admin.close())


def created_at(record: ConsumerRecord[bytes, bytes]) -> datetime:
    """The record's Kafka timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)


def decode_headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}


async def open_reader(
    topic: str,
    name: str,
    partitions: list[int] | None,
    *,
    bootstrap_servers: str | list[str],
    options: dict[str, Any],
    stream_from_latest: bool,
    poll: float,
    close_timeout: float = CLOSE_TIMEOUT,
    restart: bool = False,
    on_lost: Callable[[str, str, str], None] | None = None,
) -> OrderedReader:
    """Start a consumer of group ``name`` on every partition of ``topic`` (``None``: read them
    from the cluster's metadata) at the group's committed offsets. A group without any
    committed offset on the topic starts at the beginning offsets, or at the end offsets with
    ``stream_from_latest``; they are committed before this returns. ``restart``: start at the
    beginning offsets whatever the group committed (the topic was re-created).

    If the caller is cancelled meanwhile, the opening still runs (see :func:`uncancelled`),
    for up to ``close_timeout`` seconds; then the consumer is stopped under it (its broker
    requests retry for as long as the broker is unreachable) and the cancellation re-raised.
    ``on_lost(topic, name, reason)`` is called when the reader finds its topic gone (see
    :class:`OrderedReader`)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=name,
        enable_auto_commit=False,
        **{"auto_offset_reset": "earliest", **options},
    )
    opening = asyncio.ensure_future(
        _open(consumer, topic, partitions, stream_from_latest=stream_from_latest, restart=restart)
    )
    try:
        committed = await asyncio.shield(opening)
    except asyncio.CancelledError:
        try:
            if not await _within(opening, close_timeout):
                log.warning(
                    "Kafka consumer %r of topic %r did not finish opening within %.1f s of "
                    "being stopped (broker unreachable?): abandoned",
                    name,
                    topic,
                    close_timeout,
                )
        finally:
            await _shut(consumer, [opening])
        raise
    except BaseException:
        await _shut(consumer, [])
        raise
    return OrderedReader(
        consumer,
        topic,
        name,
        poll,
        committed=committed,
        close_timeout=close_timeout,
        on_lost=on_lost,
    )


async def _open(
    consumer: AIOKafkaConsumer,
    topic: str,
    partitions: list[int] | None,
    *,
    stream_from_latest: bool,
    restart: bool,
) -> dict[int, int]:
    """Start, assign and position ``consumer``; return the committed offset of each
    partition."""
    await consumer.start()  # inside: a failed start must still stop it (open_reader does)
    if partitions is None:
        await consumer.topics()  # refresh the metadata
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise LookupError(f"Kafka topic {topic!r} does not exist")
        partitions = sorted(found)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    # Every partition gets a committed offset now, so the group's cursor exists from here
    # on, like a cursor row: a brand-new group starts at the end offsets with
    # stream_from_latest, otherwise (or if the group has offsets on other partitions) at the
    # beginning.
    committed: dict[int, int] = {}
    fresh = []
    for tp in tps:
        offset = None if restart else await consumer.committed(tp)
        if offset is None:
            fresh.append(tp)
        else:
            committed[tp.partition] = offset
    if fresh:
        if stream_from_latest and len(fresh) == len(tps) and not restart:
            start = await consumer.end_offsets(fresh)
        else:
            start = await consumer.beginning_offsets(fresh)
        await consumer.commit({tp: start[tp] for tp in fresh})
        for tp in fresh:
            consumer.seek(tp, start[tp])
            committed[tp.partition] = start[tp]
    return committed


async def _within(task: asyncio.Future[Any], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``task`` without ever cancelling it, even when the
    caller is cancelled meanwhile (the cancellation is re-raised afterwards). True once
    done."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    cancelled = False
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            await asyncio.wait((task,), timeout=remaining)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        _leave(task)
        raise asyncio.CancelledError
    return task.done()


def _leave(task: asyncio.Future[Any]) -> None:
    """Retrieve ``task``'s outcome once it has one (nobody else will)."""

    def retrieve(t: asyncio.Future[Any]) -> None:
        if not t.cancelled():
            t.exception()

    task.add_done_callback(retrieve)


async def _shut(consumer: AIOKafkaConsumer, leftovers: list[asyncio.Future[Any]]) -> None:
    """Stop ``consumer``, also when calls on it are still running (``leftovers``: a commit
    or an opening retrying while the broker is unreachable, which aiokafka does for ever).
    The group coordinator is marked dead first so no leftover opens a connection to it
    again; stopping the consumer ends aiokafka's coordinator lookups and closes its
    connections; the leftovers, now only waiting out aiokafka's retry backoff, are then
    cancelled. Runs to its end even if the caller is cancelled (re-raised afterwards)."""
    pending = [t for t in leftovers if not t.done()]
    coordinator = getattr(consumer, "_coordinator", None)
    if pending and coordinator is not None:
        coordinator.coordinator_dead()
    cancelled = False
    try:
        await finish(consumer.stop())
    except asyncio.CancelledError:
        cancelled = True
    for task in pending:
        task.cancel()
        _leave(task)
    if pending:
        try:
            await uncancelled(asyncio.wait(pending))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


class OrderedReader:
    """Hands out the records of its partitions in order and commits, per partition, the
    offset after the longest prefix of delivered records that are all acked. Commits run in
    the background, coalescing the acks that come in meanwhile; :meth:`close` writes the
    last of them. Records delivered but not acked go to the next reader of the group.

    **A lost topic.** When the topic disappears from the consumer's metadata after it was
    seen there (deleted, or the broker lost its data), or a partition's offsets restart below
    what was already delivered (the topic was re-created under the reader), ``next()`` calls
    ``on_lost(topic, group, reason)`` and raises :class:`KafkaTopicLostError`; the reader is then
    only good for :meth:`close`, which drops its pending commits (offsets of a topic that is
    gone mean nothing)."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        group: str,
        poll: float,
        *,
        committed: dict[int, int],
        close_timeout: float = CLOSE_TIMEOUT,
        on_lost: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._group = group
        self._partitions = frozenset(committed)
        self._timeout_ms = max(int(poll * 1000), 1)
        self._close_timeout = close_timeout
        self._on_lost = on_lost
        self._buffer: deque[ConsumerRecord[bytes, bytes]] = deque()
        self._delivered: dict[int, deque[int]] = {}  # partition -> offsets not yet committable
        self._acked: dict[int, set[int]] = {}
        self._done: dict[int, int] = {}  # partition -> offset to commit
        self._committed = dict(committed)  # what the broker has, as far as this reader knows
        self._next_offset: dict[int, int] = {}  # partition -> offset after the last delivered
        self._committing: asyncio.Task[None] | None = None
        self._seen = False  # the topic was in the consumer's metadata
        self._missing_since: float | None = None
        self._probing: asyncio.Task[None] | None = None
        self._probe_at = time.monotonic() + PROBE_EVERY
        self._lost: str | None = None
        self._closed = False

    async def next(self) -> ConsumerRecord[bytes, bytes]:
        while not self._buffer:
            self._check()
            batch = await self._consumer.getmany(timeout_ms=self._timeout_ms)
            self._check()
            for records in batch.values():
                self._buffer.extend(records)
        return self._take()

    def next_ready(self) -> ConsumerRecord[bytes, bytes] | None:
        """The next record if it is already fetched, without waiting; else None."""
        if not self._buffer or self._closed or self._lost is not None:
            return None
        return self._take()

    def _take(self) -> ConsumerRecord[bytes, bytes]:
        record = self._buffer[0]
        expected = self._next_offset.get(record.partition)
        if expected is not None and record.offset < expected:
            self._lose(
                f"partition {record.partition} went back from offset {expected - 1} to "
                f"{record.offset}: the topic was re-created"
            )
        self._buffer.popleft()
        self._next_offset[record.partition] = record.offset + 1
        self._delivered.setdefault(record.partition, deque()).append(record.offset)
        return record

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("Kafka receiver is closed; make a new one")
        if self._lost is not None:
            raise KafkaTopicLostError(self._lost)
        found = self._consumer.partitions_for_topic(self._topic)
        if found and self._partitions <= found:
            self._seen = True
            self._missing_since = None
        elif found or self._seen:
            self._seen = True
            now = time.monotonic()
            if self._missing_since is None:
                self._missing_since = now
            elif now - self._missing_since >= MISSING_FOR:
                if found:
                    missing = sorted(self._partitions - found)
                    self._lose(f"its partitions {missing} are gone from the cluster")
                self._lose("it is gone from the cluster (deleted, or the broker lost its data)")
        if time.monotonic() >= self._probe_at and self._probing is None:
            self._probing = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        """Compare the group's committed offsets on the broker with the ones this reader
        committed: missing or lower ones mean the broker lost them, with the topic (a
        broker that lost its data, or a topic deleted and created again). Runs in the
        background, like a commit (and, like one, retries while the broker is unreachable)."""
        try:
            for partition, mine in list(self._committed.items()):
                if self._closed or self._lost is not None:
                    return
                theirs = await self._consumer.committed(TopicPartition(self._topic, partition))
                if (theirs is None or theirs < mine) and partition in self._committed:
                    reason = (
                        f"the committed offset of group {self._group!r} on partition "
                        f"{partition} is {theirs} on the broker, not {mine} (deleted with "
                        "the topic, or the broker lost its data)"
                    )
                    self._lost = f"Kafka topic {self._topic!r} lost: {reason}"
                    if self._on_lost is not None:
                        self._on_lost(self._topic, self._group, reason)
                    return
        except Exception:
            log.debug("checking the committed Kafka offsets failed", exc_info=True)
        finally:
            self._probing = None
            self._probe_at = time.monotonic() + PROBE_EVERY

    def _lose(self, reason: str) -> None:
        self._lost = f"Kafka topic {self._topic!r} lost: {reason}"
        self._buffer.clear()
        if self._on_lost is not None:
            self._on_lost(self._topic, self._group, reason)
        raise KafkaTopicLostError(self._lost)

    def ack_for(self, record: ConsumerRecord[bytes, bytes]) -> Ack:
        partition, offset = record.partition, record.offset

        async def ack() -> None:
            self._ack(partition, offset)

        return ack

    def _ack(self, partition: int, offset: int) -> None:
        delivered = self._delivered.get(partition)
        if self._closed or self._lost or not delivered or offset < delivered[0]:
            return  # acked already, or after close (redelivered to the next reader)
        acked = self._acked.setdefault(partition, set())
        acked.add(offset)
        advanced = False
        while delivered and delivered[0] in acked:
            done = delivered.popleft()
            acked.discard(done)
            self._done[partition] = done + 1
            advanced = True
        if advanced and self._committing is None:
            self._committing = asyncio.get_running_loop().create_task(self._commit())
            self._committing.add_done_callback(_log_failure)

    async def _commit(self) -> None:
        try:
            while todo := {p: o for p, o in self._done.items() if o > self._committed.get(p, -1)}:
                if self._lost is not None:
                    return
                await self._consumer.commit(
                    {TopicPartition(self._topic, p): o for p, o in todo.items()}
                )
                self._committed.update(todo)
        finally:
            self._committing = None

    async def _last_commit(self) -> None:
        if self._committing is not None:
            await asyncio.wait((self._committing,))
        await self._commit()

    async def close(self) -> None:
        """Commit what was acked and stop the consumer. Idempotent. The commit gets up to
        ``close_timeout`` seconds (aiokafka retries it for as long as the broker is
        unreachable); after that, or at once for a lost topic, it is dropped (the events after
        the last committed offset are delivered again to the next reader) and the consumer
        is stopped anyway."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        leftovers: list[asyncio.Future[Any]] = []
        if self._committing is not None:
            leftovers.append(self._committing)
        if self._probing is not None:
            leftovers.append(self._probing)
        try:
            if self._lost is None:
                last = asyncio.ensure_future(self._last_commit())
                leftovers.append(last)
                if not await _within(last, self._close_timeout):
                    log.warning(
                        "Kafka offsets of group %r on topic %r not committed within %.1f s "
                        "(broker unreachable?): the events after the last committed offsets "
                        "will be delivered again",
                        self._group,
                        self._topic,
                        self._close_timeout,
                    )
        finally:
            await _shut(self._consumer, leftovers)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning(
            "committing Kafka offsets failed (retried on the next ack)", exc_info=task.exception()
        )
