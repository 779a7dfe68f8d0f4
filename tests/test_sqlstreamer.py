"""The SQL event streamer on SQLite and PostgreSQL: the conformance suite, batches, coalesced
acks, wake-ups (in process and through NOTIFY), pruning, cancellation and gap safety."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workflow import Event
from workflow.adapters import sqlstreamer
from workflow.adapters._sqlengine import TopicHub
from workflow.adapters._statements import PRUNE_TOPIC
from workflow.adapters.adaptertest import run_event_streamer_test
from workflow.adapters.sqlschema import cursors, events, make_engine
from workflow.adapters.sqlstreamer import SQLReceiver, SQLStreamer, insert_events
from workflow.testing import FakeClock

Make = Callable[..., SQLStreamer]


@pytest.fixture
async def make(clock: FakeClock) -> AsyncIterator[Make]:
    """``make(engine, **options)``: a streamer on ``engine``, closed after the test."""
    made: list[SQLStreamer] = []

    def factory(engine: AsyncEngine, **options: Any) -> SQLStreamer:
        options.setdefault("clock", clock)
        streamer = SQLStreamer(engine, **options)
        made.append(streamer)
        return streamer

    yield factory
    for streamer in made:
        await streamer.close()


def new_topic() -> str:
    return f"topic-{uuid.uuid4().hex[:8]}"


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 2) -> None:
    """Wait until ``check()`` holds (state another connection changes; nothing to wait on)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def position(engine: AsyncEngine, topic: str, name: str) -> int | None:
    where = sa.and_(cursors.c.topic == topic, cursors.c.name == name)
    async with engine.connect() as conn:
        value = (await conn.execute(sa.select(cursors.c.position).where(where))).scalar()
    return None if value is None else int(value)


async def stored_ids(engine: AsyncEngine, topic: str) -> list[int]:
    stmt = sa.select(events.c.id).where(events.c.topic == topic).order_by(events.c.id)
    async with engine.connect() as conn:
        return [int(i) for i in (await conn.execute(stmt)).scalars()]


async def send(streamer: SQLStreamer, topic: str, *foreign_ids: str) -> None:
    sender = await streamer.new_sender(topic)
    for i, foreign_id in enumerate(foreign_ids):
        await sender.send(foreign_id, i + 1, {"n": str(i)})


async def take(receiver: SQLReceiver, n: int, *, ack: bool = True) -> list[Event]:
    got = []
    for _ in range(n):
        event, do_ack = await asyncio.wait_for(receiver.recv(), 2)
        if ack:
            await do_ack()
        got.append(event)
    return got


async def waiting(receiver: SQLReceiver) -> None:
    await until(lambda: receiver._waiting, "the receiver to wait for new events")


async def second_engine(engine: AsyncEngine) -> AsyncEngine:
    """Another engine object on the same database, as another process would have."""
    if engine.dialect.name == "sqlite":
        return make_engine(engine.url.render_as_string(hide_password=False))
    async with engine.connect() as conn:
        schema = (await conn.exec_driver_sql("SHOW search_path")).scalar()
    url = os.environ["WORKFLOW_TEST_POSTGRES_URL"]
    return create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})


# -- the contract ----------------------------------------------------------------------------


async def test_conformance(sql_engine: AsyncEngine, make: Make) -> None:
    await run_event_streamer_test(lambda: make(sql_engine))


async def test_send_many_in_order_in_one_transaction(
    sql_engine: AsyncEngine, make: Make, clock: FakeClock
) -> None:
    streamer = make(sql_engine)
    topic = new_topic()
    sender = await streamer.new_sender(topic)
    await sender.send_many([])
    batch = [("f1", 1, {"a": "1"}), ("f2", 2, {}), ("f3", 3, {"b": "\u00fc \u2713"})]
    await sender.send_many(batch)
    receiver = await streamer.new_receiver(topic, "r")
    got = await take(receiver, 3)
    assert [(e.foreign_id, e.type, e.headers) for e in got] == batch
    assert got[0].id < got[1].id < got[2].id
    assert all(e.created_at == clock.now() for e in got)

    # a batch that fails half-way stores nothing
    broken: Any = [("g1", 1, {}), (None, 2, {})]
    with pytest.raises(sa.exc.IntegrityError):
        await sender.send_many(broken)
    await sender.send("h1", 4, {})
    (event,) = await take(receiver, 1)
    assert event.foreign_id == "h1"
    assert len(await stored_ids(sql_engine, topic)) == 4


