"""The cluster: services in the database namespace, worker hosts, a producer, the scenarios'
faults and the collection of what the checker reads.

:class:`Cluster` (synchronous, one per test module) builds the namespaces (:class:`Net`),
starts PostgreSQL (``track_commit_timestamp = on``: the checker orders versions by commit
time) and Tansu on the service address. :func:`run_scenario` runs one scenario on a fresh
database of it: three hosts (:mod:`tests.procs.cluster_worker`), a steady load, the fault,
the heal, the drain, a graceful stop of every host, then :func:`checker.check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from workflow.adapters.sqlschema import create_schema, make_engine

from ..procs import cluster_worker
from .checker import Call, LeaseSpan, Report, Version, check
from .net import ROOT, Net

__all__ = ["HOSTS", "SHORT", "LONG", "Cluster", "Result", "Timing", "run_scenario"]

HOSTS = ["w1", "w2", "w3"]
_PG_AS_POSTGRES = ["runuser", "-u", "postgres", "--"]
_PG_STOP = ["-m", "immediate", "-w", "stop"]
PG_PORT, KAFKA_PORT = 5432, 9092


@dataclass(frozen=True)
class Timing:
    """Seconds (``rate``: triggers per second)."""

    lease: float
    rate: float
    warm: float
    hold: float
    brief: float
    tail: float
    drain: float


SHORT = Timing(lease=2.0, rate=12, warm=1.5, hold=5.0, brief=3.0, tail=1.5, drain=60)
"""The default suite's version: a fault a little over two leases long."""
LONG = Timing(lease=3.0, rate=25, warm=10, hold=20, brief=8, tail=15, drain=180)
"""scripts/cluster.sh (``WORKFLOW_CLUSTER=long``)."""


def timing() -> Timing:
    return LONG if os.environ.get("WORKFLOW_CLUSTER") == "long" else SHORT


