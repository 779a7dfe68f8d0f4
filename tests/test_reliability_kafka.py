"""The Kafka streamer when its broker fails: a private Tansu broker (memory storage) per test,
killed or restarted under a running workflow. ``WORKFLOW_TEST_TANSU_BIN`` is the broker binary
(.ci/services.sh exports it); without it these tests are skipped locally and fail in CI."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry

from workflow import Builder, Run, Workflow
from workflow.adapters.kafkastreamer import KafkaStreamer
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler

from .procs.kafka_worker import namespace
from .support import Obj, Status, need_service

# request_timeout_ms bounds what aiokafka itself waits for (a produce to a dead broker):
# the streamer's close at the end of a test, not what is measured here.
OPTIONS = {"consumer_options": {"fetch_max_wait_ms": 10}, "request_timeout_ms": 5000}


def _tansu_bin() -> str:
    path = os.environ.get("WORKFLOW_TEST_TANSU_BIN", "")
    return need_service(
        path if path and os.access(path, os.X_OK) else "",
        "broker-failure tests need WORKFLOW_TEST_TANSU_BIN (.ci/services.sh sets it)",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    """Does a Kafka broker answer an ApiVersions request on the port?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(2)
            body = b"\x00\x12\x00\x00\x00\x00\x00\x07\x00\x05probe"
            s.sendall(len(body).to_bytes(4, "big") + body)
            return len(s.recv(4)) == 4
    except OSError:
        return False


class Broker:
    """A private Tansu on a free loopback port, with memory storage: a restart loses every
    topic and committed offset, like a broker that lost its data."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        args = [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            "--storage-engine",
            "memory://tansu/",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(_answers, self.port):
            assert self.proc.returncode is None, "Tansu exited"
            assert time.monotonic() < deadline, "Tansu did not start"
            await asyncio.sleep(0.05)  # polling a process that has no readiness signal

    async def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
            self.proc = None

    async def restart(self) -> None:
        await self.kill()
        await self.start()


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    b = Broker(_tansu_bin())
    await b.start()
    try:
        yield b
    finally:
        await b.kill()


class Lines(logging.Handler):
    """Collects every record of level WARNING and up; ``seen(text)`` waits for one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        text = record.getMessage()
        for wanted, fut in self._waiters:
            if wanted in text and not fut.done():
                fut.set_result(None)

    def count(self, text: str, logger: str = "") -> int:
        return sum(text in r.getMessage() and r.name.startswith(logger) for r in self.records)

    async def seen(self, text: str, timeout: float) -> None:
        if self.count(text):
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((text, fut))
        await asyncio.wait_for(fut, timeout)


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def build(
    b: Builder[Obj, Status], streamer: KafkaStreamer, registry: CollectorRegistry
) -> Workflow[Obj, Status]:
    return b.build(
        streamer,
        MemRecordStore(),
        MemRoleScheduler(),
        metrics_registry=registry,
        default_options={"err_backoff": 0.2, "polling_frequency": 0.2},
    )


async def test_stop_honours_its_grace_while_the_broker_is_down(
    broker: Broker, registry: CollectorRegistry, lines: Lines, unraisable: list[str]
) -> None:
    """The broker dies while a step is running: the step's ack then commits to a dead
    broker, which aiokafka retries for ever. ``stop(grace=2)`` still returns in bounded time,
    the leftover commit is dropped (logged once) and nothing logs thousands of lines."""
    killed = asyncio.Event()

    async def step(run: Run[Obj, Status]) -> Status:
        if run.foreign_id == "second":
            await broker.kill()
            killed.set()
        return Status.MIDDLE

    b = Builder[Obj, Status]("down")
    b.add_step(Status.STARTED, step, Status.MIDDLE)
    streamer = KafkaStreamer(broker.bootstrap, namespace=namespace(), **OPTIONS)  # type: ignore[arg-type]
    wf = build(b, streamer, registry)
    try:
        await wf.run()
        first = await wf.trigger("first")
        await wf.await_("first", first, Status.MIDDLE, timeout=30)
        await wf.trigger("second")
        await asyncio.wait_for(killed.wait(), 30)
        before = len(lines.records)
        t0 = time.monotonic()
        await asyncio.wait_for(wf.stop(grace=2), 60)  # the old code never returned
        took = time.monotonic() - t0
        assert took < 2 + 5, f"stop(grace=2) took {took:.1f} s"
        during = len(lines.records) - before
        assert during < 100, f"{during} log lines while stopping"
        assert lines.count("not committed within") >= 1
    finally:
        await wf.stop(grace=0)
        await asyncio.wait_for(streamer.close(), 60)
    after = len(lines.records)
    gc.collect()
    # nothing runs on after the close: no more lines (of a leftover retry loop)
    await asyncio.sleep(1)  # a quiet second: the absence of an event has no event to await
    assert len(lines.records) == after, [r.getMessage() for r in lines.records[after:]]
    assert unraisable == []


async def test_a_broker_that_lost_its_topics_is_recovered_from(
    broker: Broker, registry: CollectorRegistry, lines: Lines, unraisable: list[str]
) -> None:
    """The broker restarts with empty storage under a running workflow (its topics and
    committed offsets are gone). The receivers find out, it is logged once per topic, the
    topics are created again and the workflow goes on: a run triggered afterwards completes."""
    b = Builder[Obj, Status]("lost")
    b.add_step(Status.STARTED, lambda run: Status.MIDDLE, Status.MIDDLE)
    b.add_step(Status.MIDDLE, lambda run: Status.DONE, Status.DONE)
    ns = namespace()
    streamer = KafkaStreamer(broker.bootstrap, namespace=ns, **OPTIONS)  # type: ignore[arg-type]
    wf = build(b, streamer, registry)
    try:
        await wf.run()
        for i in range(3):  # offsets committed on several partitions
            rid = await wf.trigger(f"before-{i}")
            await wf.await_(f"before-{i}", rid, Status.DONE, timeout=30)
        await broker.restart()
        # Tansu acknowledges a produce to a topic it lost without storing it, so the run is
        # triggered once the step topics are there again (a real Kafka refuses the produce).
        for status in (Status.STARTED, Status.MIDDLE):
            await lines.seen(f"Kafka topic '{ns}lost-{int(status)}' is there again", 60)
        rid = await wf.trigger("after")
        run = await wf.await_("after", rid, Status.DONE, timeout=30)
        assert run.status == Status.DONE
    finally:
        await wf.stop(grace=2)
        await asyncio.wait_for(streamer.close(), 60)
    for status in (Status.STARTED, Status.MIDDLE):
        # once from the streamer (the engine logs each receiver's error as well)
        assert lines.count(f"Kafka topic '{ns}lost-{int(status)}' lost:", "adapters.") == 1
    gc.collect()
    assert unraisable == []
