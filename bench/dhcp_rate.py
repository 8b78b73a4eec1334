"""DHCP DORA rate behind the same Open vSwitch userspace path: the agent's C responder against
OVN's native DHCP, ISC Kea and dnsmasq as OpenStack Neutron runs it (issue 8).

perfdhcp (Debian ``kea-admin``) runs in K client VM namespaces (``--clients-vms``), each with
its own interface on an OVS ``netdev`` bridge, all at once and each at 1/K of the offered rate
(``-r RATE/K -p SECONDS``): one perfdhcp process alone saturates its core before the fastest
servers do. The offered rate steps up until more than 1% of the DORA exchanges started (summed
over the K processes) do not complete. Each server's best rate is the completed DORA/s of its
highest step within that limit; latency percentiles come from perfdhcp's ``-x t`` timestamps
(one sample per request/reply exchange: DISCOVER-OFFER and REQUEST-ACK), pooled over the K.
Each step also reports CPU per process (every perfdhcp's own), the machine's busy share, and the
replies each client VM dropped because perfdhcp did not read them in time (its UDP
RcvbufErrors): exchanges lost there were lost by the load generator, not by the server.

perfdhcp always behaves as a relay agent in DHCPv4: every request carries ``giaddr`` = its own
address and comes from the interface's MAC; only ``chaddr`` varies per simulated client. Two
client modes, the same K client VMs for every server, each mode its own RESULT keys (``vm_*``,
``relay_*``); no server's figure is the better of two modes:
- **1 client per VM** (``vm``): chaddr = the VM's MAC. The agent, Kea and dnsmasq answer the
  relay (giaddr:67); OVN answers by the Ethernet source only, so its clients send from their
  lease IP and port 68, unicast to the server id (static ARP entry), which is what OVN's flows
  accept: the one setting that differs, forced by OVN;
- **200 clients, relayed** (``relay``): 200 chaddrs split over the K VMs (for the agent, the
  ports' allowed address pairs, each with a DHCP state). OVN cannot serve it.

Every server runs at its shipped defaults: the agent at INFO logging with direct replies, Kea at
Debian's packaged log level (INFO), dnsmasq with the arguments Neutron's DHCP agent gives it when
no log directory is set (none is by default). One setting differs and the RESULT line says so:
the agent's per-port request budget (``[dhcp] rate = 100``/s) is off (``agent_dhcp_rate_limit=off``):
it caps each VM port, so with K = 2 ports it would measure the limiter (about 100 DORA/s), not
the server. ``agent-via-ovs`` is the same agent with ``[dhcp] direct_replies = false`` (replies
back through OVS like every other server's), in the same run, so the reader sees what the
direct path is worth.

Paths: every server's requests cross the same OVS userspace datapath (``br-int`` or the peers'
bridge). Replies: OVN's are packet-outs through OVS; Kea's and dnsmasq's are sent by their UDP
sockets to the relay VM through the bridge; the agent's leave straight out of the asking VM's
device (OVS carries the requests only), or through OVS for ``agent-via-ovs``.

Every server and client lives in namespaces created here; all of it is removed at exit, also on
failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from agent.sandbox.poll import wait_for
from bench.common import environment, percentile

RATES = (250, 500, 1000, 2000, 4000, 8000, 16000, 24000)
QUICK_RATES = (1000, 4000, 12000)
REFINE_STEPS, QUICK_REFINE_STEPS = 2, 1  # bisections between the last good and the first failing rate
PERIOD_S = 5.0
QUICK_PERIOD_S = 2.0
LOSS_LIMIT_PCT = 1.0
CLIENTS = 200
CLIENTS_BASE_MAC = "fa:16:3e:c0:00:00"  # perfdhcp -R 200 -b mac=BASE uses BASE + 0 .. BASE + 199
CLIENT_VMS, MAX_CLIENT_VMS = 2, 8  # perfdhcp processes (one per client VM); relays at .2-.9, below Kea's pool
COMMON_RATE = 1000  # p99 is also reported at this offered rate, where every server keeps up
SERVERS = ("agent", "agent-via-ovs", "ovn", "kea", "dnsmasq")
VM_MODE, RELAY_MODE = "1 client per VM", f"{CLIENTS} clients (relay)"
MODE_KEYS = {VM_MODE: "vm", RELAY_MODE: "relay"}
PERFDHCP_EXTRA: list[str] = []  # --perfdhcp-args
RESPONDER_MAC = "02:ac:a0:00:00:43"  # agent.planner.dhcp.RESPONDER_MAC (no gateway MAC given)


class BenchError(Exception):
    """A set-up step failed; the message names it."""


def _run(cmd: Sequence[str], check: bool = True, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, env=env)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _ns(netns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd]


def client_macs(base: str = CLIENTS_BASE_MAC, count: int = CLIENTS) -> list[str]:
    start = int(base.replace(":", ""), 16)
    return [":".join(f"{start + i:012x}"[j : j + 2] for j in range(0, 12, 2)) for i in range(count)]


def split(items: Sequence[str], k: int) -> list[list[str]]:
    """``items`` in ``k`` consecutive runs of (nearly) equal length."""
    return [list(items[len(items) * i // k : len(items) * (i + 1) // k]) for i in range(k)]


def shares(rate: int, k: int) -> list[int]:
    """``rate`` in ``k`` (nearly) equal integer parts."""
    return [rate * (i + 1) // k - rate * i // k for i in range(k)]


# ---------------------------------------------------------------------------------------- lab
class Lab:
    """Namespaces, processes and OVS instances made by the bench, removed in reverse order."""

    def __init__(self, root: pathlib.Path, tag: str) -> None:
        self.root = root
        self.tag = tag
        self._undo: list[Callable[[], None]] = []

    def netns(self, name: str) -> str:
        full = f"{self.tag}{name}"
        self._undo.append(lambda: self._del_netns(full))
        _run(["ip", "netns", "add", full])
        _run(["ip", "-n", full, "link", "set", "lo", "up"])
        return full

    @staticmethod
    def _del_netns(name: str) -> None:
        if not pathlib.Path("/run/netns", name).exists():
            return
        # Whatever still runs there was started by this bench.
        for pid in _run(["ip", "netns", "pids", name], check=False).split():
            _stop_pid(int(pid))
        _run(["ip", "netns", "del", name], check=False)

    def spawn(self, cmd: Sequence[str], log: pathlib.Path, env: dict[str, str] | None = None) -> int:
        out = open(log, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
        out.close()
        self._undo.append(lambda: _stop_popen(proc))
        return proc.pid

    def defer(self, fn: Callable[[], None]) -> None:
        self._undo.append(fn)

    def close(self) -> None:
        while self._undo:
            fn = self._undo.pop()
            try:
                fn()
            except Exception as exc:  # keep cleaning up
                print(f"cleanup: {exc}", flush=True)


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _stop_popen(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _veth_to_bridge(
    ovs: object,
    host_ns: str,
    bridge: str,
    host_end: str,
    ns: str,
    mac: str,
    ip: str,
    iface_id: str | None = None,
) -> None:
    """A veth pair: ``host_end`` a port of ``bridge`` in ``host_ns``, ``eth0`` in ``ns``."""
    _run(["ip", "-n", host_ns, "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns])
    # netdev datapath: UDP sent with TX checksum offload crosses OVS unfinished (testbed fact).
    for where, dev in ((ns, "eth0"), (host_ns, host_end)):
        _run(_ns(where, "ethtool", "-K", dev, "tx", "off"))
    _run(["ip", "-n", ns, "link", "set", "eth0", "address", mac])
    _run(["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"])
    _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    _run(["ip", "-n", host_ns, "link", "set", host_end, "up"])
    extra = ["--", "set", "Interface", host_end, f"external_ids:iface-id={iface_id}"] if iface_id else []
    ovs.vsctl("add-port", bridge, host_end, *extra)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------- perfdhcp
@dataclass
class Target:
    """Where perfdhcp runs and whom it asks."""

    server: str
    vms: list[str]  # the client VMs' namespaces, one perfdhcp each
    server_ip: str
    pids: dict[str, int]  # server processes whose CPU use is reported
    local_port: int = 0  # 0: perfdhcp's default (67, a relay agent)


@dataclass
class Mode:
    label: str
    chaddrs: list[list[str]]  # per client VM, consecutive: perfdhcp -b mac=FIRST -R COUNT


@dataclass
class Step:
    rate: int
    period: float
    sent: int = 0  # DISCOVERs sent: exchanges started
    offers: int = 0
    acks: int = 0  # exchanges completed
    perfdhcp_rate: float = 0.0
    delays_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # server processes, % of one core over the step
    client_cpu: list[float] = field(default_factory=list)  # each perfdhcp, % of one core over the step
    machine_cpu: float = 0.0  # all CPUs' non-idle time (any process, softirq), % of one core
    client_drops: list[int] = field(default_factory=list)  # replies each VM dropped: perfdhcp's buffer full

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.acks) / self.sent if self.sent else 100.0

    @property
    def dora_s(self) -> float:
        return self.acks / self.period

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.loss_pct <= LOSS_LIMIT_PCT

    def p(self, pct: float) -> float:
        return percentile(self.delays_ms, pct) if self.delays_ms else float("nan")

    def notes(self) -> str:
        """CPU use and the replies the client VMs dropped (their UDP RcvbufErrors)."""
        clients = "+".join(f"{pct:.0f}" for pct in self.client_cpu)
        return " ".join(
            [
                "cpu",
                *(f"{name}={pct:.0f}%" for name, pct in self.cpu.items()),
                f"perfdhcp={clients}%",
                f"machine={self.machine_cpu:.0f}%/{100 * (os.cpu_count() or 1)}%",
                f"client-drops={'+'.join(str(n) for n in self.client_drops)}",
            ]
        )


@dataclass
class Series:
    server: str
    mode: str
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        good = [s for s in self.steps if s.ok]
        return max(good, key=lambda s: s.dora_s) if good else None

    def at(self, rate: int) -> Step | None:
        return next((s for s in self.steps if s.rate == rate and s.ok), None)

    @property
    def first_failure(self) -> Step | None:
        """The lowest offered rate that failed."""
        failed = [s for s in self.steps if not s.ok]
        return min(failed, key=lambda s: s.rate) if failed else None


_STAT = re.compile(r"\*\*\*Statistics for: (\S+)\*\*\*")
_STAMPS = re.compile(r"\*\*\*Timestamps for packets: (\S+)\*\*\*")


def parse_perfdhcp(text: str, step: Step) -> Step:
    """Add one perfdhcp report (with ``-x t``) to ``step``."""
    section, stamps = "", False
    for line in text.splitlines():
        if m := _STAT.search(line):
            section, stamps = m.group(1), False
        elif _STAMPS.search(line):
            stamps = True
        elif stamps and line.startswith("sent / received:"):
            sent, received = (float(v) for v in line.split(":", 1)[1].split("/"))
            step.delays_ms.append((received - sent) * 1e3)
        elif line.startswith("Rate:"):
            step.perfdhcp_rate += float(line.split()[1])
        elif line.startswith("sent packets:") and section == "DISCOVER-OFFER":
            step.sent += int(line.split(":")[1])
        elif line.startswith("received packets:") and section == "DISCOVER-OFFER":
            step.offers += int(line.split(":")[1])
        elif line.startswith("received packets:") and section == "REQUEST-ACK":
            step.acks += int(line.split(":")[1])
    return step


def _cpu_ticks(pid: int) -> int:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _idle_ticks() -> int:
    """Idle + iowait time of all CPUs. Busy = the rest: /proc/stat's busy columns are sampled at
    ticks and miss most of perfdhcp's timer-aligned work here; idle time is measured."""
    ticks = pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(ticks[4]) + int(ticks[5])