async def test_stream_from_latest_cursor_is_made_by_new_receiver(
    sql_engine: AsyncEngine, make: Make
) -> None:
    streamer = make(sql_engine)
    topic = new_topic()
    await send(streamer, topic, "old")
    first = await streamer.new_receiver(topic, "r", stream_from_latest=True)
    await first.close()
    await send(streamer, topic, "new")
    again = await streamer.new_receiver(topic, "r", stream_from_latest=True)
    (event,) = await take(again, 1)
    assert event.foreign_id == "new"


# -- coalesced acks --------------------------------------------------------------------------


async def test_coalesced_acks_never_pass_an_unacked_event(
    sql_engine: AsyncEngine, make: Make
) -> None:
    streamer = make(sql_engine, ack_interval=60)
    topic = new_topic()
    await send(streamer, topic, "e1", "e2", "e3")
    receiver = await streamer.new_receiver(topic, "r")
    e1, e2 = await take(receiver, 2)
    await take(receiver, 1, ack=False)  # e3: received, never acked
    assert await position(sql_engine, topic, "r") == e1.id  # e2's ack is coalesced
    await receiver.close()
    assert await position(sql_engine, topic, "r") == e2.id  # close writes it

    again = await streamer.new_receiver(topic, "r")
    (event,) = await take(again, 1)
    assert event.foreign_id == "e3"


async def test_pending_ack_is_written_once_the_receiver_waits(
    sql_engine: AsyncEngine, make: Make
) -> None:
    streamer = make(sql_engine, ack_interval=60, poll_frequency=30)
    topic = new_topic()
    await send(streamer, topic, "e1", "e2")
    receiver = await streamer.new_receiver(topic, "r")
    _, e2 = await take(receiver, 2)
    task = asyncio.ensure_future(receiver.recv())

    async def written() -> bool:
        return await position(sql_engine, topic, "r") == e2.id

    try:
        await waiting(receiver)
        await until(written, "the pending ack written by the waiting receiver (ack_interval 60 s)")
    finally:
        task.cancel()


async def test_last_ack_of_a_burst_is_written_soon(sql_engine: AsyncEngine, make: Make) -> None:
    streamer = make(sql_engine, ack_interval=0.05)
    topic = new_topic()
    await send(streamer, topic, "e1", "e2", "e3")
    receiver = await streamer.new_receiver(topic, "r")
    _, e2 = await take(receiver, 2)
    await take(receiver, 1, ack=False)

    async def written() -> bool:
        return await position(sql_engine, topic, "r") == e2.id

    await until(written, "the coalesced ack to be written")
    await receiver.close()
    assert await position(sql_engine, topic, "r") == e2.id


async def test_cursor_never_moves_backwards(sql_engine: AsyncEngine, make: Make) -> None:
    streamer = make(sql_engine, ack_interval=0)
    topic = new_topic()
    await send(streamer, topic, "e1", "e2", "e3")
    receiver = await streamer.new_receiver(topic, "r")
    _, ack1 = await receiver.recv()
    e2, ack2 = await receiver.recv()
    await ack2()
    await ack1()  # late ack of an earlier event
    assert await position(sql_engine, topic, "r") == e2.id
    await receiver.close()

    again = await streamer.new_receiver(topic, "r")
    (e3,) = await take(again, 1)
    await ack1()  # an ack from the closed receiver
    await again.close()
    assert await position(sql_engine, topic, "r") == e3.id


# -- wake-ups --------------------------------------------------------------------------------


async def test_send_wakes_receivers_of_this_engine_at_once(
    sql_engine: AsyncEngine, make: Make
) -> None:
    """Every streamer on one engine (also on one made from it by ``execution_options``)
    shares its wake-ups. Another engine on the same database is what another process would
    have: woken by NOTIFY (next test), or by polling on SQLite."""
    # different NOTIFY channels: on PostgreSQL only the in-process wake-up can do it
    topic = new_topic()
    sending = make(sql_engine, channel="sender_only")
    derived = sql_engine.execution_options(logging_token="derived")
    for n, engine in enumerate((sql_engine, derived)):
        streamer = make(engine, poll_frequency=30, channel="receiver_only")
        receiver = await streamer.new_receiver(topic, f"r-{n}", stream_from_latest=True)
        task = asyncio.ensure_future(receiver.recv())
        await waiting(receiver)
        await send(sending, topic, "wake")
        event, ack = await asyncio.wait_for(task, 1)
        assert event.foreign_id == "wake"
        await ack()
        await streamer.close()


