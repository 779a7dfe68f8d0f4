"""Many hosts, real network faults (docs/network-faults.md): PostgreSQL and Tansu in one
network namespace, three worker hosts in three others, a steady load, a fault, the heal, and
the Jepsen-style checker (tests/cluster/checker.py) over every run's history, every step call
and every lease. Each scenario runs with the SQL streamer and with Kafka.

The default suite runs each scenario once, short (a fault of a little over two 2 s leases);
``WORKFLOW_CLUSTER=long`` (scripts/cluster.sh) runs them longer under a heavier load.
Skipped, with the reason, only where the machine cannot build the cluster (not root, no
``ip netns``, no ``tc``/``nft``); under ``CI=true`` that fails instead. Results go to
``$WORKFLOW_CLUSTER_RESULTS`` (JSON lines) when it is set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from .cluster import checker
from .cluster.checker import Call, LeaseSpan, Version
from .cluster.harness import FAULTS, Cluster, Result, run_scenario, timing
from .cluster.net import Net, cannot_run, sweep

STREAMERS = ["sql", "kafka"]


def _need_cluster() -> None:
    why = cannot_run()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(why + " (required in CI)")
    pytest.skip(why)


@pytest.fixture(scope="module", params=STREAMERS)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One cluster per streamer (namespaces, PostgreSQL, Tansu for Kafka) for the module;
    each scenario gets a fresh database and fresh hosts on it."""
    _need_cluster()
    if request.param == "kafka" and not os.environ.get("WORKFLOW_TEST_TANSU_BIN"):
        msg = "the Kafka cluster tests need WORKFLOW_TEST_TANSU_BIN (.ci/services.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    c = Cluster(kafka=request.param == "kafka")
    c.streamer = request.param  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.close()
        assert c.net.leftovers() == [], "the cluster left something behind"


