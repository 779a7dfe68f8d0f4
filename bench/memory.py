"""In-memory benchmark: throughput, latency and peak RSS of a K-step workflow on the
in-memory adapters (MemStreamer, MemRecordStore, MemRoleScheduler) with the real clock.

    python -m bench.memory [--runs N] [--steps K] [--quick] [--latency-runs M]
                           [--repeat R] [--yield-every B] [--loop asyncio|uvloop|both]
                           [--no-write] [--check]

Each phase uses a freshly built and started workflow (default options, outbox relay on),
warmed up with a few hundred uncounted runs:

1. latency on an idle engine: trigger a run, ``await_`` its terminal status, then the next;
2. throughput, R trials: trigger N runs back to back (yielding to the loop every B triggers
   so the engine works meanwhile) and wait until all N are completed. Completion is seen by
   the last step (it notes ``perf_counter()`` per foreign id and sets an event at N), not by
   ``await_``, so the phase measures the engine; afterwards every run is checked in the
   store: COMPLETED, at the terminal status, at version K+1, with the object mutated K times
   (the script fails otherwise). The median trial is reported, with its per-run
   trigger→completion latency ("under load");
3. peak RSS (``ru_maxrss``) at the end.

The results are printed and written to the "Memory adapters" section of bench/RESULTS.md.

``--loop uvloop`` runs the same on uvloop (the ``uvloop`` extra: ``pip install
aioworkflow[uvloop]``), ``--loop both`` on the default loop and then on uvloop, one after the
other in this process (uvloop's peak RSS then includes the first run's). The default loop's
figures are the section's main table; uvloop's go to its "On uvloop" part. A loop that was not
run keeps its previous figures there.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import gc
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from workflow import Builder, Run, RunState, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer

from ._common import (
    LOOPS,
    Percentiles,
    command_line,
    fmt_int,
    load_average,
    loop_available,
    loop_text,
    machine_facts,
    machine_facts_markdown,
    markdown_table,
    peak_rss_mib,
    percentiles,
    print_table,
    read_section,
    run_on,
    utc_now,
    write_section,
)

SECTION = "Memory adapters"
TARGET_TRANSITIONS_PER_S = 30_000.0  # issue 14, on the default event loop
TARGET_P50_MS = 2.0  # for a 3-step run

FULL_RUNS, QUICK_RUNS = 20_000, 2_000
FULL_LATENCY_RUNS, QUICK_LATENCY_RUNS = 2_000, 300
FULL_REPEAT = 3
WARMUP_RUNS = 200
YIELD_EVERY = 50  # default: triggers between two yields to the event loop (throughput)


class Obj(BaseModel):
    """The small object every step mutates."""

    steps: int = 0
    last: str = ""


def make_status(k: int) -> type[enum.IntEnum]:
    """STARTED -> A -> B -> ... -> DONE: K steps, K+1 real statuses (0 is UNKNOWN)."""
    middle = (
        [chr(ord("A") + i) for i in range(k - 1)] if k <= 27 else [f"S{i}" for i in range(1, k)]
    )
    names = ["UNKNOWN", "STARTED", *middle, "DONE"]
    members = [(n, i) for i, n in enumerate(names)]
    return cast("type[enum.IntEnum]", enum.IntEnum("Status", members))


@dataclass
class Tracker:
    """Notes when the last step runs for the foreign ids of one batch."""

    prefix: str = "\0"
    target: int = 0
    done: dict[str, float] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    step_calls: int = 0

    def expect(self, prefix: str, target: int) -> None:
        self.prefix, self.target = prefix, target
        self.done = {}
        self.event = asyncio.Event()

    def finished(self, foreign_id: str) -> None:
        if foreign_id.startswith(self.prefix):
            self.done[foreign_id] = time.perf_counter()
            if len(self.done) >= self.target:
                self.event.set()


def build(k: int, tracker: Tracker) -> tuple[Workflow[Obj, Any], enum.IntEnum]:
    status = make_status(k)
    members = list(status)[1:]  # without UNKNOWN
    b: Builder[Obj, Any] = Builder("bench memory", Obj, status)
    for i in range(k):
        nxt = members[i + 1]
        last = i == k - 1

        async def step(run: Run[Obj, Any], nxt: Any = nxt, last: bool = last) -> Any:
            tracker.step_calls += 1
            run.object.steps += 1
            run.object.last = nxt.name
            if last:
                tracker.finished(run.foreign_id)
            return nxt

        b.add_step(members[i], step, nxt)
    wf = b.build(
        MemStreamer(),
        MemRecordStore(),
        MemRoleScheduler(),
        metrics_registry=CollectorRegistry(),
    )
    return wf, members[-1]


@dataclass
class Throughput:
    runs: int
    steps: int
    seconds: float
    under_load_ms: Percentiles

    @property
    def transitions_per_s(self) -> float:
        return self.runs * self.steps / self.seconds

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds


async def sequential_latency(
    wf: Workflow[Obj, Any], done: enum.IntEnum, n: int, prefix: str
) -> list[float]:
    """Trigger→complete of ``n`` runs, one at a time, each awaited before the next (ms)."""
    out: list[float] = []
    for i in range(n):
        fid = f"{prefix}-{i}"
        t0 = time.perf_counter()
        run_id = await wf.trigger(fid)
        await wf.await_(fid, run_id, done, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def throughput(
    wf: Workflow[Obj, Any],
    done: enum.IntEnum,
    tracker: Tracker,
    n: int,
    k: int,
    yield_every: int = YIELD_EVERY,
) -> Throughput:
    prefix = "tp-"
    tracker.expect(prefix, n)
    calls_before = tracker.step_calls
    started: dict[str, float] = {}
    run_ids: dict[str, str] = {}
    t_first = time.perf_counter()
    for i in range(n):
        fid = f"{prefix}{i}"
        started[fid] = time.perf_counter()
        run_ids[fid] = await wf.trigger(fid)
        if i % yield_every == yield_every - 1:
            await asyncio.sleep(0)
    budget = max(60.0, n / 500)
    try:
        await asyncio.wait_for(tracker.event.wait(), budget)
    except TimeoutError:
        raise SystemExit(
            f"FAILED: only {len(tracker.done)} of {n} runs reached the last step within "
            f"{budget:.0f}s"
        ) from None
    t_last = max(tracker.done.values())
    await verify(wf, done, run_ids, k)
    calls = tracker.step_calls - calls_before
    if calls != n * k:
        print(f"note: {calls} step calls for {n * k} transitions (at-least-once re-runs)")
    under_load = [(tracker.done[fid] - t0) * 1000 for fid, t0 in started.items()]
    return Throughput(n, k, t_last - t_first, percentiles(under_load))


async def verify(
    wf: Workflow[Obj, Any], done: enum.IntEnum, run_ids: dict[str, str], k: int
) -> None:
    """Every run COMPLETED at ``done``, version K+1, object mutated K times; else exit."""
    bad: list[str] = []
    for fid, run_id in run_ids.items():
        record = await wf._engine.store.lookup(run_id)
        if record.run_state is not RunState.COMPLETED:
            # The last step has run; its write may still be in hand.
            await wf.await_(fid, run_id, done, timeout=10)
            record = await wf._engine.store.lookup(run_id)
        obj = wf._engine.decode(record.object)
        if (
            record.run_state is not RunState.COMPLETED
            or record.status != int(done)
            or record.meta.version != k + 1
            or obj.steps != k
        ):
            bad.append(
                f"{fid}: {record.run_state!r} status={record.status} "
                f"version={record.meta.version} steps={obj.steps}"
            )
    if bad:
        raise SystemExit(
            f"FAILED: {len(bad)} of {len(run_ids)} runs are not completed as expected, e.g. "
            + "; ".join(bad[:5])
        )


@dataclass
class Results:
    runs: int
    steps: int
    latency_runs: int
    idle_ms: Percentiles
    trials: list[Throughput]
    rss_before_tp_mib: float
    rss_peak_mib: float
    wall_s: float
    load_before: str
    loop: str = "asyncio"
    rss_own: bool = True  # False: an earlier measurement ran in the same process

    @property
    def tp(self) -> Throughput:
        """The median trial by transitions/s (the one the target is judged on)."""
        ordered = sorted(self.trials, key=lambda t: t.transitions_per_s)
        return ordered[(len(ordered) - 1) // 2]


async def warm_up(wf: Workflow[Obj, Any], done: enum.IntEnum, tracker: Tracker) -> None:
    """Both paths (await_ one at a time, and back-to-back triggers), not counted."""
    await sequential_latency(wf, done, WARMUP_RUNS // 2, "warm-seq")
    prefix = "warm-tp-"
    tracker.expect(prefix, WARMUP_RUNS // 2)
    for i in range(WARMUP_RUNS // 2):
        await wf.trigger(f"{prefix}{i}")
    await asyncio.wait_for(tracker.event.wait(), 30)


async def run_benchmark(
    runs: int, steps: int, latency_runs: int, repeat: int, yield_every: int = YIELD_EVERY
) -> Results:
    wall0 = time.perf_counter()
    load_before = load_average()

    # Latency on an idle engine: a fresh workflow, warmed up.
    tracker = Tracker()
    wf, done = build(steps, tracker)
    async with wf:
        await warm_up(wf, done, tracker)
        gc.collect()
        idle = await sequential_latency(wf, done, latency_runs, "lat")
    del wf
    gc.collect()
    rss_before = peak_rss_mib()

    # Throughput (and latency under that load): `repeat` trials, each on a fresh workflow.
    trials: list[Throughput] = []
    for _ in range(repeat):
        tracker = Tracker()
        wf, done = build(steps, tracker)
        async with wf:
            await warm_up(wf, done, tracker)
            gc.collect()
            trials.append(await throughput(wf, done, tracker, runs, steps, yield_every))
        del wf
        gc.collect()
    return Results(
        runs=runs,
        steps=steps,
        latency_runs=latency_runs,
        idle_ms=percentiles(idle),
        trials=trials,
        rss_before_tp_mib=rss_before,
        rss_peak_mib=peak_rss_mib(),
        wall_s=time.perf_counter() - wall0,
        load_before=load_before,
    )


def _ms(p: Percentiles) -> str:
    return f"p50 {p.p50:.2f} / p90 {p.p90:.2f} / p99 {p.p99:.2f} / max {p.max:.2f} ms"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def targets_met(r: Results) -> tuple[bool, bool]:
    """(throughput, idle p50); the p50 target applies to 3-step runs only."""
    p50_ok = r.steps != 3 or r.idle_ms.p50 <= TARGET_P50_MS
    return r.tp.transitions_per_s >= TARGET_TRANSITIONS_PER_S, p50_ok


def report_rows(r: Results) -> list[list[str]]:
    tps_ok, p50_ok = targets_met(r)
    tp = r.tp
    rates = sorted(t.transitions_per_s for t in r.trials)
    spread = (
        ""
        if len(r.trials) == 1
        else f"; median of {len(r.trials)} trials, "
        f"range {fmt_int(rates[0])} to {fmt_int(rates[-1])}"
    )
    p50_target = f"p50 ≤ {TARGET_P50_MS:g} ms for a 3-step run: " + (
        _verdict(p50_ok) if r.steps == 3 else f"n/a ({r.steps} steps)"
    )
    return [
        [
            "throughput",
            f"{fmt_int(tp.transitions_per_s)} transitions/s = {fmt_int(tp.runs_per_s)} runs/s "
            f"({r.runs:,} runs in {tp.seconds:.2f} s{spread})",
            f"≥ {fmt_int(TARGET_TRANSITIONS_PER_S)} transitions/s: {_verdict(tps_ok)}",
        ],
        [
            f"latency, idle engine ({r.idle_ms.count:,} runs, one at a time)",
            _ms(r.idle_ms),
            p50_target,
        ],
        [
            f"latency UNDER LOAD (throughput phase, {tp.under_load_ms.count:,} runs)",
            _ms(tp.under_load_ms),
            "none (queueing: trigger → last step while the backlog drains)",
        ],
        [
            "peak RSS (ru_maxrss)",
            f"{r.rss_peak_mib:.1f} MiB at the end ({r.rss_before_tp_mib:.1f} MiB before the "
            "throughput phase)"
            + ("" if r.rss_own else "; the process ran the default loop's measurement first"),
            "none",
        ],
    ]


def markdown(r: Results, mode: str, yield_every: int) -> str:
    """The section's main part (the default loop) or its uvloop part: the same text."""
    facts = machine_facts()
    return "\n".join(
        [
            f"Measured {utc_now()} ({mode} mode; whole script {r.wall_s:.1f} s).",
            "",
            machine_facts_markdown(),
            f"- Load average before the run (1/5/15 min): {r.load_before} — other work on the "
            "machine lowers the numbers",
            f"- Command: `{command_line('bench.memory')}`",
            "",
            markdown_table(["metric", "measured", "target"], report_rows(r)),
            "",
            f"Workflow: {r.steps} steps (STARTED → … → DONE), each an `async def` that mutates "
            "a small pydantic object and returns the next status, on `MemStreamer`, "
            "`MemRecordStore` and `MemRoleScheduler` with the real clock, default options "
            "(`parallel_count=1`, outbox relay on) and a fresh Prometheus registry; "
            f"{loop_text(r.loop)}, one process, {facts['python']}. Every workflow is warmed up "
            f"with {WARMUP_RUNS} uncounted runs.",
            "",
            "- *Latency, idle engine*: one run at a time, `trigger` then "
            "`await_(…, DONE)`, timed from before `trigger` to `await_`'s return.",
            "- *Throughput*: one task triggers every run back to back (yielding to the event "
            f"loop every {yield_every} triggers, so the engine works meanwhile); the clock "
            "runs from the first trigger to the moment the last run's last step runs (seen by "
            "the step itself, not by `await_`). Then every run is checked in the store: "
            f"COMPLETED at DONE, version {r.steps + 1}, object mutated {r.steps} times. "
            "transitions/s = runs * steps / that time. Each trial uses a fresh workflow.",
            "- *Latency under load*: per run of the median throughput trial, from before its "
            "`trigger` to its last step. It is queueing delay: the in-memory adapters never "
            "suspend, so each stage drains its whole backlog per event-loop turn, and the "
            "figure grows with the trigger batch (`--yield-every`).",
        ]
    )


