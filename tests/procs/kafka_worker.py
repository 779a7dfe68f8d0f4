"""A worker process for the Kafka multi-process tests: runs the 3-step "load" workflow with the
event streamer on Kafka and the record store and role scheduler on a shared SQL database, until
SIGTERM (graceful) or SIGKILL.

    python -m tests.procs.kafka_worker --bootstrap HOST:PORT --namespace NS --url URL
        [--schema S] [--lease 1.0] [--parallel 2] [--shard K]

With ``--shard K`` the process only takes the roles of shard K of the sharded (``-of-``)
consumers, and shard 1 also takes every other role: two processes with ``--shard 1`` and
``--shard 2`` each do part of the work of a ``--parallel 2`` workflow.

It prints "ready" once its processes are launched and, on SIGTERM, "handled N" (the number of
step calls it made) before exiting. Each step appends its name to the run's object, so a run's
stored history shows exactly which transitions were applied.

Also the shared helpers of the Kafka tests: :func:`need_kafka` and :data:`FAST`.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import os
import signal
import uuid
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.procs.lifetime import die_with_parent
from workflow import Builder, Lease, RoleScheduler, Run, Workflow
from workflow.adapters.kafkastreamer import KafkaStreamer
from workflow.adapters.sqlrolescheduler import SQLRoleScheduler
from workflow.adapters.sqlstore import SQLRecordStore

from ..support import need_service
from .worker import engine_for

FAST: dict[str, Any] = {"consumer_options": {"fetch_max_wait_ms": 10}}
"""Test settings for Tansu, which holds every fetch for ``fetch_max_wait_ms`` even when data
arrives (real Kafka answers at once)."""


def need_kafka() -> str:
    """The test broker's bootstrap address; skip when unset, but fail in CI."""
    return need_service(
        os.environ.get("WORKFLOW_TEST_KAFKA_BOOTSTRAP", ""),
        "Kafka tests need WORKFLOW_TEST_KAFKA_BOOTSTRAP (.ci/run starts a broker)",
    )


def namespace() -> str:
    """A fresh prefix for topics and consumer groups, so tests never share them."""
    return f"t{uuid.uuid4().hex[:10]}."


class ShardRoles:
    """A role scheduler that never grants the roles of other shards (see ``--shard``)."""

    def __init__(self, inner: RoleScheduler, shard: int) -> None:
        self._inner = inner
        self._shard = shard

    async def await_role(self, role: str) -> Lease:
        mine = f"-{self._shard}-of-" in role if "-of-" in role else self._shard == 1
        if not mine:
            await asyncio.Event().wait()  # never: the other process holds it
        return await self._inner.await_role(role)


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    CHARGED = 2
    SHIPPED = 3
    DONE = 4


class Order(BaseModel):
    steps: list[str] = []


def build(
    engine: AsyncEngine,
    bootstrap: str,
    ns: str,
    *,
    lease: float = 1.0,
    parallel: int = 1,
    registry: CollectorRegistry,
    counter: list[int] | None = None,
    shard: int | None = None,
) -> tuple[Workflow[Order, Status], KafkaStreamer, SQLRoleScheduler]:
    def step(name: str, nxt: Status) -> object:
        async def fn(run: Run[Order, Status]) -> Status:
            if counter is not None:
                counter[0] += 1
            run.object.steps.append(name)
            return nxt

        fn.__name__ = name
        return fn

    b = Builder[Order, Status]("load")
    b.add_step(Status.STARTED, step("charge", Status.CHARGED), Status.CHARGED).with_options(  # type: ignore[arg-type]
        parallel_count=parallel
    )
    b.add_step(Status.CHARGED, step("ship", Status.SHIPPED), Status.SHIPPED).with_options(  # type: ignore[arg-type]
        parallel_count=parallel
    )
    b.add_step(Status.SHIPPED, step("done", Status.DONE), Status.DONE)  # type: ignore[arg-type]
    streamer = KafkaStreamer(bootstrap, namespace=ns, **FAST)
    roles = SQLRoleScheduler(engine, lease=timedelta(seconds=lease))
    wf = b.build(
        streamer,
        SQLRecordStore(engine),
        roles if shard is None else ShardRoles(roles, shard),
        metrics_registry=registry,
        default_options={"err_backoff": 0.05, "polling_frequency": 0.2, "concurrency": 16},
    )
    return wf, streamer, roles


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--shard", type=int, default=None)
    args = parser.parse_args()
    engine = engine_for(args.url, args.schema)
    counter = [0]
    wf, streamer, roles = build(
        engine,
        args.bootstrap,
        args.namespace,
        lease=args.lease,
        parallel=args.parallel,
        registry=CollectorRegistry(),
        counter=counter,
        shard=args.shard,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await wf.run()
    print("ready", flush=True)
    await stop.wait()
    await wf.stop()
    await roles.close()
    await streamer.close()
    await engine.dispose()
    print(f"handled {counter[0]}", flush=True)


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
