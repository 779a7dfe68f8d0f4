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
from collections import deque
from collections.abc import Awaitable, Mapping
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

from workflow._adapters import Ack

__all__ = [
    "OrderedReader",
    "TopicMaker",
    "created_at",
    "decode_headers",
    "finish",
    "open_reader",
    "uncancelled",
    "route_options",
]

log = logging.getLogger("adapters.kafkastreamer")
T = TypeVar("T")

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
) -> OrderedReader:
    """Start a consumer of group ``name`` on every partition of ``topic`` (``None``: read them
    from the cluster's metadata) at the group's committed offsets. A group without any
    committed offset on the topic starts at the beginning offsets, or at the end offsets with
    ``stream_from_latest``; they are committed before this returns. If the caller is cancelled
    meanwhile, the opening still runs to its end (see :func:`uncancelled`) and the reader is
    closed before the cancellation is re-raised."""
    opening = asyncio.ensure_future(
        _open_reader(
            topic,
            name,
            partitions,
            bootstrap_servers=bootstrap_servers,
            options=options,
            stream_from_latest=stream_from_latest,
            poll=poll,
        )
    )
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        await finish(_close_once_open(opening))
        raise


async def _close_once_open(opening: asyncio.Future[OrderedReader]) -> None:
    await asyncio.wait((opening,))
    if not opening.cancelled() and opening.exception() is None:
        await opening.result().close()


async def _open_reader(
    topic: str,
    name: str,
    partitions: list[int] | None,
    *,
    bootstrap_servers: str | list[str],
    options: dict[str, Any],
    stream_from_latest: bool,
    poll: float,
) -> OrderedReader:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=name,
        enable_auto_commit=False,
        **{"auto_offset_reset": "earliest", **options},
    )
    try:
        await consumer.start()  # inside: a failed start must still stop it
        if partitions is None:
            await consumer.topics()  # refresh the metadata
            found = consumer.partitions_for_topic(topic)
            if not found:
                raise LookupError(f"Kafka topic {topic!r} does not exist")
            partitions = sorted(found)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        # Every partition gets a committed offset now, so the group's cursor exists from
        # here on, like a cursor row: a brand-new group starts at the end offsets with
        # stream_from_latest, otherwise (or if the group has offsets on other partitions)
        # at the beginning.
        fresh = [tp for tp in tps if await consumer.committed(tp) is None]
        if fresh:
            if stream_from_latest and len(fresh) == len(tps):
                start = await consumer.end_offsets(fresh)
            else:
                start = await consumer.beginning_offsets(fresh)
            await consumer.commit({tp: start[tp] for tp in fresh})
            for tp in fresh:
                consumer.seek(tp, start[tp])
    except BaseException:
        await _stop_quietly(consumer.stop())
        raise
    return OrderedReader(consumer, topic, poll)


class OrderedReader:
    """Hands out the records of its partitions in order and commits, per partition, the
    offset after the longest prefix of delivered records that are all acked. Commits run in
    the background, coalescing the acks that come in meanwhile; :meth:`close` writes the
    last of them. Records delivered but not acked go to the next reader of the group."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, poll: float) -> None:
        self._consumer = consumer
        self._topic = topic
        self._timeout_ms = max(int(poll * 1000), 1)
        self._buffer: deque[ConsumerRecord[bytes, bytes]] = deque()
        self._delivered: dict[int, deque[int]] = {}  # partition -> offsets not yet committable
        self._acked: dict[int, set[int]] = {}
        self._done: dict[int, int] = {}  # partition -> offset to commit
        self._committed: dict[int, int] = {}
        self._committing: asyncio.Task[None] | None = None
        self._closed = False

    async def next(self) -> ConsumerRecord[bytes, bytes]:
        while not self._buffer:
            if self._closed:
                raise RuntimeError("Kafka receiver is closed; make a new one")
            batch = await self._consumer.getmany(timeout_ms=self._timeout_ms)
            if self._closed:
                raise RuntimeError("Kafka receiver is closed; make a new one")
            for records in batch.values():
                self._buffer.extend(records)
        record = self._buffer.popleft()
        self._delivered.setdefault(record.partition, deque()).append(record.offset)
        return record

    def ack_for(self, record: ConsumerRecord[bytes, bytes]) -> Ack:
        partition, offset = record.partition, record.offset

        async def ack() -> None:
            self._ack(partition, offset)

        return ack

    def _ack(self, partition: int, offset: int) -> None:
        delivered = self._delivered.get(partition)
        if self._closed or not delivered or offset < delivered[0]:
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
                await self._consumer.commit(
                    {TopicPartition(self._topic, p): o for p, o in todo.items()}
                )
                self._committed.update(todo)
        finally:
            self._committing = None

    async def close(self) -> None:
        """Commit what was acked and stop the consumer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        try:
            if self._committing is not None:
                await asyncio.wait((self._committing,))
            await uncancelled(self._commit())
        finally:
            await finish(self._consumer.stop())


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning(
            "committing Kafka offsets failed (retried on the next ack)", exc_info=task.exception()
        )