def _udp_rcvbuf_errors(netns: str) -> int:
    """UDP datagrams dropped in ``netns`` because a socket's receive buffer was full."""
    udp = [
        line.split()
        for line in _run(_ns(netns, "cat", "/proc/net/snmp")).splitlines()
        if line.startswith("Udp:")
    ]
    return int(dict(zip(udp[0], udp[1], strict=True))["RcvbufErrors"])


def _perfdhcp_cmd(target: Target, chaddrs: list[str], rate: int, period: float) -> list[str]:
    cmd = ["perfdhcp", "-4", "-l", "eth0", "-r", str(rate), "-p", f"{period:g}"]
    cmd += ["-R", str(len(chaddrs)), "-b", f"mac={chaddrs[0]}", "-x", "t", "-g", "single"]
    if target.local_port:
        cmd += ["-L", str(target.local_port)]
    return [*cmd, *PERFDHCP_EXTRA, target.server_ip]


def perfdhcp(target: Target, mode: Mode, rate: int, period: float, log: pathlib.Path | None = None) -> Step:
    """One perfdhcp per client VM, all at once, each at its share of ``rate``: their sum."""
    cmds = [
        (vm, _perfdhcp_cmd(target, chaddrs, share, period))
        for vm, chaddrs, share in zip(target.vms, mode.chaddrs, shares(rate, len(target.vms)), strict=True)
    ]
    step = Step(rate, period)
    drops = [_udp_rcvbuf_errors(vm) for vm in target.vms]
    procs: list[subprocess.Popen] = []
    cpu_s: dict[int, float] = {}  # pid → CPU seconds, from wait4 (exact, nothing sampled)
    with contextlib.ExitStack() as outs:
        files = [outs.enter_context(tempfile.TemporaryFile("w+")) for _ in cmds]
        before = {name: _cpu_ticks(pid) for name, pid in target.pids.items()}
        idle_before = _idle_ticks()
        t0 = time.monotonic()
        try:
            for (vm, cmd), out in zip(cmds, files, strict=True):
                # `ip netns exec` execs perfdhcp: the pid is perfdhcp's own.
                procs.append(subprocess.Popen(_ns(vm, *cmd), stdout=out, stderr=subprocess.STDOUT))
            while len(cpu_s) < len(procs):
                for proc in procs:
                    if proc.pid in cpu_s:
                        continue
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        cpu_s[pid] = usage.ru_utime + usage.ru_stime
                if time.monotonic() - t0 > period + 60:
                    raise BenchError(f"perfdhcp at {rate}/s did not finish")
                time.sleep(0.05)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    proc.wait()
        elapsed = time.monotonic() - t0
        hz = os.sysconf("SC_CLK_TCK")
        step.cpu = {
            name: 100.0 * (_cpu_ticks(pid) - before[name]) / hz / elapsed for name, pid in target.pids.items()
        }
        step.client_cpu = [100.0 * cpu_s[proc.pid] / elapsed for proc in procs]
        step.machine_cpu = (
            100.0 * (os.cpu_count() or 1) - 100.0 * (_idle_ticks() - idle_before) / hz / elapsed
        )
        step.client_drops = [_udp_rcvbuf_errors(vm) - n for vm, n in zip(target.vms, drops, strict=True)]
        for (_vm, cmd), out in zip(cmds, files, strict=True):
            out.seek(0)
            text = out.read()
            parse_perfdhcp(text, step)
            if log is not None:
                with open(log, "a") as f:
                    f.write(f"# {' '.join(cmd)}\n")
                    f.write(
                        "\n".join(line for line in text.splitlines() if not line.startswith("sent / rec"))
                    )
                    f.write("\n")
    return step


