"""The Kafka event streamer and connector against a real Kafka-protocol broker
(``WORKFLOW_TEST_KAFKA_BOOTSTRAP``; .ci/services.sh starts Tansu)."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from workflow import ConnectorEvent, Event, EventReceiver
from workflow.adapters.adaptertest import run_connector_test, run_event_streamer_test
from workflow.adapters.kafkastreamer import KafkaConnector, KafkaStreamer
from workflow.testing import FakeClock

from .procs.kafka_worker import FAST, namespace, need_kafka


@pytest.fixture
def bootstrap() -> str:
    return need_kafka()


@pytest.fixture
async def streamer(bootstrap: str) -> AsyncIterator[KafkaStreamer]:
    s = KafkaStreamer(bootstrap, namespace=namespace(), **FAST)
    yield s
    await s.close()


async def recv(receiver: EventReceiver) -> Event:
    event, ack = await asyncio.wait_for(receiver.recv(), 5)
    await ack()
    return event


async def test_conformance_suite(bootstrap: str) -> None:
    # The suite checks one total order per topic, which Kafka gives within a partition: its
    # topics get one. Several partitions are covered below and in test_kafka_e2e.py.
    made: list[KafkaStreamer] = []

    def factory() -> KafkaStreamer:
        made.append(KafkaStreamer(bootstrap, partitions=1, namespace=namespace(), **FAST))
        return made[-1]

    try:
        await run_event_streamer_test(factory)
    finally:
        for s in made:
            await s.close()


async def test_connector_conformance_suite(bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    streamers: list[KafkaStreamer] = []

    async def maker(events: list[ConnectorEvent]) -> KafkaConnector:
        topic = f"external-{uuid.uuid4().hex[:8]}"
        # a one-partition topic: the suite expects its events back in the order given
        streamers.append(KafkaStreamer(bootstrap, partitions=1))
        await streamers[-1].new_sender(topic)  # creates it
        for e in events:
            headers = [(k, v.encode()) for k, v in e.headers.items()]
            await producer.send_and_wait(
                topic,
                b"{}",
                key=e.foreign_id.encode(),
                headers=[("type", e.type.encode()), *headers],
            )
        return KafkaConnector(topic, bootstrap, **FAST)

    try:
        await run_connector_test(maker)
    finally:
        await producer.stop()
        for s in streamers:
            await s.close()


async def test_acks_commit_only_the_acked_prefix(streamer: KafkaStreamer) -> None:
    single = KafkaStreamer(
        need_kafka(), partitions=1, namespace=namespace(), **FAST
    )  # one partition: one order for e1..e4
    try:
        sender = await single.new_sender("gaps")
        for i in range(1, 5):
            await sender.send(f"e{i}", i, {})
        first = await single.new_receiver("gaps", "g")
        got = [await asyncio.wait_for(first.recv(), 5) for _ in range(3)]
        assert [e.foreign_id for e, _ in got] == ["e1", "e2", "e3"]
        await got[0][1]()
        await got[2][1]()  # e2 is not acked: e3's ack cannot move the cursor past it
        await first.close()
        second = await single.new_receiver("gaps", "g")
        again = [await recv(second) for _ in range(3)]
        assert [e.foreign_id for e in again] == ["e2", "e3", "e4"]  # e3 again: at least once
        assert [e.id for e in again] == [e.id for e, _ in got[1:]] + [again[2].id]
        await second.close()
        third = await single.new_receiver("gaps", "g")  # everything acked and committed
        task = asyncio.ensure_future(third.recv())
        done, _ = await asyncio.wait([task], timeout=0.2)
        assert not done
        task.cancel()
        await sender.send("e5", 5, {})
        assert (await recv(third)).foreign_id == "e5"
        await third.close()
    finally:
        await single.close()


async def test_events_round_trip_with_the_clock_time(bootstrap: str) -> None:
    clock = FakeClock()
    s = KafkaStreamer(bootstrap, namespace=namespace(), clock=clock, **FAST)
    try:
        await (await s.new_sender("t")).send("run-1", 3, {"a": "b", "empty": ""})
        event = await recv(await s.new_receiver("t", "r"))
        assert (event.foreign_id, event.type, event.headers) == (
            "run-1",
            3,
            {"a": "b", "empty": ""},
        )
        assert event.created_at == clock.now()
    finally:
        await s.close()


async def test_per_run_order_across_partitions(streamer: KafkaStreamer) -> None:
    sender = await streamer.new_sender("runs")
    runs = [f"run-{i}" for i in range(40)]
    for status in range(1, 6):  # interleaved: every run's event 1, then every run's event 2...
        await sender.send_many([(r, status, {"n": str(status)}) for r in runs])  # type: ignore[attr-defined]
    receiver = await streamer.new_receiver("runs", "r")
    seen: dict[str, list[int]] = defaultdict(list)
    partitions = set()
    ids = set()
    for _ in range(len(runs) * 5):
        event = await recv(receiver)
        seen[event.foreign_id].append(event.type)
        partitions.add(event.id & 1023)
        ids.add(event.id)
    assert all(seen[r] == [1, 2, 3, 4, 5] for r in runs)
    assert partitions == {0, 1, 2, 3}  # the default 4 partitions, all used
    assert len(ids) == len(runs) * 5  # unique ids
    await receiver.close()


async def test_stream_from_latest_only_for_a_group_without_offsets(
    streamer: KafkaStreamer,
) -> None:
    sender = await streamer.new_sender("latest")
    runs = [f"run-{i}" for i in range(8)]  # several partitions
    for r in runs:
        # One send at a time: Tansu reports a partition's end offset as the last record
        # *batch*'s base offset + 1, so after a multi-record batch it points inside it.
        await sender.send(r, 1, {})
    fresh = await streamer.new_receiver("latest", "fresh", stream_from_latest=True)
    await sender.send_many([(r, 2, {}) for r in runs])  # type: ignore[attr-defined]
    got = [await recv(fresh) for _ in runs]
    assert {e.type for e in got} == {2} and {e.foreign_id for e in got} == set(runs)
    await fresh.close()
    # the group has offsets now, on every partition: stream_from_latest changes nothing,
    # even on a partition it never received an event from
    await sender.send_many([(r, 3, {}) for r in runs])  # type: ignore[attr-defined]
    again = await streamer.new_receiver("latest", "fresh", stream_from_latest=True)
    got = [await recv(again) for _ in runs]
    assert {e.type for e in got} == {3} and {e.foreign_id for e in got} == set(runs)
    await again.close()


async def test_connector_ids_headers_and_foreign_id_header(bootstrap: str) -> None:
    topic = f"external-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, b"payload", key=b"k", headers=[("who", b"user-7"), ("type", b"created")]
        )
    finally:
        await producer.stop()
    connector = KafkaConnector(topic, bootstrap, foreign_id_header="who", value_header="value")
    consumer = await connector.make("c")
    try:
        event, ack = await asyncio.wait_for(consumer.recv(), 5)
        await ack()
    finally:
        await consumer.close()
    partition = event.id.split("/")[1]
    assert event.id == f"{topic}/{partition}/0"
    assert (event.foreign_id, event.type) == ("user-7", "created")
    assert event.headers == {"who": "user-7", "type": "created", "value": "payload"}
    assert event.created_at is not None and event.created_at.utcoffset() is not None


def test_options_are_routed_and_checked() -> None:
    s = KafkaStreamer("x:1", client_id="me", session_timeout_ms=1500, linger_ms=5)
    assert s._producer_options == {"acks": "all", "client_id": "me", "linger_ms": 5}
    assert s._consumer_options == {"client_id": "me", "session_timeout_ms": 1500}
    with pytest.raises(TypeError, match="unknown aiokafka option"):
        KafkaStreamer("x:1", no_such_option=1)
    with pytest.raises(TypeError, match="group_id"):
        KafkaStreamer("x:1", consumer_options={"group_id": "g"})


async def test_cancelling_a_receiver_while_it_opens_leaves_no_connection_open(
    bootstrap: str, unraisable: list[str]
) -> None:
    """A process stopped while its receiver is still opening (a workflow stopped right after
    it started) cancels ``new_receiver`` somewhere inside aiokafka's connection set-up. No
    broker connection may outlive the streamer's close (aiokafka warns about each one when
    it is collected)."""
    for turns in range(0, 120, 4):  # cancel after this many event-loop turns
        streamer = KafkaStreamer(bootstrap, namespace=namespace(), **FAST)
        try:
            opening = asyncio.ensure_future(streamer.new_receiver("topic", "reader"))
            for _ in range(turns):
                await asyncio.sleep(0)
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
        finally:
            await streamer.close()
        gc.collect()
    assert unraisable == []
