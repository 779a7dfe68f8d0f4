"""The engine end to end with the event streamer on Kafka and everything else on SQL (SQLite
and PostgreSQL): the scenarios of test_e2e_backends.py, a connector on a Kafka topic, and
worker processes sharing the load or replacing a killed one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow import ConnectorEvent, Workflow
from workflow.adapters.kafkastreamer import KafkaConnector, KafkaStreamer
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlschema import create_schema
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.adapters.sqltimeout import SQLTimeoutStore
from workflow.testing import FakeClock, wait_for

from . import test_composition as comp
from . import test_e2e_backends as e2e
from . import test_failure_handling as fh
from .backends import Backend
from .procs.kafka_worker import FAST, build, namespace, need_kafka
from .procs.worker import count_done
from .support import Obj, Status
from .test_multiprocess import ROOT, Database, check_each_transition_once, wait_until_done
from .test_multiprocess import database as database  # the fixture: SQLite file or PostgreSQL

pytestmark = pytest.mark.usefixtures("kafka")


@pytest.fixture
def kafka() -> str:
    return need_kafka()


class KafkaBackend(Backend):
    """Streamer on Kafka (one namespace per test), the rest on the SQL database."""

    bootstrap: str = ""
    ns: str = ""

    def adapters(self) -> tuple[Any, Any, Any, Any]:
        assert self.engine is not None
        streamer = KafkaStreamer(self.bootstrap, namespace=self.ns, clock=self.clock, **FAST)
        roles = SQLRoleScheduler(self.engine)
        self._closers += [streamer, roles]
        return (
            streamer,
            SQLRecordStore(self.engine),
            roles,
            SQLTimeoutStore(self.engine, clock=self.clock),
        )


@pytest.fixture
async def backend(
    kafka: str, sql_engine: AsyncEngine, clock: FakeClock, registry: CollectorRegistry
) -> AsyncIterator[Backend]:
    b = KafkaBackend("kafka", clock, registry, sql_engine)
    b.bootstrap, b.ns = kafka, namespace()
    yield b
    await b.close()


async def test_steps_and_history(backend: Backend) -> None:
    await e2e.test_steps_and_history(backend)


async def test_sharded_steps_apply_each_transition_once(backend: Backend) -> None:
    await e2e.test_sharded_steps_apply_each_transition_once(backend)


async def test_callbacks(backend: Backend) -> None:
    await e2e.test_callbacks(backend)


async def test_timeouts_fire_on_the_clock_and_wait_for_resume(backend: Backend) -> None:
    await e2e.test_timeouts_fire_on_the_clock_and_wait_for_resume(backend)


async def test_hooks_pause_resume_cancel_and_delete(backend: Backend) -> None:
    await e2e.test_hooks_pause_resume_cancel_and_delete(backend)


async def test_a_new_process_continues_where_the_last_stopped(backend: Backend) -> None:
    await e2e.test_a_new_process_continues_where_the_last_stopped(backend)


async def test_a_kafka_connector_triggers_runs(backend: Backend, kafka: str) -> None:
    topic = f"{backend.ns}orders"  # type: ignore[attr-defined]
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        await producer.partitions_for(topic)  # the broker creates it (several partitions)
        for i in range(20):
            await producer.send(topic, b"{}", key=f"order-{i}".encode(), headers=[("type", b"new")])
        await producer.flush()
    finally:
        await producer.stop()

    async def start(wf: Workflow[Obj, Status], event: ConnectorEvent) -> None:
        await wf.trigger(event.foreign_id, initial_value=Obj(note=event.type))

    b = e2e.chain("connected")
    b.add_connector("orders", KafkaConnector(topic, kafka, **FAST), start)
    wf = backend.build(b)
    async with wf:
        for i in range(20):
            run = await wait_for(wf, f"order-{i}", lambda r: r.status == Status.DONE, timeout=10)
            assert run.object == Obj(count=11, note="new")


# -- worker processes ------------------------------------------------------------------------


async def start_worker(db: Database, bootstrap: str, ns: str, *extra: str) -> Any:
    args = [sys.executable, "-m", "tests.procs.kafka_worker", "--url", db.url]
    args += ["--bootstrap", bootstrap, "--namespace", ns, "--lease", "3.0"]
    if db.schema:
        args += ["--schema", db.schema]
    proc = await asyncio.create_subprocess_exec(
        *args, *extra, cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ}
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return proc


async def trigger(db: Database, bootstrap: str, ns: str, n: int) -> AsyncEngine:
    engine = db.engine()
    await create_schema(engine)
    wf, streamer, roles = build(engine, bootstrap, ns, registry=CollectorRegistry())
    for i in range(n):
        await wf.trigger(f"order-{i}")  # a producer-only process: never calls run()
    await streamer.close()
    await roles.close()
    return engine


async def stop_worker(proc: Any) -> int:
    """SIGTERM, wait, and return how many step calls it made."""
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    return int(out.decode().split("handled ")[-1])


async def test_two_worker_processes_split_one_workflow(database: Database, kafka: str) -> None:
    n, ns = (300 if database.schema else 100), namespace()  # SQLite writes one at a time
    setup = database.engine()
    await create_schema(setup)
    await setup.dispose()
    # each process may hold only its own shard's roles of the parallel_count=2 steps
    workers = [
        await start_worker(database, kafka, ns, "--parallel", "2", "--shard", str(k))
        for k in (1, 2)
    ]
    try:
        engine = await trigger(database, kafka, ns, n)
        await wait_until_done(engine, n, timeout=60)
        await check_each_transition_once(engine, n)
    finally:
        handled = [await stop_worker(w) for w in workers]
    await engine.dispose()
    assert all(h > 0 for h in handled), handled
    assert sum(handled) >= 3 * n


async def test_a_killed_worker_is_replaced_and_redelivers(database: Database, kafka: str) -> None:
    n, ns = 600, namespace()  # enough that the kill lands mid-load on a fast SQLite too
    setup = database.engine()
    await create_schema(setup)
    await setup.dispose()
    first = await start_worker(database, kafka, ns)
    engine = await trigger(database, kafka, ns, n)
    deadline = time.monotonic() + 60
    while await count_done(engine) < n // 5:
        assert time.monotonic() < deadline, "the first worker made no progress"
        await asyncio.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # mid-stream: received, unacked events are left behind
    await first.wait()
    assert await count_done(engine) < n, "the load finished before the kill; raise n"
    second = await start_worker(database, kafka, ns)
    try:
        await wait_until_done(engine, n, timeout=60)
        await check_each_transition_once(engine, n)
    finally:
        assert await stop_worker(second) > 0
    await engine.dispose()


# -- failure handling on Kafka (the scenarios of test_failure_handling.py) -------------------


async def test_a_failing_run_delays_no_other_run(backend: Backend) -> None:
    await fh.test_a_failing_run_delays_no_other_run(backend)


async def test_a_policy_backs_off_then_moves_to_its_failure_status(backend: Backend) -> None:
    await fh.test_a_policy_backs_off_then_moves_to_its_failure_status(backend)


async def test_a_retry_survives_a_restart(backend: Backend) -> None:
    await fh.test_a_retry_survives_a_restart(backend)


async def test_pauses_say_why_and_pause_retry_resumes_only_some(backend: Backend) -> None:
    await fh.test_pauses_say_why_and_pause_retry_resumes_only_some(backend)


async def test_timers_count_from_arrival_and_go_when_the_run_leaves(backend: Backend) -> None:
    await fh.test_timers_count_from_arrival_and_go_when_the_run_leaves(backend)


async def test_a_trigger_with_a_used_key_returns_the_first_run(backend: Backend) -> None:
    await fh.test_a_trigger_with_a_used_key_returns_the_first_run(backend)


async def test_a_status_with_a_failing_step_and_a_timer_arms_the_timer_once(
    backend: Backend,
) -> None:
    await fh.test_a_status_with_a_failing_step_and_a_timer_arms_the_timer_once(backend)


# -- composition on Kafka (the scenarios of test_composition.py) -----------------------------


async def test_children_start_with_their_parent_and_the_parent_collects_them(
    backend: Backend,
) -> None:
    await comp.test_children_start_with_their_parent_and_the_parent_collects_them(backend)


async def test_the_parent_waits_until_the_last_child_finishes(backend: Backend) -> None:
    await comp.test_the_parent_waits_until_the_last_child_finishes(backend)


async def test_no_child_is_stored_when_the_parent_write_is_refused(backend: Backend) -> None:
    await comp.test_no_child_is_stored_when_the_parent_write_is_refused(backend)


async def test_cancelling_a_parent_cancels_its_unfinished_children(backend: Backend) -> None:
    await comp.test_cancelling_a_parent_cancels_its_unfinished_children(backend)


async def test_deleting_a_parents_data_deletes_its_childrens(backend: Backend) -> None:
    await comp.test_deleting_a_parents_data_deletes_its_childrens(backend)


async def test_a_fan_in_deadline_moves_the_parent_on(backend: Backend) -> None:
    await comp.test_a_fan_in_deadline_moves_the_parent_on(backend)


async def test_a_saga_undoes_the_completed_steps_newest_first(backend: Backend) -> None:
    await comp.test_a_saga_undoes_the_completed_steps_newest_first(backend)


async def test_a_failing_compensation_pauses_for_a_person_and_resumes(backend: Backend) -> None:
    await comp.test_a_failing_compensation_pauses_for_a_person_and_resumes(backend)
