"""An event streamer and a connector on Kafka (aiokafka); see ``docs/kafka.md``.

:class:`KafkaStreamer` is a :class:`~workflow.EventStreamer`:

* **Senders** of one streamer share one ``AIOKafkaProducer`` (started on first use,
  ``acks="all"`` unless told otherwise). A message's key is the ``foreign_id`` argument of
  ``send`` (the run id on workflow topics), so every event of a run lands on one partition, in
  order; its value is the status type as ASCII digits; the headers travel as Kafka headers
  (UTF-8). ``send`` returns once the broker acknowledged the message; ``send_many`` sends a
  batch and waits for every acknowledgement.
* **Receivers** read every partition of the topic with a consumer whose ``group_id`` is the
  receiver name (offsets are stored in Kafka under that group; partitions are assigned, not
  subscribed: see :mod:`adapters._kafka`). An ack commits, per partition, the offset after
  the longest run of acked events, so an event received but not acked (and everything after
  it on its partition) is delivered again to the next receiver of that name. Commits are
  coalesced in the background; ``close()`` writes the last one. Order is per partition (so per
  run), not across partitions. ``Event.id`` is ``(offset << 10) | partition`` (unique within a
  topic of up to 1024 partitions, increasing within a partition); ``Event.created_at`` is the
  message timestamp.
* **Topics** are created on first use with ``partitions`` partitions and
  ``replication_factor`` replicas (an existing topic is used as it is).

:class:`KafkaConnector` (a :class:`~workflow.ConnectorConstructor`) turns an external topic
into :class:`~workflow.ConnectorEvent` objects with the same in-order commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord  # type: ignore[import-untyped]

from workflow import ConnectorEvent, Event
from workflow.abc import Ack, Clock

from ._kafka import (
    CLOSE_TIMEOUT,
    KafkaTopicLostError,
    OrderedReader,
    TopicMaker,
    created_at,
    decode_headers,
    default_aiokafka_log_limit,
    finish,
    limit_aiokafka_logs,
    open_reader,
    route_options,
    uncancelled,
)

__all__ = [
    "KafkaConnector",
    "KafkaConnectorConsumer",
    "KafkaReceiver",
    "KafkaSender",
    "KafkaStreamer",
    "KafkaTopicLostError",
    "limit_aiokafka_logs",
]

log = logging.getLogger("adapters.kafkastreamer")

PARTITION_BITS = 10
"""``Event.id = (offset << PARTITION_BITS) | partition``."""

EventTuple = tuple[str, int, dict[str, str]]


class KafkaStreamer:
    """:class:`~workflow.EventStreamer` on Kafka.

    ``aiokafka_options`` (``security_protocol``, ``ssl_context``, ``sasl_*``, ``client_id``,
    ``request_timeout_ms``, ``fetch_max_wait_ms``, ``linger_ms``, ...) go to each client
    (producer, consumers, admin) whose constructor takes them; ``producer_options``,
    ``consumer_options`` and ``admin_options`` go to that client only. ``partitions`` and
    ``replication_factor`` apply to topics this streamer creates. ``namespace`` is put in
    front of every topic name and consumer group id (several environments on one cluster).
    With ``clock``, messages are stamped with ``clock.now()`` (else the producer stamps them
    with the wall clock). ``close_timeout`` bounds how long closing a receiver waits for its
    last offset commit while the broker is unreachable (see :meth:`KafkaReceiver.close`).

    A topic that vanishes while in use (deleted, or a broker that lost its data) is logged
    once and created again; its receivers fail with :class:`KafkaTopicLostError` and the
    next receivers of their groups start at the beginning of the new topic.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        partitions: int = 4,
        replication_factor: int = 1,
        namespace: str = "",
        clock: Clock | None = None,
        close_timeout: float = CLOSE_TIMEOUT,
        producer_options: dict[str, Any] | None = None,
        consumer_options: dict[str, Any] | None = None,
        admin_options: dict[str, Any] | None = None,
        **aiokafka_options: Any,
    ) -> None:
        if not 1 <= partitions <= 1 << PARTITION_BITS:
            raise ValueError(f"partitions must be between 1 and {1 << PARTITION_BITS}")
        self._bootstrap = bootstrap_servers
        prod, cons, admin = route_options(
            aiokafka_options,
            producer=producer_options,
            consumer=consumer_options,
            admin=admin_options,
        )
        self._producer_options = {"acks": "all", **prod}
        self._consumer_options = cons
        self._topics = TopicMaker(bootstrap_servers, admin, partitions, replication_factor)
        self._namespace = namespace
        self._clock = clock
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Task[AIOKafkaProducer] | None = None
        self._receivers: set[KafkaReceiver] = set()
        self._close_timeout = close_timeout
        self._lost_topics: set[str] = set()  # lost and not created again yet (logged)
        self._restart: set[tuple[str, str]] = set()  # (topic, group): start at the beginning
        self._closed = False
        default_aiokafka_log_limit()

    # -- EventStreamer -------------------------------------------------------------------

    async def new_sender(self, topic: str) -> KafkaSender:
        self._check_open()
        topic = self._namespace + topic
        await self._ensure(topic)
        return KafkaSender(self, topic)

    async def new_receiver(
        self,
        topic: str,
        name: str,
        *,
        poll_frequency: float | None = None,
        stream_from_latest: bool = False,
    ) -> KafkaReceiver:
        """A receiver of ``topic`` in consumer group ``name``. Partitions the group has no
        committed offset for start at the earliest offset, or with ``stream_from_latest`` at
        the current end offset, which is committed before this returns. ``poll_frequency`` is
        only how often a waiting ``recv`` wakes up to look at the receiver's state."""
        self._check_open()
        topic, name = self._namespace + topic, self._namespace + name
        await self._ensure(topic)
        producer = await self._get_producer()
        partitions = sorted(await uncancelled(producer.partitions_for(topic)))
        restart = (topic, name) in self._restart
        reader = await open_reader(
            topic,
            name,
            partitions,
            bootstrap_servers=self._bootstrap,
            options=self._consumer_options,
            stream_from_latest=stream_from_latest,
            poll=1.0 if poll_frequency is None else poll_frequency,
            close_timeout=self._close_timeout,
            restart=restart,
            on_lost=self._lost,
        )
        if restart:
            self._restart.discard((topic, name))
        receiver = KafkaReceiver(self, reader)
        if self._closed:
            await reader.close()
            self._check_open()
        self._receivers.add(receiver)
        return receiver

    async def close(self) -> None:
        """Close every open receiver (committing its acks), the producer and the admin
        client. Idempotent; nothing can be made afterwards."""
        self._closed = True
        try:
            # all at once, and to the end even if this is cancelled: a receiver left open
            # keeps its consumer's connections
            receivers = [r.close() for r in list(self._receivers)]
            await finish(asyncio.gather(*receivers, return_exceptions=True))
        finally:
            if self._starting is not None:
                await asyncio.wait((self._starting,))
            producer, self._producer = self._producer, None
            try:
                if producer is not None:
                    await finish(producer.stop())
            finally:
                await self._topics.close()

    async def __aenter__(self) -> KafkaStreamer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------

    def _lost(self, topic: str, group: str, reason: str) -> None:
        """A receiver of ``group`` found ``topic`` gone: have the topic created again, make
        the group's next receiver start at its beginning, and log it (once for all the
        receivers of the topic, until it is created again)."""
        self._topics.forget(topic)
        self._restart.add((topic, group))
        if topic in self._lost_topics:
            return
        self._lost_topics.add(topic)
        log.error(
            "Kafka topic %r lost: %s. Unacked events on it are gone; it is created again "
            "and its receivers start over at its beginning (events sent before the loss "
            "but not yet received are not recovered)",
            topic,
            reason,
        )

    async def _ensure(self, topic: str) -> None:
        await self._topics.ensure(topic)
        if topic in self._lost_topics:
            self._lost_topics.discard(topic)
            log.warning("Kafka topic %r is there again: reading resumes", topic)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("KafkaStreamer is closed")

    async def _get_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        if self._starting is None or (
            self._starting.done() and self._starting.exception() is not None
        ):
            self._starting = asyncio.ensure_future(self._start_producer())
        return await asyncio.shield(self._starting)

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **self._producer_options)
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await finish(producer.stop())
            raise
        self._producer = producer
        return producer

    async def _send(self, topic: str, batch: list[EventTuple]) -> None:
        self._check_open()
        await self._ensure(topic)  # at once when it exists; creates it again after a loss
        try:
            await self._produce(topic, batch)
        except Exception:
            self._topics.forget(topic)  # it may be gone: the next send makes sure it is there
            raise

    async def _produce(self, topic: str, batch: list[EventTuple]) -> None:
        producer = await self._get_producer()
        stamp = None
        if self._clock is not None:
            stamp = int(self._clock.now().timestamp() * 1000)
        acks = []
        for foreign_id, status_type, headers in batch:
            acks.append(
                await producer.send(
                    topic,
                    value=str(int(status_type)).encode(),
                    key=foreign_id.encode(),
                    headers=[(k, v.encode()) for k, v in headers.items()],
                    timestamp_ms=stamp,
                )
            )
        await asyncio.gather(*acks)


