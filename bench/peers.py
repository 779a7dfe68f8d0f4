"""Peers: the same 3-step workflow on DBOS (``dbos`` on PyPI), beside this engine on the SQL
adapters, on the same SQLite file type and the same PostgreSQL server.

    python -m bench.peers [--quick] [--runs N] [--seq-runs M] [--backend sqlite|postgres|both]
                          [--venv DIR] [--no-install] [--pg-url URL] [--no-write]

DBOS pins its own SQLAlchemy and psycopg, so it runs in its own virtualenv (default
``/tmp/venv-dbos-bench``, created with ``pip install dbos`` when missing) as a child process:
this same file, run by the venv's interpreter with ``--dbos-worker`` (that path imports only
the standard library and DBOS). Per backend:

- DBOS: a fresh system database (a new SQLite file in a temporary directory; on PostgreSQL a
  new database ``bench_dbos_<hex>`` that DBOS creates itself and this script drops with
  ``DROP DATABASE … WITH (FORCE)`` afterwards, even when the worker fails), DBOS defaults.
  One warm-up workflow, then N workflows started back to back with
  ``DBOS.start_workflow_async`` and awaited together (throughput), then M workflows one at a
  time (latency). Each workflow is 3 sequential ``async`` ``@DBOS.step()``s that each mutate a
  small dict, as our steps mutate a small object. Verified by reading the system database:
  N + M + 1 SUCCESS workflows and 3 step rows for each.
- This engine: ``bench.sql.run_config`` for the same N at step concurrency 16 (fresh tables,
  warmed up; then M idle-latency runs and N throughput runs, every run checked in the
  database), measured in the same invocation so both see the same machine load.

Writes the "Peers" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import (
    command_line,
    fmt_int,
    load_average,
    machine_facts_markdown,
    markdown_table,
    percentiles,
    print_table,
    utc_now,
    write_section,
)

__all__ = ["PeerResult", "main", "measure"]

SECTION = "Peers"
STEPS = 3
CONCURRENCY = 16
FULL_RUNS, QUICK_RUNS = 500, 50
FULL_SEQ, QUICK_SEQ = 50, 10
DEFAULT_VENV = Path("/tmp/venv-dbos-bench")
REPO = Path(__file__).resolve().parent.parent


# -- the DBOS side (runs in the DBOS virtualenv) ----------------------------------------


def _dbos_worker(backend: str, url: str, runs: int, seq_runs: int) -> dict[str, Any]:
    """Run in the DBOS venv: launch DBOS on ``url``, measure, verify, return the figures."""
    from importlib.metadata import version

    import sqlalchemy as sa  # DBOS's own SQLAlchemy, in its venv
    from dbos import DBOS

    @DBOS.step()
    async def step_a(obj: dict[str, Any]) -> dict[str, Any]:
        return {"steps": obj["steps"] + 1, "last": "A"}

    @DBOS.step()
    async def step_b(obj: dict[str, Any]) -> dict[str, Any]:
        return {"steps": obj["steps"] + 1, "last": "B"}

    @DBOS.step()
    async def step_done(obj: dict[str, Any]) -> dict[str, Any]:
        return {"steps": obj["steps"] + 1, "last": "DONE"}

    @DBOS.workflow()
    async def bench_three_steps(obj: dict[str, Any]) -> dict[str, Any]:
        return await step_done(await step_b(await step_a(obj)))

    def ok(result: dict[str, Any]) -> bool:
        return result == {"steps": STEPS, "last": "DONE"}

    async def measure_dbos() -> dict[str, Any]:
        t0 = time.perf_counter()
        DBOS(config={"name": "bench-peers", "system_database_url": url, "log_level": "WARNING"})
        DBOS.launch()
        launch_s = time.perf_counter() - t0
        fresh = {"steps": 0, "last": ""}
        bad = 0 if ok(await bench_three_steps(fresh)) else 1  # warm-up
        cpu0, t0 = time.process_time(), time.perf_counter()
        handles = [await DBOS.start_workflow_async(bench_three_steps, fresh) for _ in range(runs)]
        results = await asyncio.gather(*(h.get_result() for h in handles))
        tp_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        bad += sum(1 for r in results if not ok(r))
        latencies: list[float] = []
        for _ in range(seq_runs):
            t1 = time.perf_counter()
            bad += 0 if ok(await bench_three_steps(fresh)) else 1
            latencies.append((time.perf_counter() - t1) * 1000)
        DBOS.destroy(destroy_registry=True)
        return {
            "launch_s": launch_s,
            "seconds": tp_s,
            "cpu_s": cpu_s,
            "latencies_ms": latencies,
            "wrong_results": bad,
        }

    out = asyncio.run(measure_dbos())
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    schema = "dbos." if backend == "postgres" else ""
    with engine.connect() as conn:
        out["success_workflows"] = conn.execute(
            sa.text(
                f"SELECT count(*) FROM {schema}workflow_status WHERE status = 'SUCCESS' "
                "AND name LIKE '%bench_three_steps'"
            )
        ).scalar_one()
        out["step_rows"] = conn.execute(
            sa.text(
                f"SELECT count(*) FROM {schema}operation_outputs WHERE function_name LIKE '%step_%'"
            )
        ).scalar_one()
    engine.dispose()
    out["dbos_version"] = version("dbos")
    out["sqlalchemy_version"] = version("sqlalchemy")
    return out


# -- our side and the driver (project interpreter) --------------------------------------


@dataclass
class PeerResult:
    backend: str
    runs: int
    seq_runs: int
    dbos_wf_s: float
    dbos_cpu_ms_per_wf: float
    dbos_p50_ms: float
    dbos_launch_s: float
    ours_wf_s: float
    ours_cpu_ms_per_wf: float
    ours_p50_ms: float
    dbos_version: str

    @property
    def ratio(self) -> float:
        return self.ours_wf_s / self.dbos_wf_s


def ensure_venv(venv: Path, install: bool) -> Path:
    python = venv / "bin" / "python"
    if python.exists():
        return python
    if not install:
        raise SystemExit(f"no DBOS virtualenv at {venv} (drop --no-install to create it)")
    print(f"creating {venv} and installing dbos (pip) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "dbos"],
        check=True,
    )
    return python


def run_worker(python: Path, backend: str, url: str, runs: int, seq_runs: int) -> dict[str, Any]:
    cmd = [str(python), "-m", "bench.peers", "--dbos-worker", "--backend", backend]
    cmd += ["--worker-url", url, "--runs", str(runs), "--seq-runs", str(seq_runs)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600 + runs, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"FAILED: DBOS worker ({backend}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    expected = runs + seq_runs + 1
    if (
        result["wrong_results"]
        or result["success_workflows"] != expected
        or result["step_rows"] != expected * STEPS
    ):
        raise SystemExit(f"FAILED: DBOS run not verified ({backend}): {result}")
    return result


def libpq_url(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


async def drop_database(async_url: str, name: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = create_async_engine(async_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


async def ours(backend: str, pg_url: str | None, runs: int, seq_runs: int) -> tuple[Any, float]:
    """bench.sql's measurement for the same N: (ConfigResult, process CPU ms per workflow)."""
    from . import sql

    db: sql.Database = (
        sql.SQLiteDatabase() if backend == "sqlite" else sql.PostgresDatabase(pg_url or "")
    )
    try:
        res = await sql.run_config(db, CONCURRENCY, runs, seq_runs)
    finally:
        await db.close()
    return res, res.tp.cpu_s * 1000 / runs