def _record(result: Result) -> None:
    path = os.environ.get("WORKFLOW_CLUSTER_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result.row()) + "\n")


def _assert_clean(result: Result) -> None:
    _record(result)
    assert result.report.anomalies == [], "\n".join(result.report.anomalies[:30])
    assert result.report.stats["runs"] > 0


async def _scenario(cluster: Cluster, name: str) -> Result:
    result = await run_scenario(cluster, name, cluster.streamer, FAULTS[name])  # type: ignore[attr-defined]
    _assert_clean(result)
    return result


async def test_a_worker_partitioned_longer_than_its_lease(cluster: Cluster) -> None:
    """The busiest host is cut off both ways for over two leases: its roles move to the
    others (within a lease and a poll of its last renewal: no open transaction of it holds
    a lease row), it revokes them itself before that, and after the heal none of its late
    writes is applied (the checker: each transition once, versions in order)."""
    t = timing()
    r = await _scenario(cluster, "partition")
    assert r.measures["victim_roles"] > 0
    assert r.measures["takeover_s"] <= t.lease + 2.0, r.measures
    assert r.measures["victim_revoked_s"] <= t.lease, r.measures


async def test_a_one_way_partition(cluster: Cluster) -> None:
    """The database's replies to the busiest host are dropped: its statements still run
    (a renewal may commit) but it never hears back; it revokes on its own countdown and its
    roles move."""
    t = timing()
    r = await _scenario(cluster, "one-way")
    assert r.measures["takeover_s"] <= t.lease + 2.0, r.measures
    assert r.measures["victim_revoked_s"] <= t.lease, r.measures


async def test_latency_and_loss_on_one_worker(cluster: Cluster) -> None:
    """200 ms each way and 5 % packet loss each way on w1's link: nothing is lost or applied
    twice, and every run completes."""
    await _scenario(cluster, "latency")


async def test_the_database_host_briefly_unreachable_for_everybody(cluster: Cluster) -> None:
    """Every host and the producer lose the database for longer than a lease: everyone
    revokes, and after the heal the roles are granted again and the load completes."""
    await _scenario(cluster, "db-down")


async def test_a_partition_during_stop(cluster: Cluster) -> None:
    """The busiest host is cut off and then stopped while cut off: its ``stop()`` ends
    (within a few leases, not the network's timeouts) and exits 0; the others take over."""
    t = timing()
    r = await _scenario(cluster, "stop")
    assert r.measures["victim_stop_s"] <= 3 * t.lease, r.measures
    # SQLStreamer.close() gives up its database work after close_timeout (here one lease)
    assert not r.measures["victim_streamer_close_hung"], r.measures


# -- the harness and the checker themselves -----------------------------------------------------


def test_the_network_is_removed_even_when_a_test_dies() -> None:
    """Namespaces left by a process that died (here: a fake pid that cannot exist) are swept
    by the next run; a destroyed cluster leaves nothing."""
    _need_cluster()
    net = Net.create(["w1"])
    assert len(net.leftovers()) >= 3
    net.destroy()
    assert net.leftovers() == []
    os.system("ip netns add wfc-999999999-dead00-db")
    assert "wfc-999999999-dead00-db" in sweep()


def _v(run: str, version: int, status: int, steps: int, at: float, state: int = 3) -> Version:
    return Version(run, version, status, state, checker.STEPS[:steps], 1, at)


def _good(run: str = "r1") -> list[Version]:
    return [
        _v(run, 1, 1, 0, 1.0),
        _v(run, 2, 2, 1, 2.0),
        _v(run, 3, 3, 2, 3.0),
        _v(run, 4, 4, 3, 4.0, state=5),
    ]


def _calls(run: str = "r1") -> list[Call]:
    return [Call(run, s, 1, "w1", s + 0.1, s + 0.2, "returned") for s in (1, 2, 3)]


def _check(**kw: object) -> set[str]:
    args: dict[str, object] = {
        "triggers": {"f1": "ok"},
        "runs": {"r1": ("f1", 4, 5)},
        "history": _good(),
        "calls": _calls(),
        "leases": [],
    }
    args.update(kw)
    return checker.check(**args, end=10.0).kinds()  # type: ignore[arg-type]


def test_the_checker_passes_a_clean_history() -> None:
    assert _check() == set()


def test_the_checker_finds_each_kind_of_anomaly() -> None:
    assert _check(runs={}) >= {"lost"}
    assert _check(triggers={"f1": "ok", "f2": "ok"}) == {"lost"}
    assert _check(triggers={"f1": "ok", "f2": "unknown"}) == set()  # may not have been stored
    assert _check(triggers={}) == {"phantom"}
    assert _check(runs={"r1": ("f1", 3, 3)}) == {"stuck"}
    twice = [*_good()[:3], Version("r1", 4, 4, 5, ("charge", "ship", "ship", "done"), 1, 4.0)]
    assert _check(history=twice) == {"applied twice"}
    gap = [v for v in _good() if v.version != 3]
    assert "order" in _check(history=gap)
    swapped = [*_good()[:2], _v("r1", 3, 3, 2, 1.5), _v("r1", 4, 4, 3, 4.0, 5)]
    assert "order" in _check(history=swapped)
    assert _check(calls=_calls()[1:]) == {"not called"}
    late = [*_calls(), Call("r1", 1, 1, "w2", 2.5, 2.6, "returned")]
    assert _check(calls=late) == {"stale call"}
    overlap = [*_calls(), Call("r1", 2, 1, "w2", 2.15, 2.18, "cancelled")]
    assert _check(calls=overlap) == {"concurrent"}
    ghost = [*_calls(), Call("r9", 1, 1, "w2", 1.0, 1.1, "returned")]
    assert _check(calls=ghost) == {"phantom"}
    two = [LeaseSpan("role", "w1", 1.0, 3.0), LeaseSpan("role", "w2", 2.9, None)]
    assert _check(leases=two) == {"two holders"}
    apart = [LeaseSpan("role", "w1", 1.0, 3.0), LeaseSpan("role", "w2", 3.1, None)]
    assert _check(leases=apart) == set()


def test_duplicate_calls_are_allowed_and_counted() -> None:
    again = [*_calls(), Call("r1", 2, 2, "w2", 2.3, 2.4, "returned")]
    report = checker.check({"f1": "ok"}, {"r1": ("f1", 4, 5)}, _good(), again, [], end=10.0)
    assert report.anomalies == []
    assert report.stats["duplicate_calls"] == 1