UVLOOP_PART = "### On uvloop"


def section(results: dict[str, Results], title: str, mode: str, yield_every: int) -> str:
    """The section: the default loop's part, then uvloop's; a loop not run this time keeps its
    previous part."""
    old = read_section(title) or ""
    head, _sep, old_uv = old.partition(UVLOOP_PART)
    main_part = head.strip("\n") or "Not measured yet on the default loop."
    if "asyncio" in results:
        main_part = markdown(results["asyncio"], mode, yield_every)
    uv_part = old_uv.strip("\n")
    if "uvloop" in results:
        r = results["uvloop"]
        uv_part = "\n".join(
            [
                f"The same benchmark on {loop_text('uvloop')} (the `uvloop` extra, "
                f"`--loop uvloop`), measured {utc_now()}:",
                "",
                markdown_table(["metric", "measured", "target"], report_rows(r)),
            ]
            + (
                [
                    "",
                    f"Beside the default loop in the same run: "
                    f"{r.tp.transitions_per_s / results['asyncio'].tp.transitions_per_s:.2f}x "
                    f"the throughput, idle p50 {r.idle_ms.p50:.2f} ms against "
                    f"{results['asyncio'].idle_ms.p50:.2f} ms.",
                ]
                if "asyncio" in results
                else []
            )
        )
    if not uv_part:  # never measured on uvloop: no such part
        return main_part
    uv_part = re.sub(r"^#+ .*\n", "", uv_part) if uv_part.startswith("#") else uv_part
    return f"{main_part}\n\n{UVLOOP_PART}\n\n{uv_part}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.memory",
        description="Throughput, latency and peak RSS of the engine on the in-memory adapters.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"small run: {QUICK_RUNS:,} runs, {QUICK_LATENCY_RUNS} latency runs, 1 trial",
    )
    p.add_argument("--runs", type=int, help=f"runs per throughput trial (default {FULL_RUNS:,})")
    p.add_argument("--steps", type=int, default=3, help="steps per run (default 3)")
    p.add_argument(
        "--latency-runs",
        type=int,
        help=f"runs in the idle-latency phase (default {FULL_LATENCY_RUNS:,})",
    )
    p.add_argument(
        "--repeat",
        type=int,
        help=f"throughput trials, the median is reported (default {FULL_REPEAT}; quick 1)",
    )
    p.add_argument(
        "--yield-every",
        type=int,
        default=YIELD_EVERY,
        help=f"triggers between yields to the event loop (default {YIELD_EVERY})",
    )
    p.add_argument(
        "--loop",
        choices=(*LOOPS, "both"),
        default="asyncio",
        help="event loop: the default asyncio one, uvloop (the uvloop extra), or both in turn",
    )
    p.add_argument(
        "--no-write", action="store_true", help="print only; do not touch bench/RESULTS.md"
    )
    p.add_argument(
        "--check", action="store_true", help="exit with status 1 when a target is missed"
    )
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else FULL_RUNS
    if args.latency_runs is None:
        args.latency_runs = QUICK_LATENCY_RUNS if args.quick else FULL_LATENCY_RUNS
    if args.repeat is None:
        args.repeat = 1 if args.quick else FULL_REPEAT
    for name in ("runs", "steps", "latency_runs", "repeat", "yield_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    loops = list(LOOPS) if args.loop == "both" else [args.loop]
    if "uvloop" in loops and not loop_available("uvloop"):
        if args.loop == "uvloop":
            print("uvloop is not installed: pip install aioworkflow[uvloop]")
            return 2
        print("note: uvloop is not installed (pip install aioworkflow[uvloop]): default loop only")
        loops.remove("uvloop")
    print(
        f"bench.memory ({mode}): {args.repeat} x {args.runs:,} runs x {args.steps} steps, "
        f"{args.latency_runs:,} latency runs, {WARMUP_RUNS} warm-up runs per workflow; "
        f"loop {', '.join(loops)}"
    )
    results: dict[str, Results] = {}
    for i, loop in enumerate(loops):
        r = run_on(
            loop,
            run_benchmark(args.runs, args.steps, args.latency_runs, args.repeat, args.yield_every),
        )
        r.loop, r.rss_own = loop, i == 0
        results[loop] = r
        print(f"\n{loop_text(loop)}:")
        print_table(["metric", "measured", "target"], report_rows(r))
        print(f"whole measurement: {r.wall_s:.1f} s; load average before: {r.load_before}")
    if "asyncio" in results and "uvloop" in results:
        ratio = results["uvloop"].tp.transitions_per_s / results["asyncio"].tp.transitions_per_s
        print(f"\nuvloop / default loop throughput: {ratio:.2f}x")
    if not args.no_write:
        title = SECTION if args.steps == 3 else f"{SECTION}, {args.steps} steps"
        path = write_section(title, section(results, title, mode, args.yield_every))
        print(f"wrote the {title!r} section of {path}")
    missed = any(not all(targets_met(r)) for r in results.values())
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