def warm_up(target: Target, mode: Mode, timeout: float = 20.0) -> None:
    """One exchange at a time from each VM until the server answers it (flows, bindings, caches)."""
    for vm, chaddrs in zip(target.vms, mode.chaddrs, strict=True):
        deadline = time.monotonic() + timeout
        while perfdhcp(replace(target, vms=[vm]), Mode(mode.label, [chaddrs[:1]]), 20, 1).acks == 0:
            if time.monotonic() > deadline:
                raise BenchError(f"{target.server} ({mode.label}) never answered perfdhcp from {vm}")
            time.sleep(0.5)


def sweep(
    target: Target, mode: Mode, rates: Sequence[int], period: float, refine: int, log: pathlib.Path
) -> Series:
    """Offered rates in order until one fails, then ``refine`` bisections below that rate."""
    series = Series(target.server, mode.label)
    warm_up(target, mode)

    def run(rate: int) -> Step:
        step = perfdhcp(target, mode, rate, period, log)
        series.steps.append(step)
        print(
            f"  {target.server:13} {mode.label:20} offered {rate:6}/s  done {step.dora_s:8.0f}/s  "
            f"lost {step.loss_pct:6.2f}%  p50 {step.p(50):7.2f} ms  p99 {step.p(99):7.2f} ms  {step.notes()}",
            flush=True,
        )
        return step

    good = 0
    for rate in rates:
        if not run(rate).ok:
            break
        good = rate
    else:
        return series
    bad = rate
    for _ in range(refine if good else 0):
        mid = round((good + bad) / 2 / 250) * 250
        if not good < mid < bad:
            break
        if run(mid).ok:
            good = mid
        else:
            bad = mid
    return series