async def measure(
    backend: str, python: Path, pg_url: str | None, runs: int, seq_runs: int
) -> PeerResult:
    print(f"{backend}: DBOS, {runs} workflows + {seq_runs} one at a time ...", flush=True)
    tmp: str | None = None
    dbname = ""
    try:
        if backend == "sqlite":
            tmp = tempfile.mkdtemp(prefix="bench-dbos-")
            url = f"sqlite:///{tmp}/dbos.sqlite"
        else:
            import sqlalchemy as sa

            dbname = f"bench_dbos_{secrets.token_hex(5)}"
            target = sa.make_url(libpq_url(pg_url or "")).set(database=dbname)
            url = target.render_as_string(hide_password=False)
        d = await asyncio.to_thread(run_worker, python, backend, url, runs, seq_runs)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if dbname:
            await drop_database(pg_url or "", dbname)
    print(f"  {runs / d['seconds']:.1f} workflows/s", flush=True)
    print(f"{backend}: this engine (bench.sql, concurrency={CONCURRENCY}) ...", flush=True)
    res, cpu_ms = await ours(backend, pg_url, runs, seq_runs)
    print(f"  {res.tp.runs / res.tp.seconds:.1f} workflows/s", flush=True)
    return PeerResult(
        backend="SQLite" if backend == "sqlite" else "PostgreSQL",
        runs=runs,
        seq_runs=seq_runs,
        dbos_wf_s=runs / d["seconds"],
        dbos_cpu_ms_per_wf=d["cpu_s"] * 1000 / runs,
        dbos_p50_ms=percentiles(d["latencies_ms"]).p50,
        dbos_launch_s=d["launch_s"],
        ours_wf_s=res.tp.runs / res.tp.seconds,
        ours_cpu_ms_per_wf=cpu_ms,
        ours_p50_ms=res.idle_ms.p50,
        dbos_version=d["dbos_version"],
    )


HEADERS = [
    "backend",
    "DBOS workflows/s (steps/s)",
    "ours workflows/s (steps/s)",
    "ours / DBOS",
    "CPU ms per workflow, DBOS / ours",
    "p50 one at a time, DBOS / ours",
]


