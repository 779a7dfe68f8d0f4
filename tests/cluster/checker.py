"""The Jepsen-style checker of a cluster scenario: pure functions over what was observed.

Inputs, read back after the load (:mod:`tests.cluster.harness` collects them):

* ``triggers``: every foreign id the producer triggered and whether the trigger returned
  (``"ok"``) or failed/timed out (``"unknown"``: it may or may not have been stored);
* ``runs`` and ``history``: every stored run and every version of it, each version with the
  database's commit time of the transaction that wrote it
  (``pg_xact_commit_timestamp``, ``track_commit_timestamp = on``);
* ``calls``: every step call, journalled by the host that made it (outside the engine);
* ``leases``: every lease each host held, from its grant to the end of its ``wait_lost``.

Anomalies (each a line of :attr:`Report.anomalies`):

``lost``            a trigger that returned has no run (or a run exists twice)
``phantom``         a run nobody triggered, or a call for a run/status that never was
``stuck``           a run not completed by the deadline
``order``           versions not 1..n, a status skipped or going back, or commit times of
                    consecutive versions out of order
``applied twice``   a transition applied more than once (the object's step list is not
                    exactly the steps of the statuses it passed)
``not called``      a transition committed without any call of its step that returned
``stale call``      a step called for a status after the run had left it (commit time)
``concurrent``      two calls of the same run's step running at the same time
``two holders``     two hosts holding one role at the same time (lease intervals overlap)

Duplicate calls (a step called more than once for one status visit) are allowed by
at-least-once and counted in :attr:`Report.stats`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Call", "LeaseSpan", "Report", "Version", "check"]

STEPS = ("charge", "ship", "done")
FIRST, LAST = 1, 4
COMPLETED = 5
"""``RunState.COMPLETED``."""
EPS = 0.002
"""Seconds: two times on this machine's one clock, written by different processes."""


@dataclass(frozen=True)
class Version:
    run_id: str
    version: int
    status: int
    run_state: int
    steps: tuple[str, ...]
    attempt: int
    committed: float


@dataclass(frozen=True)
class Call:
    run_id: str
    status: int
    attempt: int
    host: str
    started: float
    finished: float | None
    outcome: str | None


@dataclass(frozen=True)
class LeaseSpan:
    role: str
    host: str
    granted: float
    lost: float | None


@dataclass
class Report:
    anomalies: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, detail: str) -> None:
        self.anomalies.append(f"{kind}: {detail}")

    def kinds(self) -> set[str]:
        return {a.split(":", 1)[0] for a in self.anomalies}


def check(
    triggers: dict[str, str],
    runs: dict[str, tuple[str, int, int]],
    history: list[Version],
    calls: list[Call],
    leases: list[LeaseSpan],
    *,
    end: float,
) -> Report:
    """Check one scenario. ``runs`` maps run id to (foreign id, status, run state) as stored
    at the end; ``end`` is when the hosts were stopped (a lease never seen lost ends then)."""
    r = Report()
    _check_runs(r, triggers, runs)
    by_run: dict[str, list[Version]] = defaultdict(list)
    for v in history:
        by_run[v.run_id].append(v)
    for run_id in runs:
        _check_history(r, run_id, sorted(by_run.get(run_id, []), key=lambda v: v.version))
    _check_calls(r, by_run, calls)
    _check_leases(r, leases, end)
    r.stats.update(
        runs=len(runs),
        triggered=len(triggers),
        unknown_triggers=sum(1 for t in triggers.values() if t != "ok"),
        calls=len(calls),
        retried_versions=sum(1 for v in history if v.attempt > 1),
        leases=len(leases),
    )
    return r