# ---------------------------------------------------------------------------------------- servers
AGENT_NET, AGENT_GW = "10.202.0.0/16", "10.202.0.1"
AGENT_VM_MAC = "fa:16:3e:0a:00:05"


@contextlib.contextmanager
def agent_server(
    lab: Lab, rate_limit: tuple[int, int], k: int, direct: bool = True
) -> Iterator[tuple[Target, list[Mode]]]:
    """A sandbox host with its agent at its defaults (but ``rate_limit``, and ``direct`` replies
    or not); K client VMs on its br-int; DHCP states for every MAC."""
    from agent._pb import goalstate_pb2 as pb
    from agent.sandbox import goalstates as gs
    from agent.sandbox.hosts import Sandbox

    conf = lab.root / "agent.toml"
    conf.write_text(
        f"[dhcp]\nrate = {rate_limit[0]}\nburst = {rate_limit[1]}\ndirect_replies = {str(direct).lower()}\n"
    )
    box = Sandbox(lab.root / "agent", prefix=f"{lab.tag}a-")
    lab.defer(box.down)
    box.host_up("host1", agent_args=("--config", str(conf)))
    host = box.host("host1")
    vpc, subnet, vni = "vpc-dhcpbench", "subnet-dhcpbench", 5202
    vm_macs = client_macs(AGENT_VM_MAC, k)
    macs = client_macs()
    pair_ips = [f"10.202.1.{i}" if i < 250 else f"10.202.2.{i - 250}" for i in range(len(macs))]
    states = [
        gs.vpc(vpc, vni, AGENT_NET),
        gs.subnet(subnet, vpc, AGENT_NET, vni, gateway_ip=AGENT_GW, op=gs.CREATE),
        *(
            gs.dhcp(f"dhcp-c{i}", subnet, mac, ip)
            for i, (mac, ip) in enumerate(zip(macs, pair_ips, strict=True))
        ),
    ]
    vms = []
    # Each VM's port gets its own slice of the 200 clients as allowed address pairs.
    for i, (mac, pair_macs, ips) in enumerate(zip(vm_macs, split(macs, k), split(pair_ips, k), strict=True)):
        port_id, ip = f"port-{uuid.uuid4().hex[:8]}", f"10.202.0.{5 + i}"
        vms.append(box.vm_add("host1", f"cl{i}", mac, f"{ip}/16", iface_id=port_id).netns)
        pairs = list(zip(ips, pair_macs, strict=True))
        states.append(gs.port(port_id, vpc, subnet, ip, mac, host.underlay_ip, pairs=pairs))
        states.append(gs.dhcp(f"dhcp-vm{i}", subnet, mac, ip, f"bench-vm{i}"))
    replies = box.push_message("host1", gs.goal_state_v2(*states, host_ip=host.underlay_ip))
    bad = {
        s.resource_id: s.operation_status
        for r in replies
        for s in r.operation_statuses
        if s.operation_status != pb.SUCCESS
    }
    if bad:
        raise BenchError(f"agent refused the bench goal state: {bad}")
    for vm_ns in vms:
        # perfdhcp unicasts to the server id (the subnet's gateway) like a relay agent would.
        _run(_ns(vm_ns, "ip", "neigh", "replace", AGENT_GW, "lladdr", RESPONDER_MAC, "dev", "eth0"))
    pids = {"aca-agent": host.agent_pid or 0, "ovs-vswitchd": _pidfile(pathlib.Path(host.ovs_rundir))}
    target = Target("agent" if direct else "agent-via-ovs", vms, AGENT_GW, pids)
    yield target, [Mode(VM_MODE, [[mac] for mac in vm_macs]), Mode(RELAY_MODE, split(macs, k))]