async def test_notify_wakes_a_receiver_of_another_engine(
    pg_engine: AsyncEngine, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlstreamer, "_hub_for", lambda engine: TopicHub())
    other = await second_engine(pg_engine)
    try:
        topic = new_topic()
        sending = make(pg_engine)
        streamer = make(other, poll_frequency=30)
        receiver = await streamer.new_receiver(topic, "r")
        for n in range(2):
            task = asyncio.ensure_future(receiver.recv())
            await waiting(receiver)
            await send(sending, topic, f"wake-{n}")
            event, ack = await asyncio.wait_for(task, 2)
            assert event.foreign_id == f"wake-{n}"
            await ack()
        await streamer.close()
        assert other.pool.checkedout() == 0  # the LISTEN connection is closed
    finally:
        await other.dispose()


async def test_lost_listen_connection_is_replaced(
    pg_engine: AsyncEngine, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlstreamer, "_hub_for", lambda engine: TopicHub())
    topic = new_topic()
    sending = make(pg_engine)
    streamer = make(pg_engine, poll_frequency=30)
    receiver = await streamer.new_receiver(topic, "r")
    task = asyncio.ensure_future(receiver.recv())
    await waiting(receiver)
    old = streamer._driver.get_server_pid()
    async with pg_engine.connect() as conn:
        await conn.execute(sa.select(sa.func.pg_terminate_backend(old)))

    def relistening() -> bool:
        driver = streamer._driver
        return receiver._waiting and driver is not None and driver.get_server_pid() != old

    await until(relistening, "the receiver to LISTEN on a new connection")
    await send(sending, topic, "wake")
    event, _ = await asyncio.wait_for(task, 2)
    assert event.foreign_id == "wake"


async def test_close_releases_every_connection(sql_engine: AsyncEngine, make: Make) -> None:
    streamer = make(sql_engine, ack_interval=60, poll_frequency=30)
    topic = new_topic()
    await send(streamer, topic, "e1", "e2")
    receiver = await streamer.new_receiver(topic, "r")
    _, e2 = await take(receiver, 2)
    task = asyncio.ensure_future(receiver.recv())
    await waiting(receiver)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await streamer.close()
    await streamer.close()
    assert sql_engine.pool.checkedout() == 0
    assert await position(sql_engine, topic, "r") == e2.id
    with pytest.raises(RuntimeError):
        await receiver.recv()
    with pytest.raises(RuntimeError):
        await streamer.new_receiver(topic, "r")


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelled_recv_and_ack_lose_and_repeat_nothing(
    sql_engine: AsyncEngine, make: Make
) -> None:
    streamer = make(sql_engine, batch_size=3, ack_interval=0)
    topic = new_topic()
    names = [f"e{i}" for i in range(40)]
    await send(streamer, topic, *names)
    receiver = await streamer.new_receiver(topic, "r")
    got: list[Event] = []
    acked = 0
    for k in range(120):  # cancel after 0, 1, 2, ... turns of the event loop
        task = asyncio.ensure_future(receiver.recv())
        for _ in range(k):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            event, ack = await task
            got.append(event)
            acking = asyncio.ensure_future(ack())
            for _ in range(k % 7):
                await asyncio.sleep(0)
            acking.cancel()
            acked = event.id
            with contextlib.suppress(asyncio.CancelledError):
                await acking
    got += await take(receiver, len(names) - len(got), ack=False)
    assert [e.foreign_id for e in got] == names
    await streamer.close()
    assert sql_engine.pool.checkedout() == 0
    stored = await position(sql_engine, topic, "r")
    assert stored is not None and stored <= acked  # no unacked event was passed

    expected = [e.foreign_id for e in got if e.id > stored]
    again = await make(sql_engine).new_receiver(topic, "r")
    assert [e.foreign_id for e in await take(again, len(expected))] == expected


# -- pruning ---------------------------------------------------------------------------------


async def test_prune_removes_only_what_every_cursor_passed(
    sql_engine: AsyncEngine, make: Make
) -> None:
    streamer = make(sql_engine, ack_interval=0, prune_every=10**9)
    topic, untracked = new_topic(), new_topic()
    await send(streamer, untracked, "u1")
    await send(streamer, topic, "e1", "e2", "e3", "e4", "e5")
    ids = await stored_ids(sql_engine, topic)
    a = await streamer.new_receiver(topic, "a")
    b = await streamer.new_receiver(topic, "b")
    await take(a, 3)
    await take(b, 2)
    await take(b, 1, ack=False)

    assert await streamer.prune() == 2
    assert await stored_ids(sql_engine, topic) == ids[2:]
    assert len(await stored_ids(sql_engine, untracked)) == 1  # nobody reads it: kept
    late = await streamer.new_receiver(topic, "late")  # starts at the oldest event left
    assert [e.foreign_id for e in await take(late, 3)] == ["e3", "e4", "e5"]

    # every cursor at the end: a new event still reaches them all (no id is reused)
    await take(a, 2)
    await b.close()
    b = await streamer.new_receiver(topic, "b")
    await take(b, 3)
    await streamer.prune()
    await send(streamer, topic, "e6")
    for receiver in (a, b, late):
        (event,) = await take(receiver, 1)
        assert event.foreign_id == "e6"