def _sh(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def _kafka_ready(host: str, port: int) -> bool:
    """Does a Kafka broker answer ApiVersions v0 on host:port?"""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(2)
            cid = b"probe"
            body = struct.pack(">hhih", 18, 0, 7, len(cid)) + cid
            s.sendall(struct.pack(">i", len(body)) + body)
            data = s.recv(10)
            return len(data) >= 10 and struct.unpack(">ih", data[4:10]) == (7, 0)
    except OSError:
        return False


class Cluster:
    """The namespaces, PostgreSQL and (``kafka=True``) Tansu. :meth:`close` tears it all
    down (also on failure: the constructor cleans up what it built before raising)."""

    def __init__(self, *, kafka: bool) -> None:
        self.net = Net.create(HOSTS)
        self.tansu: subprocess.Popen[bytes] | None = None
        try:
            self._start_postgres()
            if kafka:
                self._start_tansu()
        except BaseException:
            self.close()
            raise

    @property
    def ip(self) -> str:
        return self.net.service_ip

    @property
    def bootstrap(self) -> str:
        return f"{self.ip}:{KAFKA_PORT}"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@{self.ip}:{PG_PORT}/{database}"

    def _start_postgres(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("no PostgreSQL installation (scripts/test.sh installs it)")
        self.pg_bin = os.path.dirname(bins[-1])
        self.pg_dir = os.path.join(self.net.scratch, "pg")
        os.makedirs(self.pg_dir)
        shutil.chown(self.pg_dir, "postgres", "postgres")
        data = os.path.join(self.pg_dir, "data")
        pg = ["runuser", "-u", "postgres", "--"]
        _sh(*pg, f"{self.pg_bin}/initdb", "-D", data, "-U", "postgres", "--auth=trust")
        with open(os.path.join(data, "pg_hba.conf"), "a") as hba:
            hba.write(f"host all all {self.net.block} trust\n")
        opts = (
            f"-p {PG_PORT} -c listen_addresses={self.ip} -k {self.pg_dir} -c max_connections=400"
            " -c track_commit_timestamp=on -c fsync=off -c synchronous_commit=off"
        )
        if os.environ.get("CI_PG_DURABLE") == "1":
            opts = opts.replace(" -c fsync=off -c synchronous_commit=off", "")
        log = os.path.join(self.pg_dir, "server.log")
        _sh(
            *self.net.exec_prefix("db"),
            *pg,
            f"{self.pg_bin}/pg_ctl",
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "start",
        )
        self.pg_data = data

    def _start_tansu(self) -> None:
        binary = os.environ.get("WORKFLOW_TEST_TANSU_BIN", "")
        if not binary:
            raise RuntimeError("the Kafka cluster tests need WORKFLOW_TEST_TANSU_BIN")
        url = f"tcp://{self.bootstrap}"
        with open(os.path.join(self.net.scratch, "tansu.log"), "wb") as log:
            self.tansu = subprocess.Popen(
                [
                    *self.net.exec_prefix("db"),
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not _kafka_ready(self.ip, KAFKA_PORT):
            if self.tansu.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Tansu did not start in the database namespace")
            time.sleep(0.05)

    def close(self) -> None:
        if self.tansu is not None:
            self.tansu.kill()
            self.tansu.wait()
        if getattr(self, "pg_data", None):
            subprocess.run(
                [*_PG_AS_POSTGRES, f"{self.pg_bin}/pg_ctl", "-D", self.pg_data, *_PG_STOP],
                capture_output=True,
                timeout=60,
            )
        self.net.destroy()


# -- one scenario -----------------------------------------------------------------------------


@dataclass
class Host:
    name: str
    journal: str
    proc: asyncio.subprocess.Process
    stats: dict[str, Any] = field(default_factory=dict)
    exited_at: float | None = None

    async def stop(self, timeout: float = 30) -> dict[str, Any]:
        """SIGTERM, and the worker's statistics once it exited (0)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = await asyncio.wait_for(asyncio.shield(self.proc.communicate()), timeout)
        except TimeoutError:
            self.proc.send_signal(signal.SIGUSR1)  # its tasks' stacks, on stderr
            await asyncio.sleep(1)
            raise AssertionError(f"{self.name} did not stop within {timeout} s") from None
        self.exited_at = self.exited_at or time.time()
        assert self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}"
        self.stats = json.loads(out.decode().strip().splitlines()[-1])
        return self.stats


@dataclass
class Result:
    scenario: str
    streamer: str
    report: Report
    measures: dict[str, Any]

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "streamer": self.streamer,
            **self.report.stats,
            "anomalies": len(self.report.anomalies),
            **self.measures,
        }


class Scenario:
    """The running cluster of one scenario: hosts, the producer and the fault helpers."""

    def __init__(self, cluster: Cluster, name: str, streamer: str, t: Timing) -> None:
        self.cluster, self.name, self.streamer, self.t = cluster, name, streamer, t
        self.db = f"s_{name.replace('-', '_')}_{streamer}_{uuid.uuid4().hex[:6]}"
        self.ns = f"c{uuid.uuid4().hex[:8]}."
        self.hosts: dict[str, Host] = {}
        self.triggers: dict[str, str] = {}
        self.measures: dict[str, Any] = {}
        self.engine: AsyncEngine | None = None
        self._producing = True

    @property
    def net(self) -> Net:
        return self.cluster.net

    async def setup(self) -> None:
        admin = make_engine(self.cluster.url("postgres"), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f"CREATE DATABASE {self.db}")
        await admin.dispose()
        self.engine = make_engine(self.cluster.url(self.db))
        await create_schema(self.engine)

    async def start_host(self, name: str) -> Host:
        journal = os.path.join(self.net.scratch, f"{self.db}-{name}.journal")
        args = [sys.executable, "-m", "tests.procs.cluster_worker", "--url"]
        args += [self.cluster.url(self.db), "--host", name, "--journal", journal]
        args += ["--lease", str(self.t.lease)]
        if self.streamer == "kafka":
            args += ["--kafka", self.cluster.bootstrap, "--namespace", self.ns]
        proc = await asyncio.create_subprocess_exec(
            *self.net.exec_prefix(name), *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"ready", f"{name} did not start: {line!r}"
        host = self.hosts[name] = Host(name, journal, proc)
        return host

    # -- load -------------------------------------------------------------------------------

    async def produce(self) -> None:
        """Trigger ``rate`` runs a second until :meth:`stop_producing`; each trigger's outcome
        goes to :attr:`triggers` (``unknown`` when it failed or took over 5 s)."""
        assert self.engine is not None
        kafka = self.cluster.bootstrap if self.streamer == "kafka" else None
        wf, streamer, roles = cluster_worker.build(
            self.engine,
            None,
            lease=self.t.lease,
            kafka=kafka,
            namespace=self.ns,
            registry=CollectorRegistry(),
        )
        start = time.monotonic()
        i = 0
        try:
            while self._producing:
                fid = f"{self.name}-{i}"
                self.triggers[fid] = "unknown"
                try:
                    await asyncio.wait_for(wf.trigger(fid), 5)
                    self.triggers[fid] = "ok"
                except Exception:
                    pass
                i += 1
                pause = start + i / self.t.rate - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)  # the load's pace
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(streamer.close(), 10)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(roles.close(), 10)

    async def count(self, sql: str) -> int:
        assert self.engine is not None
        async with self.engine.connect() as conn:
            return int(await conn.scalar(sa.text(sql)) or 0)

    async def wait_done(self, n: int, timeout: float) -> float:
        """Seconds until ``n`` runs completed (a deadline-bounded poll of the database)."""
        start = time.monotonic()
        while (done := await self._done()) < n:
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{self.name}/{self.streamer}: only {done} of {n} done")
            await asyncio.sleep(0.1)
        return time.monotonic() - start

    async def _done(self) -> int:
        return await self.count("SELECT count(*) FROM workflow_records WHERE run_state = 5")

    async def held_roles(self) -> dict[str, str]:
        """Role -> host of every unexpired lease."""
        assert self.engine is not None
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT role, holder FROM workflow_leases WHERE expires_at > clock_timestamp()"
                )
            )
            return {role: holder.split(":")[0] for role, holder in rows}

    async def busiest_host(self) -> tuple[str, set[str]]:
        """The host holding the most roles now, and its roles."""
        held = await self.held_roles()
        mine: dict[str, set[str]] = {h: set() for h in self.hosts}
        for role, host in held.items():
            mine.setdefault(host, set()).add(role)
        host = max(mine, key=lambda h: len(mine[h]))
        return host, mine[host]

    async def wait_roles_moved(self, victim: str, roles: set[str], timeout: float) -> float:
        """Seconds until ``victim`` holds none of ``roles`` and each of them that is a step's
        consumer (always wanted: the load goes on) is held by another host."""
        start = time.monotonic()
        steps = {r for r in roles if "-consumer-" in r}
        while True:
            held = await self.held_roles()
            if all(held.get(r) != victim for r in roles) and all(
                held.get(r) not in (None, victim) for r in steps
            ):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                await self.dump()
                raise AssertionError(f"roles of {victim} did not move: {held}")
            await asyncio.sleep(0.05)

    async def dump(self) -> None:
        """Every running host prints its tasks' stacks (on stderr): for a failure's report."""
        for h in self.hosts.values():
            if h.proc.returncode is None:
                h.proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(1)  # they print asynchronously; the failure follows

    def stop_producing(self) -> None:
        self._producing = False

    # -- read back --------------------------------------------------------------------------

    async def collect(self, end: float) -> Report:
        assert self.engine is not None
        async with self.engine.connect() as conn:
            runs = {
                run_id: (fid, status, state)
                for run_id, fid, status, state in await conn.execute(
                    sa.text(
                        "SELECT run_id, foreign_id, status, run_state FROM workflow_records "
                        "WHERE workflow_name = :n"
                    ),
                    {"n": cluster_worker.NAME},
                )
            }
            rows = await conn.execute(
                sa.text(
                    "SELECT run_id, version, status, run_state, object, attempt, "
                    "extract(epoch FROM pg_xact_commit_timestamp(xmin)) "
                    "FROM workflow_record_history"
                )
            )
            history = [
                Version(r[0], r[1], r[2], r[3], tuple(_obj(r[4])["steps"]), r[5], float(r[6]))
                for r in rows
            ]
        calls: list[Call] = []
        leases: list[LeaseSpan] = []
        for host in self.hosts.values():
            db = sqlite3.connect(host.journal)
            try:
                calls += [
                    Call(*row)
                    for row in db.execute(
                        "SELECT run_id, status, attempt, host, started, finished, outcome "
                        "FROM calls"
                    )
                ]
                leases += [
                    LeaseSpan(*row)
                    for row in db.execute("SELECT role, host, granted, lost FROM leases")
                ]
            finally:
                db.close()
        self.history, self.calls, self.leases = history, calls, leases
        return check(self.triggers, runs, history, calls, leases, end=end)

    def stall(self, since: float, until: float) -> float:
        """The longest time in [since, until] in which some step made no transition (the
        time its role took to recover): gaps between commits leaving each status."""
        worst = 0.0
        for status in (1, 2, 3):
            firsts: dict[str, float] = {}
            for v in self.history:
                if v.status == status + 1 and (
                    v.run_id not in firsts or v.committed < firsts[v.run_id]
                ):
                    firsts[v.run_id] = v.committed
            times = sorted(t for t in firsts.values() if since <= t <= until)
            points = [since, *times, until] if times else [since, until]
            worst = max(worst, max(b - a for a, b in itertools.pairwise(points)))
        return round(worst, 2)

    def revoked_after(self, victim: str, at: float) -> float | None:
        """How long after ``at`` the victim's last lease held at ``at`` ended."""
        ends = [
            (s.lost or time.time()) - at
            for s in self.leases
            if s.host == victim and s.granted <= at and (s.lost is None or s.lost > at)
        ]
        return round(max(ends), 2) if ends else None


def _obj(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


Fault = Callable[[Scenario], Awaitable[None]]


async def run_scenario(
    cluster: Cluster, name: str, streamer: str, fault: Fault, t: Timing | None = None
) -> Result:
    """Run ``fault`` under a steady load on a fresh database and three fresh hosts; check."""
    t = t or timing()
    sc = Scenario(cluster, name, streamer, t)
    await sc.setup()
    producer: asyncio.Task[None] | None = None
    try:
        if name == "latency":
            cluster.net.relay("w1", [PG_PORT, KAFKA_PORT])
        await asyncio.gather(*(sc.start_host(h) for h in HOSTS))
        producer = asyncio.create_task(sc.produce())
        await sc.wait_done(int(t.rate * t.warm / 2) or 1, timeout=60)
        await asyncio.sleep(t.warm)  # the steady load before the fault
        sc.measures["fault_at"] = time.time()
        await fault(sc)
        cluster.net.heal()
        healed = sc.measures["healed_at"] = time.time()
        await asyncio.sleep(t.tail)  # the load goes on after the heal
        sc.stop_producing()
        await producer
        ok = sum(1 for v in sc.triggers.values() if v == "ok")
        sc.measures["drain_s"] = round(time.time() - healed, 2)
        await sc.wait_done(ok, timeout=t.drain)
        sc.measures["drain_s"] = round(time.time() - healed, 2)
        await asyncio.gather(*(h.stop() for h in sc.hosts.values() if h.exited_at is None))
        sc.measures["cas_refused"] = sum(h.stats["cas_refused"] for h in sc.hosts.values())
        end = time.time()
        report = await sc.collect(end)
        fault_at = sc.measures["fault_at"]
        sc.measures["stall_s"] = sc.stall(fault_at, healed + t.tail)
        victim = sc.measures.get("victim")
        if victim:
            sc.measures["victim_revoked_s"] = sc.revoked_after(victim, fault_at)
        for key in ("fault_at", "healed_at"):
            sc.measures.pop(key)
        return Result(name, streamer, report, sc.measures)
    finally:
        sc.stop_producing()
        if producer is not None and not producer.done():
            producer.cancel()
            with contextlib.suppress(BaseException):
                await producer
        for h in sc.hosts.values():
            if h.proc.returncode is None:
                h.proc.kill()
                await h.proc.wait()
        cluster.net.heal()
        cluster.net.drop_relay()
        if sc.engine is not None:
            await sc.engine.dispose()


# -- the faults -------------------------------------------------------------------------------


async def partition_worker(sc: Scenario, direction: str = "both") -> None:
    """Cut the busiest host off (``direction``) for ``hold`` (over two leases): its roles
    must move; then heal."""
    victim, roles = await sc.busiest_host()
    assert roles, "no host holds a role"
    sc.measures.update(victim=victim, victim_roles=len(roles))
    start = time.monotonic()
    sc.net.partition(victim, direction=direction)
    sc.measures["takeover_s"] = round(await sc.wait_roles_moved(victim, roles, sc.t.hold * 4), 2)
    await _until(start + sc.t.hold)


async def one_way(sc: Scenario) -> None:
    """The database's replies to the busiest host are dropped: its statements still run."""
    await partition_worker(sc, direction="from_db")


async def latency(sc: Scenario) -> None:
    """200 ms each way and 5 % loss each way on w1's link for ``hold``."""
    sc.measures["victim"] = "w1"
    start = time.monotonic()
    sc.net.netem("w1", 200, 5)
    await _until(start + sc.t.hold)


async def db_down(sc: Scenario) -> None:
    """Nobody (no host, not the producer) reaches the database host for ``brief``."""
    start = time.monotonic()
    sc.net.partition(*HOSTS, "root")
    await _until(start + sc.t.brief)


async def stop_partitioned(sc: Scenario) -> None:
    """Cut the busiest host off, then stop it (SIGTERM: ``wf.stop()``) while cut off; it must
    exit; the others take its roles; then heal."""
    victim, roles = await sc.busiest_host()
    sc.measures.update(victim=victim, victim_roles=len(roles))
    start = time.monotonic()
    sc.net.partition(victim)
    host = sc.hosts[victim]
    stopping = asyncio.create_task(host.stop(timeout=sc.t.hold * 6))
    sc.measures["takeover_s"] = round(await sc.wait_roles_moved(victim, roles, sc.t.hold * 4), 2)
    await stopping
    host.exited_at = time.time()
    sc.measures["victim_stop_s"] = host.stats["stop_s"]
    sc.measures["victim_streamer_close_hung"] = host.stats["streamer_close_hung"]
    await _until(start + sc.t.hold)


async def _until(deadline: float) -> None:
    """Keep the fault on until monotonic ``deadline`` (the fault's length is the scenario)."""
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


FAULTS: dict[str, Fault] = {
    "partition": partition_worker,
    "one-way": one_way,
    "latency": latency,
    "db-down": db_down,
    "stop": stop_partitioned,
}