def _check_runs(r: Report, triggers: dict[str, str], runs: dict[str, tuple[str, int, int]]) -> None:
    per_fid: dict[str, list[str]] = defaultdict(list)
    for run_id, (fid, status, state) in runs.items():
        per_fid[fid].append(run_id)
        if fid not in triggers:
            r.add("phantom", f"run {run_id} of foreign id {fid!r} was never triggered")
        if state != COMPLETED or status != LAST:
            r.add("stuck", f"run {run_id} ({fid}) at status {status}, run state {state}")
    for fid, outcome in triggers.items():
        got = per_fid.get(fid, [])
        if outcome == "ok" and not got:
            r.add("lost", f"triggered {fid!r} (the trigger returned) has no run")
        if len(got) > 1:
            r.add("lost", f"foreign id {fid!r} has {len(got)} runs: {got}")


def _check_history(r: Report, run_id: str, versions: list[Version]) -> None:
    if not versions:
        r.add("order", f"run {run_id} has no history")
        return
    numbers = [v.version for v in versions]
    if numbers != list(range(1, len(numbers) + 1)):
        r.add("order", f"run {run_id} versions {numbers}")
    if versions[0].status != FIRST:
        r.add("order", f"run {run_id} starts at status {versions[0].status}")
    for a, b in itertools.pairwise(versions):
        if b.status not in (a.status, a.status + 1):
            r.add("order", f"run {run_id} v{a.version}->v{b.version}: {a.status}->{b.status}")
        if b.committed + EPS < a.committed:
            r.add("order", f"run {run_id} v{b.version} committed before v{a.version}")
    for v in versions:
        want = STEPS[: v.status - FIRST]
        if v.steps != want:
            kind = "applied twice" if len(v.steps) > len(want) else "order"
            r.add(kind, f"run {run_id} v{v.version} at status {v.status} has steps {v.steps}")


def _check_calls(r: Report, by_run: dict[str, list[Version]], calls: list[Call]) -> None:
    per_visit: dict[tuple[str, int], list[Call]] = defaultdict(list)
    for c in calls:
        per_visit[(c.run_id, c.status)].append(c)
    duplicates = 0
    most = 0
    for (run_id, status), cs in per_visit.items():
        versions = by_run.get(run_id)
        if not versions or all(v.status != status for v in versions):
            r.add("phantom", f"{len(cs)} call(s) for run {run_id} at status {status}, never there")
            continue
        left = [v for v in versions if v.status > status]
        if left:
            leaving = min(left, key=lambda v: v.version)
            for c in cs:
                if c.started > leaving.committed + EPS:
                    r.add(
                        "stale call",
                        f"run {run_id} status {status} called on {c.host} "
                        f"{c.started - leaving.committed:.3f}s after it left (v{leaving.version})",
                    )
        cs = sorted(cs, key=lambda c: c.started)
        for a, b in itertools.pairwise(cs):
            if a.finished is None or b.started + EPS < a.finished:
                r.add(
                    "concurrent",
                    f"run {run_id} status {status}: call on {b.host} started while the call "
                    f"on {a.host} ran ({a.started:.3f}..{a.finished})",
                )
        duplicates += len(cs) - 1
        most = max(most, len(cs))
    for run_id, versions in by_run.items():
        for status in {v.status for v in versions if v.status < LAST}:
            if any(v.status > status for v in versions) and not any(
                c.outcome == "returned" for c in per_visit.get((run_id, status), [])
            ):
                r.add("not called", f"run {run_id} left status {status} without a step call")
    r.stats.update(duplicate_calls=duplicates, most_calls_per_step=most)


def _check_leases(r: Report, leases: list[LeaseSpan], end: float) -> None:
    per_role: dict[str, list[LeaseSpan]] = defaultdict(list)
    for span in leases:
        per_role[span.role].append(span)
    for role, spans in per_role.items():
        spans.sort(key=lambda s: s.granted)
        for a, b in itertools.pairwise(spans):
            a_end = a.lost if a.lost is not None else end
            if b.granted + EPS < a_end:
                r.add(
                    "two holders",
                    f"role {role}: {b.host} granted {a_end - b.granted:.3f}s before {a.host} "
                    "let go",
                )