async def test_senders_prune_their_topic(sql_engine: AsyncEngine, make: Make) -> None:
    streamer = make(sql_engine, ack_interval=0, prune_every=4)
    topic = new_topic()
    await send(streamer, topic, "e1", "e2")
    receiver = await streamer.new_receiver(topic, "r")
    await take(receiver, 2)
    assert len(await stored_ids(sql_engine, topic)) == 2
    await send(streamer, topic, "e3", "e4")  # the 4th send prunes, in the background

    async def pruned() -> bool:
        return len(await stored_ids(sql_engine, topic)) == 2

    await until(pruned, "the sender's prune of e1 and e2")
    assert [e.foreign_id for e in await take(receiver, 2)] == ["e3", "e4"]


async def test_a_large_backlog_is_pruned_in_chunks(
    sql_engine: AsyncEngine, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender's prune deletes a backlog a few rows per transaction (here 3), in the
    background, until everything every cursor passed is gone; the sends do not wait for it."""
    monkeypatch.setattr(sqlstreamer, "PRUNE_CHUNK", 3)
    streamer = make(sql_engine, ack_interval=0, prune_every=10**9)
    topic = new_topic()
    receiver = await streamer.new_receiver(topic, "r")
    await send(streamer, topic, *(f"e{i}" for i in range(11)))
    await take(receiver, 11)
    streamer._prune_every = 1  # the next send prunes
    deletes: list[int] = []
    db = streamer._db
    real = db.execute

    async def counted(stmt: Any, params: Any) -> int:
        n = await real(stmt, params)
        if stmt is PRUNE_TOPIC:
            deletes.append(n)
        return n

    monkeypatch.setattr(db, "execute", counted)
    await send(streamer, topic, "e11")

    async def pruned() -> bool:
        return len(await stored_ids(sql_engine, topic)) == 1

    await until(pruned, "the backlog pruned")
    assert deletes[:4] == [3, 3, 3, 2]  # e0..e10 acked; e11 (the newest row) stays
    assert [e.foreign_id for e in await take(receiver, 1)] == ["e11"]


# -- gap safety (PostgreSQL) -----------------------------------------------------------------


async def _blocked_inserts(engine: AsyncEngine, topic: str) -> int:
    """Inserts into ``topic`` waiting for its insert lock."""
    stmt = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = :namespace AND objid::int = hashtext(:topic) AND objsubid = 2"
    )
    params = {"namespace": sqlstreamer.LOCK_NAMESPACE, "topic": topic}
    async with engine.connect() as conn:
        return int((await conn.execute(stmt, params)).scalar() or 0)


@pytest.mark.parametrize("first", ["a", "b"])
async def test_out_of_order_commits_never_skip_an_event(
    pg_engine: AsyncEngine, make: Make, clock: FakeClock, first: str
) -> None:
    """Two writers hold their transactions open; the one that inserted second must not get
    its event visible before the first one's: it waits for the first one's commit."""
    streamer = make(pg_engine, poll_frequency=30)
    topic = new_topic()
    receiver = await streamer.new_receiver(topic, "r")
    second = "b" if first == "a" else "a"
    conns = {name: await pg_engine.connect() for name in (second, first)}
    try:
        txns = {name: await conn.begin() for name, conn in conns.items()}
        await conns[second].exec_driver_sql("SELECT 1")  # the later writer began first
        await insert_events(conns[first], topic, [(first, 1, {})], clock.now())
        later = asyncio.ensure_future(
            insert_events(conns[second], topic, [(second, 2, {})], clock.now())
        )

        async def later_blocked() -> bool:
            return await _blocked_inserts(pg_engine, topic) == 1

        await until(later_blocked, "the second insert to wait for the first transaction")
        recv = asyncio.ensure_future(receiver.recv())
        await waiting(receiver)
        assert not later.done() and not recv.done()
        await txns[first].commit()
        await asyncio.wait_for(later, 2)
        await txns[second].commit()
        # both woken by NOTIFY (insert_events sends it at commit)
        one, ack = await asyncio.wait_for(recv, 2)
        await ack()
        (two,) = await take(receiver, 1)
        assert (one.foreign_id, two.foreign_id) == (first, second)
        assert one.id < two.id
    finally:
        for conn in conns.values():
            await conn.close()


async def test_concurrent_senders_deliver_everything_in_order(
    pg_engine: AsyncEngine, make: Make
) -> None:
    writers = [make(pg_engine) for _ in range(4)]
    reader = make(pg_engine, poll_frequency=0.05)
    topic = new_topic()
    receiver = await reader.new_receiver(topic, "r")
    count = 25

    async def write(n: int) -> None:
        sender = await writers[n].new_sender(topic)
        for i in range(count):
            await sender.send(f"{n}-{i}", 1, {})

    async def read() -> list[Event]:
        return await take(receiver, len(writers) * count)

    reading = asyncio.ensure_future(read())
    await asyncio.gather(*(write(n) for n in range(len(writers))))
    got = await asyncio.wait_for(reading, 10)
    assert sorted(e.foreign_id for e in got) == sorted(
        f"{n}-{i}" for n in range(len(writers)) for i in range(count)
    )
    assert [e.id for e in got] == sorted(e.id for e in got)
    assert [e.id for e in got] == await stored_ids(pg_engine, topic)


class _Freezer:
    """A TCP proxy to the test's PostgreSQL that can stop forwarding (the sockets stay open,
    nothing gets through): a database that went silent, as behind a network partition."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if self.frozen.is_set():
                        await asyncio.Event().wait()  # swallowed: never forwarded
                    dst.write(data)
                    await dst.drain()

        for t in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = asyncio.ensure_future(t)
            self.tasks.add(task)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_close_gives_up_on_a_database_that_went_silent(
    pg_engine: AsyncEngine, pg_schema: str
) -> None:
    """With the database silent (a partition: no answer, no error), ``close()`` still
    returns, after ``close_timeout``: the receivers' last acks and the LISTEN connection are
    given up (the acks not written are delivered again), instead of waiting on the socket."""
    url = pg_engine.url
    proxy = _Freezer(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    engine = create_async_engine(
        url.set(port=port), connect_args={"server_settings": {"search_path": pg_schema}}
    )
    streamer = SQLStreamer(engine, poll_frequency=30, ack_interval=60, close_timeout=0.5)
    try:
        topic = new_topic()
        await send(streamer, topic, "e1")
        receiver = await streamer.new_receiver(topic, "r")
        await take(receiver, 1)  # acked, not yet written (ack_interval 60 s)
        waiting_task = asyncio.ensure_future(receiver.recv())
        await waiting(receiver)  # its LISTEN connection is open, through the proxy
        proxy.frozen.set()
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(streamer.close(), 10)
        assert asyncio.get_running_loop().time() - t0 < 5
        waiting_task.cancel()
        await asyncio.gather(waiting_task, return_exceptions=True)
    finally:
        await proxy.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(engine.dispose(), 5)


async def test_a_receiver_closes_on_a_database_that_went_silent(
    pg_engine: AsyncEngine, pg_schema: str
) -> None:
    """A consumer stopped while the database is silent closes its receiver with a read under
    way and an ack not yet written: ``receiver.close()`` returns after ``close_timeout``
    (what a workflow's ``stop()`` waits for), instead of waiting on the socket."""
    url = pg_engine.url
    proxy = _Freezer(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    engine = create_async_engine(
        url.set(port=port), connect_args={"server_settings": {"search_path": pg_schema}}
    )
    streamer = SQLStreamer(engine, poll_frequency=0.05, ack_interval=60, close_timeout=0.5)
    try:
        topic = new_topic()
        await send(streamer, topic, "e1")
        receiver = await streamer.new_receiver(topic, "r")
        await take(receiver, 1)  # acked, not yet written (ack_interval 60 s)
        proxy.frozen.set()
        reading = asyncio.ensure_future(receiver.recv())  # polls: a read that never returns

        async def read_under_way() -> bool:
            return receiver._fetching is not None

        await until(read_under_way, "a read of the silent database")
        reading.cancel()  # as stop() cancels the consumer
        await asyncio.gather(reading, return_exceptions=True)
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(receiver.close(), 10)
        assert asyncio.get_running_loop().time() - t0 < 5
    finally:
        await proxy.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(streamer.close(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(engine.dispose(), 5)