def rows(results: list[PeerResult]) -> list[list[str]]:
    return [
        [
            f"{r.backend} (N={r.runs:,})",
            f"{r.dbos_wf_s:,.1f} ({fmt_int(r.dbos_wf_s * STEPS)})",
            f"{r.ours_wf_s:,.1f} ({fmt_int(r.ours_wf_s * STEPS)})",
            f"{r.ratio:.2f}x",
            f"{r.dbos_cpu_ms_per_wf:.1f} / {r.ours_cpu_ms_per_wf:.1f}",
            f"{r.dbos_p50_ms:.1f} / {r.ours_p50_ms:.1f} ms",
        ]
        for r in results
    ]


def markdown(results: list[PeerResult], mode: str, wall_s: float, load: str) -> str:
    version = results[0].dbos_version if results else "?"
    return "\n".join(
        [
            f"Measured {utc_now()} ({mode} mode; whole script {wall_s:.0f} s) with "
            f"`{command_line('bench.peers')}`.",
            "",
            machine_facts_markdown(),
            f"- Load average before (1/5/15 min): {load} — both sides ran in the same "
            "invocation, one after the other, so they saw similar load",
            f"- DBOS {version} in its own virtualenv, defaults (synchronous SQLAlchemy + "
            "psycopg 3 in a thread pool; on SQLite `sqlite:///file`)",
            "",
            markdown_table(HEADERS, rows(results)),
            "",
            "The same workflow on both: 3 sequential `async` steps, each mutating a small "
            "object (DBOS: a dict returned by each `@DBOS.step()`; ours: a pydantic object on "
            f"`SQLRecordStore` + `SQLStreamer` + `SQLRoleScheduler`, step concurrency "
            f"{CONCURRENCY}, as in the SQL adapters section). Same SQLite file type (WAL on "
            "ours; DBOS's own settings), same PostgreSQL server (DBOS: a fresh database it "
            "creates, dropped afterwards; ours: a fresh schema, dropped afterwards). Warm-up: "
            "DBOS one workflow after `DBOS.launch()`; ours `bench.sql`'s 120 runs.",
            "",
            "- *workflows/s*: DBOS: N workflows started back to back with "
            "`DBOS.start_workflow_async` and awaited together, timed from the first start to "
            "the last result. Ours: N runs triggered (64 calls in flight), timed until the last "
            "run's COMPLETED write committed. steps/s = 3 x workflows/s. Both verified in the "
            "database (DBOS: SUCCESS rows in `workflow_status`, 3 rows per workflow in "
            "`operation_outputs`; ours: every run COMPLETED, version 4).",
            "- *CPU ms per workflow*: `time.process_time()` over the throughput phase (every "
            "thread of the process) / N; the database server's CPU is not counted.",
            "- *p50 one at a time*: DBOS: `await workflow(...)` one after the other; ours: "
            "`trigger` then `await_(…, DONE)`; after the throughput phase for DBOS, before "
            "it for ours.",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="DBOS beside this engine: the same 3-step workflow on SQLite and PostgreSQL.",
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs, {QUICK_SEQ} seq")
    p.add_argument("--runs", type=int, help=f"throughput runs (default {FULL_RUNS})")
    p.add_argument("--seq-runs", type=int, help=f"one-at-a-time runs (default {FULL_SEQ})")
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"default {DEFAULT_VENV}")
    p.add_argument("--no-install", action="store_true", help="fail if the venv is missing")
    p.add_argument("--pg-url", help="PostgreSQL URL (default $WORKFLOW_TEST_POSTGRES_URL)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--dbos-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else FULL_RUNS
    if args.seq_runs is None:
        args.seq_runs = QUICK_SEQ if args.quick else FULL_SEQ
    if args.runs < 1 or args.seq_runs < 1:
        p.error("--runs and --seq-runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dbos_worker:
        print(json.dumps(_dbos_worker(args.backend, args.worker_url, args.runs, args.seq_runs)))
        return 0
    t0 = time.perf_counter()
    load = load_average()
    pg_url = args.pg_url or os.environ.get("WORKFLOW_TEST_POSTGRES_URL")
    if pg_url and not pg_url.startswith("postgresql+asyncpg://"):
        pg_url = "postgresql+asyncpg://" + libpq_url(pg_url)[len("postgresql://") :]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and not pg_url:
        print("PostgreSQL: skipped (no --pg-url and no $WORKFLOW_TEST_POSTGRES_URL)")
        backends.remove("postgres")
    if not backends:
        return 2
    python = ensure_venv(args.venv, not args.no_install)
    print(f"bench.peers ({args.mode}): {args.runs} + {args.seq_runs} runs per side, {backends}")
    results = [asyncio.run(measure(b, python, pg_url, args.runs, args.seq_runs)) for b in backends]
    wall = time.perf_counter() - t0
    print()
    print_table(HEADERS, rows(results))
    print(f"\nwhole script: {wall:.1f} s; load average before: {load}")
    if not args.no_write:
        path = write_section(SECTION, markdown(results, args.mode, wall, load))
        print(f"wrote the {SECTION!r} section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
