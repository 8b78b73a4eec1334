"""Simulated compute hosts and VMs on one machine, entirely inside network namespaces.

Layout (``prefix`` defaults to ``aca-``)::

    {prefix}ul            underlay: Linux bridge ul0, one veth per host (h<N>)
    {prefix}<host>        a compute host: private OVS, br-phy (netdev) owning eth-ul with the
                          host's underlay IP, br-int for VMs, and optionally aca-agent
    {prefix}vm-<vm>       a VM: eth0 (MAC, IP, MTU 1450) whose peer is a port on br-int

Nothing is created in the root namespace, so no test traffic can leave the machine.
Agents run with mutual TLS like a production install: a throwaway CA in ``<dir>/pki``
(agent/sandbox/pki.py) signs each agent's certificate and the one clients push with
(``Sandbox.channel``); the agents present theirs to a controller (``Sandbox.pki``).
State lives in ``<dir>/sandbox.json`` so separate CLI invocations find what exists; every
resource is recorded *before* it is created, which lets teardown clean half-built hosts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.cli import acactl
from agent.sandbox.ovs import OvsInstance, process_gone
from agent.sandbox.pki import AGENT, CONTROLLER, Pki, sandbox_pki

if TYPE_CHECKING:
    import grpc

DEFAULT_DIR = pathlib.Path("/run/aca-sandbox")
DEFAULT_SUBNET = "172.31.0.0/24"
UNDERLAY_BRIDGE = "ul0"
HOST_UNDERLAY_IFACE = "eth-ul"  # underlay veth end inside a host, a port of br-phy
VM_MTU = 1450  # 1500 minus VXLAN/UDP/IP/Ethernet overhead
IFNAMSIZ = 15


class SandboxError(Exception):
    """A sandbox operation failed; the message names the step."""


@dataclass
class HostInfo:
    name: str
    index: int
    netns: str
    underlay_ip: str
    underlay_prefix: int
    dir: str
    ovs_rundir: str
    grpc: str  # gRPC target usable from the root namespace: unix:<dir>/grpc.sock
    control_socket: str
    state_dir: str
    log_file: str
    agent_pid: int | None = None
    agent_args: list[str] = dataclasses.field(default_factory=list)  # extra flags, reused on restart

    @property
    def db_remote(self) -> str:
        return f"unix:{self.ovs_rundir}/db.sock"

    @property
    def ul_peer(self) -> str:
        """The underlay veth end inside the underlay namespace, enslaved to ul0."""
        return f"h{self.index}"


@dataclass
class VmInfo:
    name: str
    host: str
    netns: str
    port: str  # host-end veth name, a port on br-int
    mac: str
    ip: str  # address/prefix
    gw: str | None
    iface_id: str


def _run(cmd: Sequence[str], check: bool = True, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, env=env)
    if check and proc.returncode != 0:
        raise SandboxError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _netns_exists(name: str) -> bool:
    return pathlib.Path("/run/netns", name).exists()


def _kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not process_gone(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)


def _wait_gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited, False if it still runs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _is_agent(pid: int) -> bool:
    """Guard against pid reuse: only signal a process that still is the agent we started."""
    try:
        return b"aca-agent" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def _find_agent() -> str | None:
    beside = pathlib.Path(sys.executable).parent / "aca-agent"
    return str(beside) if beside.exists() else shutil.which("aca-agent")


class Sandbox:
    """Create, inspect and tear down simulated hosts and VMs; safe across processes (flock)."""

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_DIR,
        prefix: str = "aca-",
        subnet: str = DEFAULT_SUBNET,
    ) -> None:
        self.root = pathlib.Path(root)
        self.prefix = prefix
        self.subnet = ipaddress.ip_network(subnet)

    # ------------------------------------------------------------ metadata
    @property
    def meta_path(self) -> pathlib.Path:
        return self.root / "sandbox.json"

    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}ul"

    @property
    def pki(self) -> Pki:
        """The sandbox's CA and its AGENT and CONTROLLER identities, made on first use."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".pki.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return sandbox_pki(self.root / "pki")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Load metadata under an exclusive lock and save it back, also when the body fails."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta = self._load()
            try:
                yield meta
            finally:
                tmp = self.meta_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                tmp.replace(self.meta_path)

    def _load(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            meta = {}
        meta.setdefault("prefix", self.prefix)
        meta.setdefault("underlay", {"netns": self.underlay_netns, "bridge": UNDERLAY_BRIDGE})
        meta["underlay"].setdefault("subnet", str(self.subnet))
        meta.setdefault("hosts", {})
        meta.setdefault("vms", {})
        if meta["prefix"] != self.prefix:
            raise SandboxError(f"{self.root} belongs to a sandbox with prefix {meta['prefix']!r}")
        return meta

    def state(self) -> dict[str, Any]:
        """The metadata as stored (read without taking the lock)."""
        return self._load()

    def hosts(self) -> dict[str, HostInfo]:
        return {name: HostInfo(**h) for name, h in self._load()["hosts"].items()}

    def vms(self) -> dict[str, VmInfo]:
        return {name: VmInfo(**v) for name, v in self._load()["vms"].items()}

    def host(self, name: str) -> HostInfo:
        try:
            return self.hosts()[name]
        except KeyError:
            raise SandboxError(f"no host {name!r} in {self.root}") from None

    def ovs(self, host: str) -> OvsInstance:
        h = self.host(host)
        return OvsInstance(h.ovs_rundir, h.netns)

    # ------------------------------------------------------------ underlay
    def underlay_up(self) -> None:
        """The namespace with the ul0 bridge that all host underlay veths plug into."""
        with self._locked() as meta:
            self._underlay_up(meta)

    def _underlay_up(self, meta: dict[str, Any]) -> None:
        ns = meta["underlay"]["netns"]
        if _netns_exists(ns):
            return
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "link", "add", UNDERLAY_BRIDGE, "type", "bridge"])
        _run(["ip", "-n", ns, "link", "set", UNDERLAY_BRIDGE, "up"])

    # ------------------------------------------------------------ hosts
    def host_up(self, name: str, agent: bool = True, agent_args: Sequence[str] = ()) -> HostInfo:
        """Namespace, underlay link, OVS with br-phy, and (unless ``agent=False``) aca-agent."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise SandboxError(f"host name {name!r}: use letters, digits, - and _")
        agent_path = _find_agent() if agent else None
        if agent and agent_path is None:
            raise SandboxError("aca-agent not found (install the package, or pass --no-agent)")
        with self._locked() as meta:
            if name in meta["hosts"]:
                raise SandboxError(f"host {name!r} already exists")
            self._underlay_up(meta)
            host = self._new_host(meta, name)
            host.agent_args = list(agent_args)
            meta["hosts"][name] = dataclasses.asdict(host)
            try:
                self._build_host(host)
                if agent_path is not None:
                    host.agent_pid = self._start_agent(host, agent_path, agent_args)
                    meta["hosts"][name] = dataclasses.asdict(host)
            except BaseException:
                self._teardown_host(meta, name)
                raise
        return host

    def _new_host(self, meta: dict[str, Any], name: str) -> HostInfo:
        subnet = ipaddress.ip_network(meta["underlay"]["subnet"])
        used = {h["index"] for h in meta["hosts"].values()}
        digits = re.search(r"(\d+)$", name)
        index = int(digits.group(1)) if digits and int(digits.group(1)) not in used else None
        if index is None:
            index = next(i for i in range(1, 10_000) if i not in used)
        if index + 10 >= subnet.num_addresses - 1:
            raise SandboxError(f"host index {index} does not fit in underlay subnet {subnet}")
        hdir = self.root / name
        return HostInfo(
            name=name,
            index=index,
            netns=f"{self.prefix}{name}",
            underlay_ip=str(subnet.network_address + 10 + index),
            underlay_prefix=subnet.prefixlen,
            dir=str(hdir),
            ovs_rundir=str(hdir / "ovs"),
            grpc=f"unix:{hdir / 'grpc.sock'}",
            control_socket=str(hdir / "acactl.sock"),
            state_dir=str(hdir / "state"),
            log_file=str(hdir / "agent.log"),
        )

    def _build_host(self, h: HostInfo) -> None:
        ul = self.underlay_netns
        pathlib.Path(h.state_dir).mkdir(parents=True, exist_ok=True)
        _run(["ip", "netns", "add", h.netns])
        _run(["ip", "-n", h.netns, "link", "set", "lo", "up"])
        # Created inside the underlay namespace with the peer placed straight into the host's.
        _run(["ip", "-n", ul, "link", "add", h.ul_peer, "type", "veth",
              "peer", "name", HOST_UNDERLAY_IFACE, "netns", h.netns])  # fmt: skip
        _run(["ip", "-n", ul, "link", "set", h.ul_peer, "master", UNDERLAY_BRIDGE, "up"])
        _run(["ip", "-n", h.netns, "link", "set", HOST_UNDERLAY_IFACE, "up"])
        for ns, dev in ((ul, h.ul_peer), (h.netns, HOST_UNDERLAY_IFACE)):
            _run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
        ovs = OvsInstance(h.ovs_rundir, h.netns)
        ovs.start()
        ovs.vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev",
                  "--", "add-port", "br-phy", HOST_UNDERLAY_IFACE)  # fmt: skip
        _run(["ip", "-n", h.netns, "addr", "add", f"{h.underlay_ip}/{h.underlay_prefix}", "dev", "br-phy"])
        _run(["ip", "-n", h.netns, "link", "set", "br-phy", "up"])

    def _start_agent(self, h: HostInfo, agent_path: str, extra: Sequence[str]) -> int:
        """Start aca-agent in the host's namespace; returns once its gRPC and control sockets exist."""
        sock = pathlib.Path(h.grpc.removeprefix("unix:"))
        control = pathlib.Path(h.control_socket)
        # A killed agent leaves its sockets behind; they must not pass for the new one's.
        sock.unlink(missing_ok=True)
        control.unlink(missing_ok=True)
        cmd = [
            "ip", "netns", "exec", h.netns, agent_path,
            "--host-id", h.name,
            "--underlay-ip", h.underlay_ip,
            "--grpc-listen", h.grpc,
            "--ovsdb", h.db_remote,
            "--ovs-rundir", h.ovs_rundir,
            "--datapath-type", "netdev",
            "--state-dir", h.state_dir,
            "--control-socket", h.control_socket,
            "--log-file", h.log_file,
            *self._tls_args(),
            *extra,
        ]  # fmt: skip
        out_path = pathlib.Path(h.dir) / "agent.out"
        with open(out_path, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + 20
        # The agent opens its control socket after the gRPC listener, so that one is enough when
        # a test moved gRPC to a TCP address (--grpc-listen in ``extra``).
        while not control.exists():
            if proc.poll() is not None:
                tail = out_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise SandboxError(f"aca-agent for {h.name} exited {proc.returncode}: " + " | ".join(tail))
            if time.monotonic() > deadline:
                _kill_pid(proc.pid)
                raise SandboxError(f"aca-agent for {h.name} did not open {control} within 20s")
            time.sleep(0.05)
        return proc.pid

    def _tls_args(self) -> list[str]:
        """Mutual TLS both ways: the intake requires a client certificate from the sandbox CA,
        and the agent shows its own to a controller (agent/sandbox/controller.py serves with
        the CONTROLLER identity). A test's ``agent_args`` come after, so they can override."""
        pki = self.pki
        agent = pki.identity(AGENT)
        return [
            "--grpc-tls-cert", str(agent.cert), "--grpc-tls-key", str(agent.key),
            "--grpc-tls-client-ca", str(pki.ca),
            "--controller-ca", str(pki.ca), "--controller-cert", str(agent.cert),
            "--controller-key", str(agent.key), "--controller-server-name", CONTROLLER,
        ]  # fmt: skip

    def channel(
        self,
        host: str,
        options: Sequence[tuple[str, Any]] = (),
        identity: str = CONTROLLER,
        target: str | None = None,
    ) -> grpc.Channel:
        """A gRPC channel to the host's agent (its goal-state endpoint, or ``target``, e.g. its
        subscribe endpoint), authenticated with the certificate the sandbox CA issued to
        ``identity`` (CONTROLLER: what controllers, tests and benchmarks push with)."""
        import grpc

        creds = self.pki.channel_credentials(identity)
        return grpc.secure_channel(
            target or self.host(host).grpc,
            creds,
            options=[("grpc.ssl_target_name_override", AGENT), *options],
        )

    def stop_agent(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send ``sig`` to the host's agent and wait until it is gone (SIGKILL after ``timeout``)."""
        with self._locked() as meta:
            self._stop_agent(meta, name, sig, timeout)

    def _stop_agent(self, meta: dict[str, Any], name: str, sig: int, timeout: float) -> None:
        if name not in meta["hosts"]:
            raise SandboxError(f"no host {name!r} in {self.root}")
        pid = meta["hosts"][name]["agent_pid"]
        if pid is not None and _is_agent(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                if not _wait_gone(pid, timeout):
                    os.kill(pid, signal.SIGKILL)
                    _wait_gone(pid, 5.0)
        meta["hosts"][name]["agent_pid"] = None

    def restart_agent(
        self, name: str, sig: int = signal.SIGTERM, agent_args: Sequence[str] | None = None
    ) -> HostInfo:
        """Stop the host's agent with ``sig`` (if one runs) and start it again on the same state.

        ``agent_args`` replaces the extra flags recorded at ``host_up``; this also starts an agent
        on a host brought up with ``agent=False``.
        """
        agent_path = _find_agent()
        if agent_path is None:
            raise SandboxError("aca-agent not found (install the package)")
        with self._locked() as meta:
            self._stop_agent(meta, name, sig, timeout=10.0)
            if agent_args is not None:
                meta["hosts"][name]["agent_args"] = list(agent_args)
            host = HostInfo(**meta["hosts"][name])
            host.agent_pid = self._start_agent(host, agent_path, host.agent_args)
            meta["hosts"][name] = dataclasses.asdict(host)
        return host

    def host_down(self, name: str) -> None:
        with self._locked() as meta:
            if name not in meta["hosts"]:
                raise SandboxError(f"no host {name!r} in {self.root}")
            self._teardown_host(meta, name)

    def _teardown_host(self, meta: dict[str, Any], name: str) -> None:
        """Remove the host's VMs, agent, OVS, namespace and directory; tolerates half-built hosts."""
        h = HostInfo(**meta["hosts"][name])
        for vm in [v for v, info in meta["vms"].items() if info["host"] == name]:
            self._teardown_vm(meta, vm)
        if h.agent_pid is not None and _is_agent(h.agent_pid):
            _kill_pid(h.agent_pid)
        OvsInstance(h.ovs_rundir, h.netns).stop(remove=False)
        self._delete_netns(h.netns)
        # The peer h<N> went away with its partner; this only matters if the host netns never existed.
        if _netns_exists(self.underlay_netns):
            _run(["ip", "-n", self.underlay_netns, "link", "del", h.ul_peer], check=False)
        shutil.rmtree(h.dir, ignore_errors=True)
        del meta["hosts"][name]

    @staticmethod
    def _delete_netns(ns: str) -> None:
        """Kill whatever still runs in ``ns`` (it is ours), then delete it and its devices."""
        if not _netns_exists(ns):
            return
        for pid in _run(["ip", "netns", "pids", ns], check=False).split():
            _kill_pid(int(pid), timeout=5)
        _run(["ip", "netns", "del", ns])

    def exec(
        self, host: str, cmd: Sequence[str], check: bool = True, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the host's namespace; OVS_RUNDIR points ovs-vsctl/ofctl at its OVS."""
        h = self.host(host)
        return subprocess.run(
            ["ip", "netns", "exec", h.netns, *cmd],
            env={**os.environ, "OVS_RUNDIR": h.ovs_rundir},
            capture_output=capture,
            text=True,
            check=check,
        )

    # ------------------------------------------------------------ VMs
    def vm_add(
        self,
        host: str,
        vm: str,
        mac: str,
        ip: str,
        gw: str | None = None,
        iface_id: str | None = None,
        nova_name: bool = False,
    ) -> VmInfo:
        """Plug a VM the way Nova/os-vif does: a br-int port carrying iface-id and attached-mac."""
        iface = ipaddress.ip_interface(ip)
        iface_id = iface_id or str(uuid.uuid4())
        port = f"tap{iface_id[:11]}" if nova_name else f"vm-{vm}"
        if len(port) > IFNAMSIZ:
            raise SandboxError(f"interface name {port!r} is too long; shorten the VM name or use --nova-name")
        with self._locked() as meta:
            if host not in meta["hosts"]:
                raise SandboxError(f"no host {host!r} in {self.root}")
            if vm in meta["vms"]:
                raise SandboxError(f"VM {vm!r} already exists")
            if any(v["host"] == host and v["port"] == port for v in meta["vms"].values()):
                raise SandboxError(f"host {host} already has a port {port}")
            info = VmInfo(vm, host, f"{self.prefix}vm-{vm}", port, mac.lower(), str(iface), gw, iface_id)
            meta["vms"][vm] = dataclasses.asdict(info)
            try:
                self._build_vm(HostInfo(**meta["hosts"][host]), info)
            except BaseException:
                self._teardown_vm(meta, vm)
                raise
        return info

    def _build_vm(self, h: HostInfo, v: VmInfo) -> None:
        ovs = OvsInstance(h.ovs_rundir, h.netns)
        # Same settings the agent's ensure_integration_bridge writes, so either may come first.
        ovs.vsctl("--may-exist", "add-br", "br-int", "--", "set", "bridge", "br-int",
                  "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow14,OpenFlow15",
                  "other_config:disable-in-band=true")  # fmt: skip
        _run(["ip", "netns", "add", v.netns])
        _run(
            [
                "ip",
                "-n",
                h.netns,
                "link",
                "add",
                v.port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                v.netns,
            ]
        )
        for ns, dev in ((v.netns, "eth0"), (h.netns, v.port)):
            _run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
        _run(["ip", "-n", v.netns, "link", "set", "eth0", "address", v.mac, "mtu", str(VM_MTU)])
        _run(["ip", "-n", v.netns, "addr", "add", v.ip, "dev", "eth0"])
        for dev in ("lo", "eth0"):
            _run(["ip", "-n", v.netns, "link", "set", dev, "up"])
        if v.gw:
            _run(["ip", "-n", v.netns, "route", "add", "default", "via", v.gw])
        _run(["ip", "-n", h.netns, "link", "set", v.port, "up"])
        ovs.vsctl("add-port", "br-int", v.port, "--", "set", "Interface", v.port,
                  f"external_ids:iface-id={v.iface_id}", f"external_ids:attached-mac={v.mac}",
                  "external_ids:iface-status=active")  # fmt: skip

    def vm_del(self, vm: str) -> None:
        with self._locked() as meta:
            if vm not in meta["vms"]:
                raise SandboxError(f"no VM {vm!r} in {self.root}")
            self._teardown_vm(meta, vm)

    def _teardown_vm(self, meta: dict[str, Any], vm: str) -> None:
        v = VmInfo(**meta["vms"][vm])
        h = HostInfo(**meta["hosts"][v.host])
        if _netns_exists(h.netns):
            ovs = OvsInstance(h.ovs_rundir, h.netns)
            if ovs.db_sock.exists():
                with contextlib.suppress(RuntimeError):
                    ovs.vsctl("--if-exists", "del-port", "br-int", v.port)
            _run(["ip", "-n", h.netns, "link", "del", v.port], check=False)
        self._delete_netns(v.netns)
        del meta["vms"][vm]

    def vm_exec(self, vm: str, cmd: Sequence[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        try:
            v = self.vms()[vm]
        except KeyError:
            raise SandboxError(f"no VM {vm!r} in {self.root}") from None
        return subprocess.run(
            ["ip", "netns", "exec", v.netns, *cmd], capture_output=True, text=True, check=check
        )

    def control(self, host: str, what: str) -> Any:
        """What the host's agent reports on its control socket (status, ports, neighbours, ...)."""
        return acactl.request(self.host(host).control_socket, what, timeout=10)

    def ping(self, vm: str, ip: str, count: int = 3) -> subprocess.CompletedProcess[str]:
        return self.vm_exec(vm, ["ping", "-c", str(count), "-W", "2", str(ipaddress.ip_address(ip))])

    # ------------------------------------------------------------ goal states
    def push(
        self, host: str, path: str | os.PathLike[str], v1: bool = False, timeout: float = 30.0
    ) -> list[dict]:
        """Send a goal state file (protobuf JSON or binary) to the host's agent; replies as dicts."""
        from google.protobuf import json_format

        from agent._pb import goalstate_pb2

        raw = pathlib.Path(path).read_bytes()
        msg = goalstate_pb2.GoalState() if v1 else goalstate_pb2.GoalStateV2()
        try:
            json_format.Parse(raw.decode(), msg)
        except (UnicodeDecodeError, json_format.ParseError):
            msg.ParseFromString(raw)
        return [json_format.MessageToDict(r) for r in self.push_message(host, msg, timeout)]

    def push_message(self, host: str, msg: Any, timeout: float = 30.0) -> list[Any]:
        """Send one GoalState (unary v1) or GoalStateV2 (a one-message stream) over gRPC; the replies."""
        import grpc

        from agent._pb import goalstate_pb2, goalstate_pb2_grpc

        target = self.host(host).grpc
        with self.channel(host) as channel:
            stub = goalstate_pb2_grpc.GoalStateProvisionerStub(channel)
            try:
                if isinstance(msg, goalstate_pb2.GoalState):
                    return [stub.PushNetworkResourceStates(msg, timeout=timeout)]
                return list(stub.PushGoalStatesStream(iter([msg]), timeout=timeout))
            except grpc.RpcError as e:
                raise SandboxError(f"push to {host} ({target}): {e.code().name}: {e.details()}") from e

    # ------------------------------------------------------------ everything
    def down(self) -> None:
        """Tear down every host, VM and the underlay, then remove the state directory."""
        if not self.root.exists():
            return
        with self._locked() as meta:
            for name in list(meta["hosts"]):
                self._teardown_host(meta, name)
            self._delete_netns(meta["underlay"]["netns"])
        shutil.rmtree(self.root, ignore_errors=True)