class KafkaSender:
    """Produces to one topic through its streamer's shared producer."""

    def __init__(self, streamer: KafkaStreamer, topic: str) -> None:
        self._streamer = streamer
        self._topic = topic

    async def send(self, foreign_id: str, status_type: int, headers: dict[str, str]) -> None:
        """Produce one event keyed by ``foreign_id``; return once the broker acknowledged it."""
        await self._streamer._send(self._topic, [(foreign_id, status_type, headers)])

    async def send_many(self, events: list[tuple[str, int, dict[str, str]]]) -> None:
        """Produce ``(foreign_id, status_type, headers)`` events in order (per key) and wait
        for every acknowledgement. Not atomic: on an error some may have been stored."""
        await self._streamer._send(self._topic, events)

    async def close(self) -> None:
        return None  # the producer belongs to the streamer


class KafkaReceiver:
    """Reads one topic as consumer group ``name``; made by :meth:`KafkaStreamer.new_receiver`.
    Not for concurrent ``recv`` calls."""

    def __init__(self, streamer: KafkaStreamer, reader: OrderedReader) -> None:
        self._streamer = streamer
        self._reader = reader

    async def recv(self) -> tuple[Event, Ack]:
        return self._event(await self._reader.next())

    def recv_ready(self, limit: int) -> list[tuple[Event, Ack]]:
        """Up to ``limit`` events already fetched (:class:`~workflow.abc.ReadyReceiver`)."""
        out: list[tuple[Event, Ack]] = []
        while len(out) < limit:
            record = self._reader.next_ready()
            if record is None:
                break
            out.append(self._event(record))
        return out

    def _event(self, record: ConsumerRecord[bytes, bytes]) -> tuple[Event, Ack]:
        event = Event(
            (record.offset << PARTITION_BITS) | record.partition,
            (record.key or b"").decode(),
            int(record.value or b"0"),
            decode_headers(record),
            created_at(record),
        )
        return event, self._reader.ack_for(record)

    async def close(self) -> None:
        """Commit the acked offsets and stop the consumer. Idempotent. While the broker is
        unreachable the commit is given up after the streamer's ``close_timeout`` (logged;
        the events after the last committed offsets are delivered again)."""
        self._streamer._receivers.discard(self)
        await self._reader.close()


