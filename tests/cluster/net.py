"""Network namespaces, veth links and faults for the cluster tests.

Layout (one ``/24`` of ``10.0.0.0/8`` that the root namespace does not use, chosen per run)::

    root ns (the test: producer, checker) --link 0--+
    host w1 --link 1--------------------------------+-- db ns: PostgreSQL, Tansu on SERVICE_IP
    host w2 --link 2--------------------------------+
    host w3 --link 3--------------------------------+

Each link is a veth pair, a ``/30``: the database end is ``.4k+1``, the other end ``.4k+2``.
The services listen on ``SERVICE_IP`` (``.250``, on the database namespace's loopback), routed
over each host's own link, so every host reaches the same address and a fault on one link
touches that host alone.

Faults, all on the database namespace's side of a link so that one table holds them:

* **partition** (nftables): drop what the link's host sends to the database (``to_db``),
  what the database sends to it (``from_db``), or both; :meth:`Net.heal` removes the drops.
* **netem**: delay and loss on both directions of a link: ``tc netem`` on both ends' egress
  when the kernel has the netem qdisc; otherwise (this project's CI VM kernel is built
  without ``CONFIG_NET_SCH_NETEM``) the loss is an nftables ``numgen random`` drop in the
  kernel and the delay a userspace relay (:mod:`tests.procs.cluster_delay`) that nftables
  redirects the host's connections through. :meth:`Net.heal` removes either.

Names carry a per-run prefix ``wfc-<pid>-<rid>`` (namespaces) / ``wfc<rid>`` (interfaces), so
parallel runs never clash. :meth:`Net.destroy` kills what runs in the namespaces and deletes
them (a veth pair goes with its namespace); it is idempotent and also registered with
:mod:`atexit`. :func:`sweep` deletes what a run that died without cleaning up (SIGKILL) left
behind: namespaces whose pid is gone, and their scratch directories.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

__all__ = ["Net", "cannot_run", "sweep"]

PREFIX = "wfc"
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-")
SCRATCH = "/tmp"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_NETEM: list[bool] = []


def has_netem() -> bool:
    """Whether the kernel has the netem qdisc (some VM kernels are built without it)."""
    if not _NETEM:
        probe = f"{PREFIX}-{os.getpid()}-netem{random.randrange(1 << 20):x}"
        _run("ip", "netns", "add", probe)
        try:
            tc = ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root"]
            _NETEM.append(subprocess.run([*tc, "netem"], capture_output=True).returncode == 0)
        finally:
            _run("ip", "netns", "del", probe, check=False)
    return _NETEM[0]


def _run(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def cannot_run() -> str | None:
    """Why this machine cannot build the cluster, or ``None``: root, ``ip netns``, ``tc``
    and ``nft`` are needed (scripts/test.sh and scripts/cluster.sh install nftables)."""
    if os.geteuid() != 0:
        return "the cluster tests need root (network namespaces)"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"the cluster tests need {tool!r} (Debian package {package})"
    name = f"{PREFIX}-{os.getpid()}-probe{random.randrange(1 << 20):x}"
    try:
        _run("ip", "netns", "add", name)
    except (RuntimeError, OSError) as err:
        return f"the cluster tests need `ip netns` to work: {err}"
    _run("ip", "netns", "del", name, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_in(ns: str) -> None:
    """SIGKILL every process in namespace ``ns`` (only this harness starts processes in the
    namespaces it names) and wait until they are gone."""
    deadline = time.monotonic() + 10
    while pids := [int(p) for p in _run("ip", "netns", "pids", ns, check=False).split()]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def sweep() -> list[str]:
    """Delete the namespaces (and scratch directories) of earlier runs whose process is gone;
    the names deleted."""
    gone: list[str] = []
    for ns in _namespaces():
        m = _NS_RE.match(ns)
        if m and not _alive(int(m.group(1))):
            _kill_in(ns)
            _run("ip", "netns", "del", ns, check=False)
            gone.append(ns)
    for entry in os.listdir(SCRATCH):
        m = _NS_RE.match(entry + "-")
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(os.path.join(SCRATCH, entry), ignore_errors=True)
            gone.append(entry)
    return gone


def _free_block() -> ipaddress.IPv4Network:
    used = _run("ip", "-4", "route", "show", "table", "all", check=False)
    used += _run("ip", "-4", "addr", check=False)
    for _ in range(200):
        block = ipaddress.IPv4Network(
            f"10.{random.randrange(64, 250)}.{random.randrange(0, 256)}.0/24"
        )
        if str(block.network_address)[:-1] not in used:
            return block
    raise RuntimeError("no free 10.x.y.0/24 block for the cluster")


@dataclass
class Link:
    """The veth pair between the database namespace and ``ns`` (``None``: the root ns)."""

    index: int
    ns: str | None
    db_if: str
    host_if: str
    db_ip: str
    host_ip: str
    netem: str = ""
    loss: int = 0
    redirect: dict[int, int] = field(default_factory=dict)


@dataclass
class Net:
    """One cluster's namespaces and links; create with :meth:`create`."""

    rid: str
    block: ipaddress.IPv4Network
    db_ns: str
    hosts: dict[str, str] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    blocked: dict[str, set[str]] = field(default_factory=dict)
    scratch: str = ""
    relay_proc: subprocess.Popen[str] | None = None
    relay_link: str = ""
    _destroyed: bool = False

    @property
    def name(self) -> str:
        return f"{PREFIX}-{os.getpid()}-{self.rid}"

    @property
    def service_ip(self) -> str:
        return str(self.block.network_address + 250)

    @classmethod
    def create(cls, hosts: list[str]) -> Net:
        """The database namespace, one namespace per host in ``hosts``, and a link from each
        (and from the root namespace, named ``"root"``) to the database namespace."""
        sweep()
        rid = f"{random.randrange(1 << 24):06x}"
        base = f"{PREFIX}-{os.getpid()}-{rid}"
        net = cls(rid=rid, block=_free_block(), db_ns=f"{base}-db")
        net.scratch = os.path.join(SCRATCH, base)
        os.makedirs(net.scratch, mode=0o755)
        atexit.register(net.destroy)
        try:
            _run("ip", "netns", "add", net.db_ns)
            _run("ip", "-n", net.db_ns, "link", "set", "lo", "up")
            _run("ip", "-n", net.db_ns, "addr", "add", f"{net.service_ip}/32", "dev", "lo")
            net._link("root", None)
            for h in hosts:
                ns = f"{base}-{h}"
                _run("ip", "netns", "add", ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                net.hosts[h] = ns
                net._link(h, ns)
            net._apply_filter()
        except BaseException:
            net.destroy()
            raise
        return net

    def _link(self, name: str, ns: str | None) -> None:
        k = len(self.links)
        link = Link(
            index=k,
            ns=ns,
            db_if=f"{PREFIX}{self.rid}d{k}",
            host_if=f"{PREFIX}{self.rid}h{k}",
            db_ip=str(self.block.network_address + 4 * k + 1),
            host_ip=str(self.block.network_address + 4 * k + 2),
        )
        self.links[name] = link
        _run("ip", "link", "add", link.db_if, "type", "veth", "peer", "name", link.host_if)
        _run("ip", "link", "set", link.db_if, "netns", self.db_ns)
        if ns is not None:
            _run("ip", "link", "set", link.host_if, "netns", ns)
        db, host = self._ip(self.db_ns), self._ip(ns)
        _run(*db, "addr", "add", f"{link.db_ip}/30", "dev", link.db_if)
        _run(*db, "link", "set", link.db_if, "up")
        _run(*host, "addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        _run(*host, "link", "set", link.host_if, "up")
        _run(*host, "route", "add", f"{self.service_ip}/32", "via", link.db_ip)

    @staticmethod
    def _ip(ns: str | None) -> list[str]:
        return ["ip"] if ns is None else ["ip", "-n", ns]

    def exec_prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host`` (or ``"db"``)."""
        ns = self.db_ns if host == "db" else self.hosts[host]
        return ["ip", "netns", "exec", ns]

    # -- faults -----------------------------------------------------------------------------

    def partition(self, *names: str, direction: str = "both") -> None:
        """Cut the links of ``names`` (hosts, or ``"root"``): ``"both"`` ways, only what the
        host sends (``"to_db"``) or only what it receives (``"from_db"``)."""
        if direction not in ("both", "to_db", "from_db"):
            raise ValueError(direction)
        for name in names:
            ways = {"to_db", "from_db"} if direction == "both" else {direction}
            self.blocked.setdefault(name, set()).update(ways)
        self._apply_filter()

    def netem(self, name: str, delay_ms: int, loss_pct: int) -> None:
        """``delay_ms`` of latency each way and ``loss_pct`` % packet loss each way on the
        link of ``name``: ``tc netem`` when the kernel has it; otherwise the loss is an
        nftables random drop and the delay comes from the link's delay relay
        (:meth:`relay`, which must then have been set up before the host connected)."""
        link = self.links[name]
        if has_netem():
            spec = f"delay {delay_ms}ms loss {loss_pct}%"
            for ns, dev in ((self.db_ns, link.db_if), (link.ns, link.host_if)):
                tc = ["tc"] if ns is None else ["ip", "netns", "exec", ns, "tc"]
                _run(*tc, "qdisc", "replace", "dev", dev, "root", "netem", *spec.split())
            link.netem = spec
            return
        if self.relay_proc is None or self.relay_link != name:
            raise RuntimeError(f"no netem in this kernel and no delay relay on {name}'s link")
        self._relay_delay(delay_ms / 1000)
        link.loss = loss_pct
        link.netem = "relay"
        self._apply_filter()

    def relay(self, name: str, ports: list[int]) -> None:
        """Route the connections of ``name`` to ``ports`` of the service address through a
        delay relay (:mod:`tests.procs.cluster_delay`, no delay until :meth:`netem`), so a
        delay can be added later. Only needed where the kernel has no netem; one link."""
        if has_netem():
            return
        specs = [f"{port + 10000}:{self.service_ip}:{port}" for port in ports]
        proc = subprocess.Popen(
            [*self.exec_prefix("db"), sys.executable, "-m", "tests.procs.cluster_delay", *specs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            raise RuntimeError(f"the delay relay did not start: {line!r}")
        self.relay_proc, self.relay_link = proc, name
        self.links[name].redirect = {port: port + 10000 for port in ports}
        self._apply_filter()

    def drop_relay(self) -> None:
        """Stop the delay relay (if any) and its redirect."""
        if self.relay_proc is not None:
            self._stop_relay()
        for link in self.links.values():
            link.redirect = {}
        self._apply_filter()

    def _stop_relay(self) -> None:
        proc, self.relay_proc = self.relay_proc, None
        assert proc is not None
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def _relay_delay(self, seconds: float) -> None:
        proc = self.relay_proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"delay {seconds}\n")
        proc.stdin.flush()
        proc.stdout.readline()  # its acknowledgement

    def heal(self, *names: str) -> None:
        """Remove the partitions and netem of ``names`` (default: every link)."""
        for name in names or tuple(self.links):
            self.blocked.pop(name, None)
            link = self.links[name]
            if link.netem == "relay":
                if self.relay_proc is not None:
                    self._relay_delay(0)
                link.loss = 0
            elif link.netem:
                for ns, dev in ((self.db_ns, link.db_if), (link.ns, link.host_if)):
                    tc = ["tc"] if ns is None else ["ip", "netns", "exec", ns, "tc"]
                    _run(*tc, "qdisc", "del", "dev", dev, "root", check=False)
            link.netem = ""
        self._apply_filter()

    def _apply_filter(self) -> None:
        """Replace the database namespace's nftables table with the drops of ``blocked``
        (one atomic ``nft -f``)."""
        inbound, outbound, nat = [], [], []
        for name, ways in sorted(self.blocked.items()):
            dev = self.links[name].db_if
            if "to_db" in ways:
                inbound.append(f'    iifname "{dev}" drop')
            if "from_db" in ways:
                outbound.append(f'    oifname "{dev}" drop')
        for link in self.links.values():
            if link.loss:
                rule = f"numgen random mod 100 < {link.loss} drop"
                inbound.append(f'    iifname "{link.db_if}" {rule}')
                outbound.append(f'    oifname "{link.db_if}" {rule}')
            for port, to in link.redirect.items():
                nat.append(
                    f'    iifname "{link.db_if}" ip daddr {self.service_ip} tcp dport {port}'
                    f" redirect to :{to}"
                )
        table = "\n".join(
            [
                "table inet wfcluster",
                "delete table inet wfcluster",
                "table inet wfcluster {",
                "  chain input {",
                "    type filter hook input priority 0; policy accept;",
                *inbound,
                "  }",
                "  chain output {",
                "    type filter hook output priority 0; policy accept;",
                *outbound,
                "  }",
                "  chain prerouting {",
                "    type nat hook prerouting priority -100; policy accept;",
                *nat,
                "  }",
                "}",
                "",
            ]
        )
        _run("ip", "netns", "exec", self.db_ns, "nft", "-f", "-", stdin=table)

    # -- teardown ---------------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        return [self.db_ns, *self.hosts.values()]

    def destroy(self) -> None:
        """Kill what runs in the namespaces, delete them (their veths go with them) and the
        scratch directory. Idempotent."""
        if self._destroyed:
            return
        self._destroyed = True
        if self.relay_proc is not None:
            self._stop_relay()
        for ns in self.namespaces():
            _kill_in(ns)
            _run("ip", "netns", "del", ns, check=False)
        for link in self.links.values():  # the kernel may free a namespace's veths later
            if link.ns is None:
                _run("ip", "link", "del", link.host_if, check=False)
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        atexit.unregister(self.destroy)

    def leftovers(self) -> list[str]:
        """What of this cluster still exists (namespaces, the root link): empty after
        :meth:`destroy`."""
        left = [ns for ns in _namespaces() if ns.startswith(self.name)]
        links = _run("ip", "-o", "link", "show", check=False)
        left += [m for m in re.findall(rf"{PREFIX}{self.rid}[dh]\d", links)]
        if self.scratch and os.path.exists(self.scratch):
            left.append(self.scratch)
        return left