def _pidfile(rundir: pathlib.Path, name: str = "ovs-vswitchd") -> int:
    try:
        return int((rundir / f"{name}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def _ovs(lab: Lab, netns: str, name: str) -> object:
    from agent.sandbox.ovs import OvsInstance

    ovs = OvsInstance(lab.root / name / "ovs", netns)
    lab.defer(lambda: ovs.stop(remove=False))
    ovs.start()
    return ovs


OVN_NET, OVN_GW = "10.201.0.0/24", "10.201.0.1"
OVN_VM_MAC, OVN_SERVER_MAC = "fa:16:3e:0b:00:05", "02:00:00:0b:00:01"
OVN_SCHEMAS = pathlib.Path("/usr/share/ovn")


@dataclass
class OvnStack:
    """OVN on a simulated host of its own: NB/SB ovsdb-servers, ovn-northd, OVS with br-int
    (userspace datapath) and ovn-controller; ``nbctl`` runs ovn-nbctl against its NB."""

    netns: str
    ovs: object
    controller: int
    nbctl: Callable[..., str]


def ovn_stack(lab: Lab, name: str = "ovn", system_id: str = "dhcp-bench") -> OvnStack:
    """Start the stack (stopped by ``lab``); also used by bench.sg_scale."""
    ns = lab.netns(name)
    d = lab.root / name
    d.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OVN_RUNDIR": str(d), "OVN_LOGDIR": str(d), "OVN_DBDIR": str(d)}
    for db in ("nb", "sb"):
        _run(["ovsdb-tool", "create", str(d / f"{db}.db"), str(OVN_SCHEMAS / f"ovn-{db}.ovsschema")])
        lab.spawn(
            _ns(
                ns,
                "ovsdb-server",
                str(d / f"{db}.db"),
                f"--remote=punix:{d / db}.sock",
                f"--unixctl={d / db}-db.ctl",
                f"--pidfile={d / db}-db.pid",
                f"--log-file={d / db}-db.log",
            ),
            d / f"{db}-db.out",
            env,
        )
    for db in ("nb", "sb"):
        wait_for((d / f"{db}.sock").exists, 10.0, f"{db}.sock to appear")
    nb, sb = f"unix:{d / 'nb.sock'}", f"unix:{d / 'sb.sock'}"
    lab.spawn(
        _ns(
            ns,
            "ovn-northd",
            f"--ovnnb-db={nb}",
            f"--ovnsb-db={sb}",
            f"--unixctl={d / 'northd.ctl'}",
            f"--pidfile={d / 'northd.pid'}",
            f"--log-file={d / 'northd.log'}",
        ),
        d / "northd.out",
        env,
    )
    ovs = _ovs(lab, ns, name)
    ovs_env = {**env, **ovs.env}  # type: ignore[attr-defined]
    # The integration bridge on the userspace datapath, as ovn-controller would make it.
    ovs.vsctl(
        "--may-exist",
        "add-br",
        "br-int",
        "--",
        "set",
        "bridge",
        "br-int",
        "datapath_type=netdev",  # type: ignore[attr-defined]
        "fail_mode=secure",
        "other_config:disable-in-band=true",
    )
    ovs.vsctl(
        "set",
        "Open_vSwitch",
        ".",
        f"external_ids:ovn-remote={sb}",  # type: ignore[attr-defined]
        "external_ids:ovn-encap-type=geneve",
        "external_ids:ovn-encap-ip=127.0.0.1",
        f"external_ids:system-id={system_id}",
        "external_ids:ovn-bridge-datapath-type=netdev",
    )
    controller = lab.spawn(
        _ns(
            ns,
            "ovn-controller",
            ovs.db_remote,  # type: ignore[attr-defined]
            f"--pidfile={d / 'controller.pid'}",
            f"--log-file={d / 'controller.log'}",
        ),
        d / "controller.out",
        ovs_env,
    )

    def nbctl(*args: str) -> str:
        return _run(["ovn-nbctl", f"--db={nb}", "--timeout=60", *args], env=env).strip()

    return OvnStack(ns, ovs, controller, nbctl)


@contextlib.contextmanager
def ovn_server(lab: Lab, k: int) -> Iterator[tuple[Target, list[Mode]]]:
    """NB/SB ovsdb-servers, ovn-northd and ovn-controller on a simulated host of their own."""
    stack = ovn_stack(lab)
    ns, ovs, controller, nbctl = stack.netns, stack.ovs, stack.controller, stack.nbctl
    nbctl("ls-add", "ls0")
    opts = nbctl("dhcp-options-create", OVN_NET)
    opts = opts or nbctl("--bare", "--columns=_uuid", "find", "DHCP_Options", f'cidr="{OVN_NET}"')
    nbctl(
        "dhcp-options-set-options",
        opts,
        "lease_time=86400",
        f"router={OVN_GW}",
        f"server_id={OVN_GW}",
        f"server_mac={OVN_SERVER_MAC}",
        "mtu=1450",
        "dns_server=10.201.0.2",
    )
    vm_macs, vms = client_macs(OVN_VM_MAC, k), []
    for i, mac in enumerate(vm_macs):
        lsp, ip = f"lsp{i}", f"10.201.0.{5 + i}"
        nbctl("lsp-add", "ls0", lsp)
        nbctl("lsp-set-addresses", lsp, f"{mac} {ip}")
        nbctl("lsp-set-dhcpv4-options", lsp, opts)
        vms.append(lab.netns(f"ovn-vm{i}"))
        _veth_to_bridge(ovs, ns, "br-int", f"vm-ovn{i}", vms[-1], mac, f"{ip}/24", iface_id=lsp)
        nbctl("wait-until", "Logical_Switch_Port", lsp, "up=true")
        _run(_ns(vms[-1], "ip", "neigh", "replace", OVN_GW, "lladdr", OVN_SERVER_MAC, "dev", "eth0"))
    nbctl("--wait=hv", "sync")
    pids = {"ovn-controller": controller, "ovs-vswitchd": _pidfile(ovs.rundir)}  # type: ignore[attr-defined]
    # From the lease address and port 68, unicast to the server id: what OVN's flows accept.
    yield Target("ovn", vms, OVN_GW, pids, local_port=68), [Mode(VM_MODE, [[m] for m in vm_macs])]


PEER_NET, PEER_SERVER_IP = "10.203.0.0/24", "10.203.0.1"  # relay VMs: .2 + i (< .10, the pool)
PEER_SERVER_MAC, PEER_VM_MAC = "fa:16:3e:0d:00:01", "fa:16:3e:0d:00:02"


def _peer_ip(i: int) -> str:
    return f"10.203.0.{10 + i}"


def _peer_vm_ip(i: int) -> str:
    """The fixed address of client VM i's own MAC (the 1-client-per-VM mode), above the 200."""
    return f"10.203.0.{240 + i}"


def _peer_modes(k: int) -> list[Mode]:
    return [
        Mode(VM_MODE, [[m] for m in client_macs(PEER_VM_MAC, k)]),
        Mode(RELAY_MODE, split(client_macs(), k)),
    ]


@contextlib.contextmanager
def _peer_host(lab: Lab, name: str, k: int) -> Iterator[tuple[str, list[str], str]]:
    """A host namespace with OVS and a netdev bridge joining a server and K relay VM namespaces."""
    host_ns = lab.netns(f"{name}-host")
    ovs = _ovs(lab, host_ns, name)
    ovs.vsctl("add-br", "br-peer", "--", "set", "bridge", "br-peer", "datapath_type=netdev")  # type: ignore[attr-defined]
    srv_ns = lab.netns(f"{name}-srv")
    _veth_to_bridge(ovs, host_ns, "br-peer", "srv", srv_ns, PEER_SERVER_MAC, f"{PEER_SERVER_IP}/24")
    vms = []
    for i, mac in enumerate(client_macs(PEER_VM_MAC, k)):
        vms.append(lab.netns(f"{name}-vm{i}"))
        _veth_to_bridge(ovs, host_ns, "br-peer", f"vm{i}", vms[-1], mac, f"10.203.0.{2 + i}/24")
    yield srv_ns, vms, str(_pidfile(ovs.rundir))  # type: ignore[attr-defined]


@contextlib.contextmanager
def kea_server(lab: Lab, k: int, log_severity: str = "INFO") -> Iterator[tuple[Target, list[Mode]]]:
    """kea-dhcp4 with memfile leases (persisted), logging to a file at Debian's packaged
    severity, INFO (one line per lease; ``--kea-log-severity WARN`` shows what that costs)."""
    with _peer_host(lab, "kea", k) as (srv_ns, vms, vswitchd):
        d = lab.root / "kea"
        d.mkdir(parents=True, exist_ok=True)
        conf = {
            "Dhcp4": {
                "interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "udp"},
                "lease-database": {
                    "type": "memfile",
                    "persist": True,
                    "name": str(d / "leases4.csv"),
                    "lfc-interval": 3600,
                },
                "valid-lifetime": 86400,
                "renew-timer": 43200,
                "rebind-timer": 75600,
                "subnet4": [
                    {
                        "id": 1,
                        "subnet": PEER_NET,
                        "pools": [{"pool": f"{_peer_ip(0)} - {_peer_vm_ip(MAX_CLIENT_VMS - 1)}"}],
                        "option-data": [
                            {"name": "routers", "data": PEER_SERVER_IP},
                            {"name": "domain-name-servers", "data": PEER_SERVER_IP},
                            {"name": "interface-mtu", "data": "1450"},
                        ],
                    }
                ],
                "loggers": [
                    {
                        "name": "kea-dhcp4",
                        "severity": log_severity,
                        "output_options": [{"output": str(d / "kea-dhcp4.log")}],
                    }
                ],
            }
        }
        (d / "kea-dhcp4.conf").write_text(json.dumps(conf, indent=2))
        env = {**os.environ, "KEA_PIDFILE_DIR": str(d), "KEA_LOCKFILE_DIR": str(d)}
        pid = lab.spawn(_ns(srv_ns, "kea-dhcp4", "-c", str(d / "kea-dhcp4.conf")), d / "kea.out", env)
        pids = {"kea-dhcp4": pid, "ovs-vswitchd": int(vswitchd)}
        yield Target("kea", vms, PEER_SERVER_IP, pids), _peer_modes(k)


@contextlib.contextmanager
def dnsmasq_server(lab: Lab, k: int) -> Iterator[tuple[Target, list[Mode]]]:
    """dnsmasq with the arguments Neutron's DHCP agent gives it by default: no log directory
    (``dnsmasq_base_log_dir`` has no default), so no ``--log-queries --log-dhcp --log-facility``."""
    with _peer_host(lab, "dnsmasq", k) as (srv_ns, vms, vswitchd):
        d = lab.root / "dnsmasq"
        d.mkdir(parents=True, exist_ok=True)
        fixed = [*zip(client_macs(), map(_peer_ip, range(CLIENTS)), strict=True)]
        fixed += zip(client_macs(PEER_VM_MAC, k), map(_peer_vm_ip, range(k)), strict=True)
        hosts = [f"{mac},host-{ip.replace('.', '-')}.openstacklocal,{ip}" for mac, ip in fixed]
        (d / "host").write_text("\n".join(hosts) + "\n")
        for name in ("addn_hosts", "opts", "leases"):
            (d / name).write_text("")
        # dnsmasq drops root for "nobody", which must still reach its files.
        for path in (d, *d.iterdir()):
            path.chmod(0o777 if path == d else 0o755 if path.is_dir() else 0o666)
        cmd = [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-hosts",
            "--no-resolv",
            f"--pid-file={d / 'pid'}",
            f"--dhcp-hostsfile={d / 'host'}",
            f"--addn-hosts={d / 'addn_hosts'}",
            f"--dhcp-optsfile={d / 'opts'}",
            f"--dhcp-leasefile={d / 'leases'}",
            "--dhcp-match=set:ipxe,175",
            "--dhcp-userclass=set:ipxe6,iPXE",
            "--local-service",
            "--bind-dynamic",
            "--interface=eth0",
            "--dhcp-range=set:subnet-dhcpbench,10.203.0.0,static,255.255.255.0,86400s",
            "--dhcp-option-force=option:mtu,1450",
            f"--dhcp-lease-max={CLIENTS + 56}",
            "--conf-file=/dev/null",
            "--domain=openstacklocal",
        ]
        pid = lab.spawn(_ns(srv_ns, *cmd), d / "dnsmasq.out")
        pids = {"dnsmasq": pid, "ovs-vswitchd": int(vswitchd)}
        yield Target("dnsmasq", vms, PEER_SERVER_IP, pids), _peer_modes(k)


# ---------------------------------------------------------------------------------------- report
def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def _key(s: Series) -> str:
    """A series' RESULT key stem: its mode's and its server's (``vm_agent_via_ovs``)."""
    return f"{MODE_KEYS[s.mode]}_{s.server.replace('-', '_')}"


def report(all_series: list[Series]) -> dict[str, float]:
    """The table, and each series' best DORA/s and p99 there under its own key (one per mode)."""
    print()
    print(
        f"{'server':13} {'mode':20} {'best DORA/s':>11} {'at offered':>10} {'lost %':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'p99@' + str(COMMON_RATE):>9}  limit (first failing step)"
    )
    results: dict[str, float] = {}
    for s in all_series:
        best, common, fail = s.best, s.at(COMMON_RATE), s.first_failure
        limit = "not reached" if fail is None else f"{fail.rate}/s: {fail.loss_pct:.1f}% lost"
        if fail is not None:
            limit += f", {fail.notes()}"
        print(
            f"{s.server:13} {s.mode:20} {_fmt(best.dora_s if best else None):>11} "
            f"{_fmt(best.rate if best else None):>10} {_fmt(best.loss_pct if best else None, '.2f'):>7} "
            f"{_fmt(best.p(50) if best else None, '.2f'):>7} {_fmt(best.p(99) if best else None, '.2f'):>7} "
            f"{_fmt(common.p(99) if common else None, '.2f'):>9}  {limit}"
        )
        results[f"{_key(s)}_dora_s"] = best.dora_s if best else 0.0
        results[f"{_key(s)}_p99_ms"] = best.p(99) if best else float("nan")
    return results


def common_p99(all_series: list[Series], mode: str, a: str, b: str) -> list[str]:
    """p99 of servers ``a`` and ``b`` in ``mode`` at the highest offered rate both passed:
    latency under equal load (each one's p99 at its own best step compares different loads)."""
    passed: dict[str, dict[int, Step]] = {}
    for s in all_series:
        if s.mode == mode and s.server in (a, b):
            passed[s.server] = {st.rate: st for st in s.steps if st.ok}
    if len(passed) < 2 or not set(passed[a]) & set(passed[b]):
        return []
    rate = max(set(passed[a]) & set(passed[b]))
    return [
        f"{MODE_KEYS[mode]}_{name.replace('-', '_')}_p99_at_{rate}_ms={passed[name][rate].p(99):.2f}"
        for name in (a, b)
    ]


def result_line(results: dict[str, float], settings: list[str], extra: list[str]) -> str:
    """Every series' DORA/s, then per mode the agent against each peer and against itself with
    replies through OVS, then p99s, the settings that differ from shipped defaults, ``extra``."""
    fields = [f"{k}={v:.0f}" for k, v in results.items() if k.endswith("_dora_s")]
    for mode in MODE_KEYS.values():
        agent = results.get(f"{mode}_agent_dora_s")
        if not agent:
            continue
        for peer in ("ovn", "kea", "dnsmasq"):
            if results.get(f"{mode}_{peer}_dora_s"):
                fields.append(f"{mode}_agent_vs_{peer}_ratio={agent / results[f'{mode}_{peer}_dora_s']:.2f}")
        if results.get(f"{mode}_agent_via_ovs_dora_s"):
            fields.append(
                f"{mode}_direct_vs_via_ovs_ratio={agent / results[f'{mode}_agent_via_ovs_dora_s']:.2f}"
            )
    fields += [f"{k}={v:.2f}" for k, v in results.items() if k.endswith("_p99_ms")]
    return "RESULT " + " ".join(fields + settings + extra)


# ---------------------------------------------------------------------------------------- main
def _require(servers: Sequence[str]) -> None:
    needs = {
        "agent": ["perfdhcp", "ovs-vswitchd", "aca-agent"],
        "agent-via-ovs": [],
        "ovn": ["ovn-northd", "ovn-controller"],
        "kea": ["kea-dhcp4"],
        "dnsmasq": ["dnsmasq"],
    }
    missing = sorted({tool for s in ("agent", *servers) for tool in needs[s] if not _which(tool)})
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (run scripts/setup.sh)")


def _which(tool: str) -> bool:
    beside = pathlib.Path(sys.executable).parent / tool
    return beside.exists() or shutil.which(tool) is not None


RMEM_DEFAULT = pathlib.Path("/proc/sys/net/core/rmem_default")
CLIENT_RMEM = 4 << 20


def _client_receive_buffers() -> Callable[[], None]:
    """Sockets made from now on (perfdhcp's in every client VM, the peers' too) get 4 MiB receive
    buffers instead of 208 KiB: on a saturated 2-core machine perfdhcp is often descheduled, and
    replies that arrive meanwhile overflowed its socket (UDP RcvbufErrors), failing a step for
    the load generator's sake. Returns the undo (the machine-wide default is put back)."""
    before = int(RMEM_DEFAULT.read_text())
    if before >= CLIENT_RMEM:
        return lambda: None
    RMEM_DEFAULT.write_text(str(CLIENT_RMEM))
    return lambda: RMEM_DEFAULT.write_text(str(before))


def _on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.dhcp_rate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated subset of agent,ovn,kea,dnsmasq"
    )
    p.add_argument("--quick", action="store_true", help=f"rates {QUICK_RATES}, {QUICK_PERIOD_S:g} s each")
    p.add_argument("--rates", help="comma-separated offered rates (DORA/s)")
    p.add_argument("--period", type=float, help="seconds per rate step")
    p.add_argument(
        "--agent-rate-limit",
        default="0,200",
        metavar="RATE,BURST",
        help="the agent's per-port DHCP token bucket ([dhcp] rate, burst; rate 0: off). The shipped "
        "default (100/s, burst 200) caps each VM port at 100 requests/s: it would measure the limiter.",
    )
    p.add_argument(
        "--clients-vms",
        type=int,
        default=CLIENT_VMS,
        choices=range(1, MAX_CLIENT_VMS + 1),
        metavar="K",
        help=f"client VMs per server, one perfdhcp each at 1/K of the offered rate (default {CLIENT_VMS})",
    )
    p.add_argument("--perfdhcp-args", default="", help="extra perfdhcp arguments")
    p.add_argument("--kea-log-severity", default="INFO", help="Kea's logger severity (Debian ships INFO)")
    p.add_argument("--keep-logs", metavar="DIR", help="copy perfdhcp reports and server logs here")
    args = p.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        p.error(f"unknown servers: {', '.join(sorted(unknown))}")
    rates = (
        [int(r) for r in args.rates.split(",")] if args.rates else list(QUICK_RATES if args.quick else RATES)
    )
    period = args.period or (QUICK_PERIOD_S if args.quick else PERIOD_S)
    refine = QUICK_REFINE_STEPS if args.quick else REFINE_STEPS
    PERFDHCP_EXTRA[:] = args.perfdhcp_args.split()
    rate_limit = tuple(int(v) for v in args.agent_rate_limit.split(","))
    _require(servers)
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, OVS)")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    k = args.clients_vms
    makers = {
        "agent": lambda lab: agent_server(lab, (rate_limit[0], rate_limit[1]), k),
        "agent-via-ovs": lambda lab: agent_server(lab, (rate_limit[0], rate_limit[1]), k, direct=False),
        "ovn": lambda lab: ovn_server(lab, k),
        "kea": lambda lab: kea_server(lab, k, args.kea_log_severity),
        "dnsmasq": lambda lab: dnsmasq_server(lab, k),
    }
    print(f"versions {environment(tools=('ovn', 'kea', 'dnsmasq'))}")
    print(
        f"perfdhcp steps {rates} DORA/s, {period:g} s each, until > {LOSS_LIMIT_PCT:g}% of exchanges fail; "
        f"{k} client VM(s) per server; agent [dhcp] rate,burst = {rate_limit[0]},{rate_limit[1]}",
        flush=True,
    )
    all_series: list[Series] = []
    restore_rmem = _client_receive_buffers()
    root = pathlib.Path(tempfile.mkdtemp(prefix="acab-dhcp-"))
    root.chmod(0o755)  # dnsmasq reads its files as "nobody"
    tag = f"dr{uuid.uuid4().hex[:4]}-"
    try:
        for name in servers:
            lab = Lab(root / name, tag)
            lab.root.mkdir(parents=True)
            try:
                with makers[name](lab) as (target, modes):
                    for mode in modes:
                        all_series.append(
                            sweep(target, mode, rates, period, refine, root / f"perfdhcp-{name}.log")
                        )
            finally:
                lab.close()
                if args.keep_logs:
                    shutil.copytree(
                        root,
                        pathlib.Path(args.keep_logs),
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.sock", "*.ctl", "*.mgmt", "*.db"),
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        restore_rmem()
    results = report(all_series)
    settings = [
        f"agent_dhcp_rate_limit={'off' if rate_limit[0] == 0 else f'{rate_limit[0]},{rate_limit[1]}'}",
        f"kea_log={args.kea_log_severity}",
        f"client_vms={k}",
    ]
    equal_load = common_p99(all_series, VM_MODE, "agent", "ovn") + common_p99(
        all_series, RELAY_MODE, "agent", "kea"
    )
    print(result_line(results, settings, equal_load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