class KafkaConnector:
    """:class:`~workflow.ConnectorConstructor` for an existing Kafka topic.

    ``make(name)`` starts a consumer of group ``name`` on every partition of ``topic``; its
    events have ``id = "topic/partition/offset"``, ``foreign_id`` = the message key (or the
    header ``foreign_id_header``), ``type`` = the header ``type_header`` (``""`` if absent),
    every header as ``headers`` (plus the value, decoded as UTF-8, under ``value_header`` if
    given) and the message timestamp as ``created_at``. Acks commit in order as for
    :class:`KafkaReceiver`. A new group starts at the earliest offset, or at the end with
    ``stream_from_latest``. ``aiokafka_options`` and ``consumer_options`` go to the consumer;
    ``close_timeout`` is as for :class:`KafkaStreamer`. If the topic is lost (deleted, or
    the broker lost its data) its consumers fail with :class:`KafkaTopicLostError`, once
    logged, and the next ones start at the beginning of the topic once it exists again.
    """

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str | list[str],
        *,
        foreign_id_header: str | None = None,
        type_header: str = "type",
        value_header: str | None = None,
        stream_from_latest: bool = False,
        poll_frequency: float = 1.0,
        close_timeout: float = CLOSE_TIMEOUT,
        consumer_options: dict[str, Any] | None = None,
        **aiokafka_options: Any,
    ) -> None:
        default_aiokafka_log_limit()
        self.topic = topic
        self._close_timeout = close_timeout
        self._restart: set[str] = set()  # groups whose next consumer starts at the beginning
        self._reported = False
        self._bootstrap = bootstrap_servers
        self._foreign_id_header = foreign_id_header
        self._type_header = type_header
        self._value_header = value_header
        self._latest = stream_from_latest
        self._poll = poll_frequency
        _, self._options, _ = route_options(aiokafka_options, consumer=consumer_options)

    async def make(self, name: str) -> KafkaConnectorConsumer:
        restart = name in self._restart
        reader = await open_reader(
            self.topic,
            name,
            None,
            bootstrap_servers=self._bootstrap,
            options=self._options,
            stream_from_latest=self._latest,
            poll=self._poll,
            close_timeout=self._close_timeout,
            restart=restart,
            on_lost=self._lost,
        )
        self._restart.discard(name)
        self._reported = False
        return KafkaConnectorConsumer(self, reader)

    def _lost(self, topic: str, group: str, reason: str) -> None:
        self._restart.add(group)
        if not self._reported:
            self._reported = True
            log.error(
                "Kafka topic %r of the connector lost: %s. Its consumers start over at the "
                "beginning of the topic once it is there again",
                topic,
                reason,
            )

    def _event(self, record: ConsumerRecord[bytes, bytes]) -> ConnectorEvent:
        headers = decode_headers(record)
        if self._foreign_id_header is not None:
            foreign_id = headers.get(self._foreign_id_header, "")
        else:
            foreign_id = (record.key or b"").decode("utf-8", "replace")
        if self._value_header is not None:
            headers[self._value_header] = (record.value or b"").decode("utf-8", "replace")
        return ConnectorEvent(
            id=f"{record.topic}/{record.partition}/{record.offset}",
            foreign_id=foreign_id,
            type=headers.get(self._type_header, ""),
            headers=headers,
            created_at=created_at(record),
        )


class KafkaConnectorConsumer:
    """One consumer of a :class:`KafkaConnector`. Not for concurrent ``recv`` calls."""

    def __init__(self, connector: KafkaConnector, reader: OrderedReader) -> None:
        self._connector = connector
        self._reader = reader

    async def recv(self) -> tuple[ConnectorEvent, Ack]:
        record = await self._reader.next()
        return self._connector._event(record), self._reader.ack_for(record)

    async def close(self) -> None:
        await self._reader.close()
