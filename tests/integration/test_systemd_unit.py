"""aca-agent as a systemd service, under a real systemd.

1. ``systemd-analyze security --offline=true`` scores the unit: the score must be the one README
   states (and the unit's header repeats), and the unit must ship README's ``WatchdogSec``.
2. A Debian bookworm rootfs (systemd, Open vSwitch, python3 with the project's dependencies in
   /opt/aca-venv) is built once with mmdebstrap and cached under CACHE_DIR, keyed by its package
   list and the project's Python requirements. Each run boots it with systemd-nspawn (volatile
   overlay: the cache is never written; private network: nothing leaves the container), installs
   the project, its certificates and the unit by running README.md's "Run as a service" block as
   written (a throwaway CA from agent/sandbox/pki.py stands for the operator's), then checks
   READY, a goal state pushed from the host over a unix socket with mutual TLS (clients without
   the CA's certificate refused), a half-right config refused with exit 2 and not restarted, the
   watchdog at the shipped
   ``WatchdogSec`` (pinged while healthy, a hung agent killed and restarted), restarts, reload,
   stop, and the journal.

Commands run inside the booted container through ``nsenter`` into its PID 1's namespaces (no
machined on this host). The container sees no package index: pip installs from a wheelhouse that
the host's pip filled when the rootfs was built (``/etc/pip.conf`` in the rootfs points there).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.sandbox import goalstates as g
from agent.sandbox.pki import AGENT, Pki, sandbox_pki
from tests.support.parts import missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "aca-agent.service"

CACHE_DIR = Path(os.environ.get("ACA_TEST_CACHE", "/var/cache/aca-agent-tests"))
SUITE = "bookworm"
CONTAINER_PYTHON = (3, 11)  # bookworm's python3: the wheels the host's pip picks must fit it
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "openvswitch-switch", "iproute2",
    # pip builds the project in the container: the cffi (API mode) C engine needs a compiler.
    "gcc", "libc6-dev", "python3-dev",
)  # fmt: skip
RECIPE = 1  # bump when the build steps below change (part of the cache key)
README_PLACEHOLDER = "/path/to/this/repo"
README_PKI = "/path/to/your/pki"  # where README's block takes ca.crt, agent.crt, agent.key from

# Inside the container.
SRC = "/src/aca-agent"  # a copy of the repository (pip builds in it)
IO = "/run/aca-test"  # bound from the host: the gRPC socket, the config-editing script, the PKI
GRPC_SOCKET = f"{IO}/grpc.sock"
CONTROL_SOCKET = "/run/aca-agent/acactl.sock"
CONFIG = "/etc/aca-agent/aca-agent.toml"
ACACTL = f"/opt/aca-venv/bin/acactl --socket {CONTROL_SOCKET} --json"
HOST_ID, UNDERLAY_IP = "node-1", "192.0.2.10"  # the underlay address lives on the container's lo
TEST_DROPIN = f"""\
# Test only: the bound directory the host reaches the gRPC socket through (ProtectSystem=strict
# makes everything else read-only). The watchdog stays as shipped.
[Service]
ReadWritePaths={IO}
"""
EDIT_CONFIG = f"""\
#!/bin/sh
# $EDITOR for README's config step: what an operator would type into the file.
set -e
sed -i -e 's/^host_id = .*/host_id = "{HOST_ID}"/' \\
       -e 's/^underlay_ip = .*/underlay_ip = "{UNDERLAY_IP}"/' \\
       -e 's/^datapath_type = .*/datapath_type = "netdev"/' \\
       -e 's|^listen = .*|listen = "unix:{GRPC_SOCKET}"|' "$1"
grep -q '^host_id = "{HOST_ID}"' "$1"
grep -q '^datapath_type = "netdev"' "$1"
grep -q '^listen = "unix:{GRPC_SOCKET}"' "$1"
"""
VPC, VNI, SUBNET, CIDR = "vpc-1", 100, "sn-1", "10.0.0.0/24"
REMOTE_HOST = "192.0.2.99"  # another compute host's tunnel endpoint (never contacted)
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


# ================================================================== 1. what README claims about the unit
def readme_claims() -> tuple[float, int]:
    """README's "Run as a service": the security score it states and the ``WatchdogSec`` it names."""
    text = (ROOT / "README.md").read_text()
    score = re.search(r"`systemd-analyze security aca-agent` scores it (\d+\.\d+)", text)
    watchdog = re.search(r"`WatchdogSec=(\d+)`", text)
    assert score and watchdog, "README no longer states the unit's security score and WatchdogSec"
    return float(score.group(1)), int(watchdog.group(1))


def shipped_watchdog_sec() -> int:
    found = re.findall(r"^WatchdogSec=(\d+)s?$", UNIT.read_text(), re.M)
    assert len(found) == 1, f"{UNIT.name} must set WatchdogSec once, in seconds: {found}"
    return int(found[0])


def test_unit_ships_the_watchdog_readme_states() -> None:
    assert shipped_watchdog_sec() == readme_claims()[1]


def test_unit_security_exposure_is_the_score_readme_states() -> None:
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze is not installed (package systemd)")
    stated = readme_claims()[0]
    header = re.search(r"scores it (\d+\.\d+)", UNIT.read_text())
    assert header and float(header.group(1)) == stated, f"{UNIT.name}'s header and README disagree"
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out.stdout)
    assert found, f"no score in systemd-analyze output (rc {out.returncode}):\n{out.stdout}\n{out.stderr}"
    score = float(found.group(1))
    print(f"systemd-analyze security --offline=true {UNIT.name}: {score}")
    exposed = "\n".join(line for line in out.stdout.splitlines() if line.startswith("✗"))
    assert score == stated, f"exposure {score}, README states {stated}; open items:\n{exposed}"


# ================================================================== 2. the rootfs (cached)
def python_requirements() -> list[str]:
    """The project's runtime requirements (setup.py) and build requirements (pyproject.toml)."""
    runtime: list[str] = []
    tree = ast.parse((ROOT / "setup.py").read_text())
    # The floors are f-strings over setup.py's own version constants (NAME = "x.y.z").
    constants = {
        target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            code = compile(ast.Expression(node.value), "setup.py", "eval")
            runtime = list(eval(code, {"__builtins__": {}}, constants))
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert runtime, "install_requires not found in setup.py"
    return sorted(set(runtime) | set(build))


def rootfs_key(requirements: list[str]) -> str:
    spec = {"suite": SUITE, "packages": sorted(PACKAGES), "requirements": requirements, "recipe": RECIPE}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _clean_env() -> dict[str, str]:
    """The host's pip settings (its index, find-links, certificates) must not leak into a chroot."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(cmd)[:300]} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def build_rootfs(target: Path, requirements: list[str], scratch: Path) -> None:
    """mmdebstrap a bookworm rootfs with systemd + OVS + python3, and a venv with the project's
    dependencies installed offline from a wheelhouse the host's pip fills (the only downloads:
    Debian packages through mmdebstrap's apt, wheels through pip)."""
    wheels = scratch / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), *requirements], timeout=1200)
    reqs = " ".join(shlex.quote(r) for r in requirements)
    hooks = [
        f'mkdir -p "$1/opt/aca-wheels" && cp -a {shlex.quote(str(wheels))}/. "$1/opt/aca-wheels/"',
        # Offline compute node: pip (README's install step included) finds everything here.
        """printf '[global]\\nno-index = true\\nfind-links = /opt/aca-wheels\\n' > "$1/etc/pip.conf" """,
        'chroot "$1" python3 -m venv /opt/aca-venv',
        f'chroot "$1" /opt/aca-venv/bin/pip install -q {reqs}',
    ]
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
    cmd += [f"--customize-hook={hook}" for hook in hooks]
    cmd += [SUITE, str(target)]
    _run(cmd, timeout=1800, env=_clean_env())


def cached_rootfs() -> Path:
    requirements = python_requirements()
    key = rootfs_key(requirements)
    final = CACHE_DIR / f"rootfs-{key}"
    if (final / "opt/aca-venv/bin/python").exists():
        return final
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in CACHE_DIR.glob(".build-*"):  # left by a killed run
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE_DIR))
    try:
        started = time.monotonic()
        build_rootfs(scratch / "rootfs", requirements, scratch)
        (scratch / "rootfs" / ".aca-test-key").write_text(
            json.dumps({"packages": PACKAGES, "requirements": requirements, "recipe": RECIPE}) + "\n"
        )
        try:
            os.rename(scratch / "rootfs", final)  # atomic: a reader sees all of it or nothing
        except OSError:
            if not (final / "opt/aca-venv/bin/python").exists():  # not a concurrent build's win
                raise
        print(f"built {final} in {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for old in CACHE_DIR.glob("rootfs-*"):  # other keys: outdated package lists or requirements
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


# ================================================================== 3. the booted container
def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _is_pid_namespace_init(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
    return len(nspid) > 1 and nspid[-1] == "1"


class Container:
    """One systemd-nspawn boot of the cached rootfs; everything it creates goes with poweroff()."""

    def __init__(self, rootfs: Path, workdir: Path) -> None:
        self.rootfs = rootfs
        self.workdir = workdir
        self.io = workdir / "io"
        self.src = workdir / "src"
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.pki = Pki(workdir / "ca")  # made by install_as_readme_says

    # -------------------------------------------------------------- lifecycle
    def boot(self, timeout: float = 120.0) -> None:
        self.io.mkdir()
        shutil.copytree(
            ROOT, self.src, symlinks=True,
            ignore=shutil.ignore_patterns(
                ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".ruff_cache",
                "_pb", "*.so", ".venv",
            ),
        )  # fmt: skip
        cmd = [
            "systemd-nspawn", "-q", "-D", str(self.rootfs), "--volatile=overlay", "--register=no",
            "--keep-unit", "--private-network", "--console=read-only", f"--machine=acatest{os.getpid()}",
            f"--bind={self.io}:{IO}", f"--bind={self.src}:{SRC}", "-b",
        ]  # fmt: skip
        with open(self.console, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"systemd-nspawn exited ({self.proc.returncode}):\n{self.console_tail()}"
                )
            self.leader = next((p for p in _children(self.proc.pid) if _is_pid_namespace_init(p)), 0)
            if time.monotonic() > deadline:
                raise AssertionError(f"no container init after {timeout}s:\n{self.console_tail()}")
            time.sleep(0.1)
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise AssertionError(f"boot did not finish ({state!r}):\n{self.console_tail()}")
            time.sleep(0.5)
            with contextlib.suppress(subprocess.TimeoutExpired):  # PID 1 not answering yet
                state = self.sh("systemctl is-system-running --wait", check=False, timeout=20).stdout.strip()
        if state == "degraded":
            print(self.sh("systemctl --failed --no-legend", check=False).stdout)

    def poweroff(self, timeout: float = 30.0) -> None:
        """Orderly shutdown (nspawn turns SIGTERM into the init's poweroff), else SIGKILL the
        container's init, which takes its whole PID namespace with it. nspawn's mounts live in its
        own mount namespace and go when it exits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.leader and _is_pid_namespace_init(self.leader):
                    os.kill(self.leader, signal.SIGKILL)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -------------------------------------------------------------- inside
    def sh(
        self, script: str, check: bool = True, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with /bin/sh in the container (all of PID 1's namespaces, a clean env)."""
        assigns = [f"{k}={v}" for k, v in {**CONTAINER_ENV, **(env or {})}.items()]
        cmd = ["nsenter", "-t", str(self.leader), "-a", "/usr/bin/env", "-i", *assigns]
        cmd += ["/bin/sh", "-c", script]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in container: {script!r} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def show(self, prop: str, unit: str = "aca-agent") -> str:
        return self.sh(f"systemctl show -P {prop} {unit}").stdout.strip()

    def main_pid(self) -> int:
        return int(self.show("MainPID"))

    def journal(self, args: str = "-u aca-agent") -> str:
        return self.sh(f"journalctl --no-pager -o short-monotonic {args}", check=False).stdout

    def acactl(self, what: str) -> Any:
        return json.loads(self.sh(f"{ACACTL} dump {what}").stdout)

    def agent_flows(self) -> list[str]:
        """br-int's flows with the agent's cookie tag (0xa…), counters and ages left out."""
        out = self.sh("ovs-ofctl -O OpenFlow14 --no-stats dump-flows br-int").stdout
        return sorted(line.strip() for line in out.splitlines() if "cookie=0xa" in line)

    def wait_active(self, timeout: float = 60.0, not_pid: int = 0) -> int:
        """Until the agent is active (with a main PID other than ``not_pid``); its main PID."""
        deadline = time.monotonic() + timeout
        while True:
            state, pid = self.show("ActiveState"), self.main_pid()
            if state == "active" and pid and pid != not_pid:
                return pid
            if time.monotonic() > deadline:
                raise AssertionError(f"aca-agent not active after {timeout}s (state {state}, pid {pid})")
            time.sleep(0.2)

    def ensure_active(self) -> int:
        self.sh("systemctl start aca-agent", timeout=120)
        return self.wait_active()

    def diagnostics(self) -> str:
        parts = [
            self.sh("systemctl status --no-pager -l aca-agent ovs-vswitchd ovsdb-server", check=False).stdout,
            self.sh("journalctl --no-pager -n 150", check=False).stdout,
        ]
        return "\n".join(parts)


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    if os.geteuid() != 0:
        missing("the systemd test needs root (mmdebstrap, systemd-nspawn)")
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("systemd-nspawn", "systemd-container")):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (package {package})")
    if sys.version_info[:2] != CONTAINER_PYTHON:
        missing(
            f"the host's pip fills the container's wheelhouse: it must run bookworm's Python "
            f"{'.'.join(map(str, CONTAINER_PYTHON))}, not {sys.version.split()[0]}"
        )
    rootfs = cached_rootfs()
    workdir = Path(tempfile.mkdtemp(prefix="aca-nspawn-"))
    container = Container(rootfs, workdir)
    try:
        try:
            container.boot()
            install_as_readme_says(container)
        except BaseException:
            print(f"console:\n{container.console_tail()}")
            if container.leader:
                with contextlib.suppress(Exception):
                    print(container.diagnostics())
            raise
        yield container
    finally:
        try:
            container.poweroff()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def diagnosed(test: Callable[..., None]) -> Callable[..., None]:
    """On failure, print the container's unit states and journal tail (shown with the failure)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            test(*args, **kwargs)
        except BaseException:
            container = kwargs.get("box")
            if isinstance(container, Container) and container.leader:
                with contextlib.suppress(Exception):
                    print(container.diagnostics())
            raise

    return wrapper


def readme_service_commands() -> str:
    """The fenced shell block of README.md's "Run as a service" section, verbatim."""
    text = (ROOT / "README.md").read_text()
    assert "\n## Run as a service\n" in text, "README.md has no 'Run as a service' section"
    section = text.split("\n## Run as a service\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", section, re.S)
    assert block, "no fenced command block in README's 'Run as a service'"
    assert README_PLACEHOLDER in block.group(1), f"README's block no longer says {README_PLACEHOLDER}"
    return block.group(1)


def install_as_readme_says(container: Container) -> None:
    """Underlay address and the test's drop-in first, then README's block as a shell script, run
    from the repository copy, with ``$EDITOR`` doing the config edit the block asks for and a
    throwaway CA's files where the block takes the operator's."""
    (container.io / "edit-config").write_text(EDIT_CONFIG)
    (container.io / "edit-config").chmod(0o755)
    container.pki = sandbox_pki(container.pki.dir)
    given = container.io / "pki"
    given.mkdir()
    agent = container.pki.identity(AGENT)
    for source, name in ((container.pki.ca, "ca.crt"), (agent.cert, "agent.crt"), (agent.key, "agent.key")):
        shutil.copyfile(source, given / name)
    container.sh(
        f"ip addr add {UNDERLAY_IP}/32 dev lo && mkdir -p /etc/systemd/system/aca-agent.service.d && "
        f"cat > /etc/systemd/system/aca-agent.service.d/50-test.conf <<'EOF'\n{TEST_DROPIN}EOF"
    )
    script = readme_service_commands().replace(README_PLACEHOLDER, SRC)
    assert README_PKI in script, f"README's block no longer installs certificates from {README_PKI}"
    script = script.replace(README_PKI, f"{IO}/pki")
    started = time.monotonic()
    container.sh(f"set -ex\ncd {SRC}\n{script}", timeout=600, env={"EDITOR": f"{IO}/edit-config"})
    print(f"README's install block ran in {time.monotonic() - started:.1f}s")


# ================================================================== 4. the service, checked
@contextlib.contextmanager
def controller(container: Container) -> Iterator[pb_grpc.GoalStateProvisionerStub]:
    """The controller's side: gRPC from the host through the bound unix socket, with the client
    certificate the CA installed in the container signed."""
    creds = container.pki.channel_credentials()
    options = [("grpc.ssl_target_name_override", AGENT)]
    with grpc.secure_channel(f"unix:{container.io / 'grpc.sock'}", creds, options=options) as channel:
        yield pb_grpc.GoalStateProvisionerStub(channel)


def push(
    container: Container, *msgs: pb.GoalStateV2, timeout: float = 30.0
) -> list[pb.GoalStateOperationReply]:
    with controller(container) as stub:
        return list(stub.PushGoalStatesStream(iter(msgs), timeout=timeout, wait_for_ready=True))


def statuses(reply: pb.GoalStateOperationReply) -> dict[str, str]:
    return {s.resource_id: pb.OperationStatus.Name(s.operation_status) for s in reply.operation_statuses}


def subnet() -> pb.SubnetState:
    return g.subnet(SUBNET, VPC, CIDR, VNI, gateway_ip="10.0.0.1")


def neighbour(nid: str, last_octet: int) -> pb.NeighborState:
    return g.neighbor(
        nid, VPC, SUBNET, f"10.0.0.{last_octet}", f"02:00:00:00:00:{last_octet:02x}", REMOTE_HOST
    )


def goal_state_lines(container: Container, pid: int | None = None) -> list[str]:
    where = f"_PID={pid}" if pid else "-u aca-agent"
    return [line for line in container.journal(where).splitlines() if "event=goal_state " in line]


@diagnosed
def test_active_only_after_ready(box: Container) -> None:
    # README's `systemctl enable --now` returned: systemd saw READY=1 (with its STATUS=).
    assert box.show("ActiveState") == "active"
    assert box.show("UnitFileState") == "enabled"
    assert box.show("StatusText") == "goal states accepted"
    # Without ovs-vswitchd (no OpenFlow), the agent must stay "activating": no READY yet.
    box.sh("systemctl stop aca-agent && systemctl mask --runtime --now ovs-vswitchd")
    try:
        box.sh("systemctl start --no-block aca-agent")
        time.sleep(4)
        assert (box.show("ActiveState"), box.show("SubState")) == ("activating", "start")
        pid = box.main_pid()
        assert pid > 0
        with pytest.raises(grpc.RpcError), controller(box) as stub:
            list(stub.PushGoalStatesStream(iter([pb.GoalStateV2()]), timeout=1))  # no listener yet
    finally:
        box.sh("systemctl unmask --runtime ovs-vswitchd && systemctl start ovs-vswitchd")
    assert box.wait_active(60) == pid  # the same process, once OVS answered
    # Active means the listeners are up: an empty goal state is answered at once.
    (reply,) = push(box, pb.GoalStateV2(), timeout=5)
    assert list(reply.operation_statuses) == []


@diagnosed
def test_the_units_documentation_was_installed_by_readmes_pip_install(box: Container) -> None:
    (doc,) = box.show("Documentation").split()
    assert doc.startswith("file:///opt/aca-venv/"), doc
    box.sh(f"test -s {doc.removeprefix('file://')}")


@diagnosed
def test_goal_state_from_outside_is_applied_and_answered(box: Container) -> None:
    box.ensure_active()
    msg = g.goal_state_v2(
        g.vpc(VPC, VNI),
        subnet(),
        g.port("port-1", VPC, SUBNET, "10.0.0.5", "02:00:00:00:01:05", host_ip=UNDERLAY_IP),
        neighbour("nb-1", 9),
        host_ip=UNDERLAY_IP,
    )
    (reply,) = push(box, msg)
    assert statuses(reply) == {VPC: "SUCCESS", "port-1": "PENDING", "nb-1": "SUCCESS"}
    assert reply.message_total_operation_time > 0
    # Plug the port the way Nova/os-vif does: it becomes programmed without another push.
    box.sh(
        "ovs-vsctl add-port br-int tap-port-1 -- set Interface tap-port-1 type=internal "
        "external_ids:iface-id=port-1 external_ids:attached-mac=02:00:00:00:01:05"
    )
    deadline = time.monotonic() + 20
    while {p["id"]: p["state"] for p in box.acactl("ports")}.get("port-1") != "programmed":
        assert time.monotonic() < deadline, f"port-1 not programmed: {box.acactl('ports')}"
        time.sleep(0.2)
    neighbours = {n["id"]: n for n in box.acactl("neighbours")}
    assert neighbours["nb-1"]["state"] == "programmed"
    assert neighbours["nb-1"]["host_ip"] == REMOTE_HOST
    assert len(box.agent_flows()) > 10


@diagnosed
def test_the_installed_certificates_are_used_and_clients_without_one_refused(box: Container) -> None:
    box.ensure_active()
    assert box.sh("stat -c %a /etc/aca-agent/tls /etc/aca-agent/tls/agent.key").stdout.split() == [
        "700",
        "600",
    ]
    status = json.loads(box.sh(f"{ACACTL} status").stdout)
    assert status["grpc_insecure"] is False
    assert "event=grpc_listening address=unix:" in box.journal() and "tls=mutual" in box.journal()
    target = f"unix:{box.io / 'grpc.sock'}"
    no_client_cert = grpc.ssl_channel_credentials(root_certificates=box.pki.ca.read_bytes())
    for channel in (
        grpc.insecure_channel(target),
        grpc.secure_channel(target, no_client_cert, options=[("grpc.ssl_target_name_override", AGENT)]),
    ):
        with channel, pytest.raises(grpc.RpcError) as err:
            list(
                pb_grpc.GoalStateProvisionerStub(channel).PushGoalStatesStream(
                    iter([pb.GoalStateV2()]), timeout=5
                )
            )
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)


@diagnosed
def test_a_half_right_config_exits_2_and_is_not_restarted(box: Container) -> None:
    box.ensure_active()
    restarts = int(box.show("NRestarts"))
    box.sh(f"cp {CONFIG} {CONFIG}.good && sed -i 's/^tls_cert = .*//' {CONFIG}")
    try:
        assert box.sh("systemctl restart aca-agent", check=False, timeout=120).returncode != 0
        assert (box.show("ActiveState"), box.show("ExecMainStatus")) == ("failed", "2")
        assert int(box.show("NRestarts")) == restarts  # RestartPreventExitStatus=2
        assert "aca-agent: bad configuration: [grpc] tls_key is set without tls_cert" in box.journal()
    finally:
        box.sh(f"mv {CONFIG}.good {CONFIG} && systemctl reset-failed aca-agent")
    box.ensure_active()


@diagnosed
def test_journal_has_one_structured_line_per_goal_state(box: Container) -> None:
    box.ensure_active()
    before = len(goal_state_lines(box))
    msgs = [g.goal_state_v2(subnet(), neighbour(f"nb-j{i}", 30 + i), host_ip=UNDERLAY_IP) for i in range(3)]
    replies = push(box, *msgs)
    assert [statuses(r) for r in replies] == [{f"nb-j{i}": "SUCCESS"} for i in range(3)]
    deadline = time.monotonic() + 10
    while len(lines := goal_state_lines(box)) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    new = lines[before:]
    assert len(new) == 3, new
    parsed = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in new]
    for fields in parsed:  # the subnet rides along as context (INFO): 2 resources, 1 acted on
        want = {"source": "grpc-v2", "resources": "2", "acted": "1", "statuses": "SUCCESS:1"}
        assert {k: fields.get(k) for k in want} == want, fields
    numbers = [int(f["gs"]) for f in parsed]
    assert numbers == list(range(numbers[0], numbers[0] + 3))


@diagnosed
def test_hung_agent_is_killed_by_the_watchdog_and_comes_back_with_its_state(box: Container) -> None:
    pid = box.ensure_active()
    (reply,) = push(box, g.goal_state_v2(subnet(), neighbour("nb-wd", 50), host_ip=UNDERLAY_IP))
    assert statuses(reply) == {"nb-wd": "SUCCESS"}
    # The unit runs with the watchdog it ships, and the healthy agent pings it.
    status = json.loads(box.sh(f"{ACACTL} status").stdout)
    assert status["ready"] is True
    assert status["threads"] and set(status["threads"].values()) == {"running"}, status["threads"]
    watchdog = shipped_watchdog_sec()
    assert _seconds(box.show("WatchdogUSec")) == watchdog
    first = int(box.show("WatchdogTimestampMonotonic"))
    deadline = time.monotonic() + watchdog
    while int(box.show("WatchdogTimestampMonotonic")) <= first:
        assert time.monotonic() < deadline, f"no WATCHDOG=1 from the agent within {watchdog}s"
        time.sleep(0.2)
    restarts = int(box.show("NRestarts"))
    flows = box.agent_flows()
    box.sh(f"kill -STOP {pid}")
    new_pid = box.wait_active(watchdog + 30, not_pid=pid)
    assert int(box.show("NRestarts")) == restarts + 1
    assert "Watchdog timeout" in box.journal()
    # Back with its desired state from the state directory: no controller push in between.
    assert "nb-wd" in {n["id"] for n in box.acactl("neighbours")}
    assert goal_state_lines(box, new_pid) == []
    assert box.agent_flows() == flows  # re-programmed by diff: nothing changed on the bridge


@diagnosed
def test_killed_agent_is_restarted(box: Container) -> None:
    pid = box.ensure_active()
    restarts = int(box.show("NRestarts"))
    box.sh(f"kill -KILL {pid}")
    box.wait_active(30, not_pid=pid)
    assert int(box.show("NRestarts")) == restarts + 1
    assert "nb-wd" in {n["id"] for n in box.acactl("neighbours")}


@diagnosed
def test_the_memory_ceiling_and_oom_preference_apply_to_the_running_agent(box: Container) -> None:
    pid = box.ensure_active()
    memory_max = re.findall(r"^MemoryMax=(\d+)G$", UNIT.read_text(), re.M)
    oom_adjust = re.findall(r"^OOMScoreAdjust=(-?\d+)$", UNIT.read_text(), re.M)
    assert len(memory_max) == len(oom_adjust) == 1, f"{UNIT.name}: one MemoryMax (in G), one OOMScoreAdjust"
    assert int(box.show("MemoryMax")) == int(memory_max[0]) << 30
    assert box.sh(f"cat /proc/{pid}/oom_score_adj").stdout.strip() == oom_adjust[0]


@diagnosed
def test_reload_changes_the_log_level_without_a_restart(box: Container) -> None:
    pid = box.ensure_active()
    flows = box.agent_flows()
    box.sh(f"""sed -i 's/^log_level = .*/log_level = "DEBUG"/' {CONFIG} && systemctl reload aca-agent""")
    deadline = time.monotonic() + 10
    while "event=reloaded log_level=DEBUG" not in box.journal(f"_PID={pid}"):
        assert time.monotonic() < deadline, "no event=reloaded log_level=DEBUG in the journal"
        time.sleep(0.2)
    assert box.main_pid() == pid
    assert box.agent_flows() == flows


@diagnosed
def test_stop_is_clean_and_leaves_the_flows(box: Container) -> None:
    pid = box.ensure_active()
    flows = box.agent_flows()
    assert flows
    limit = _seconds(box.show("TimeoutStopUSec"))
    assert limit > 0
    started = time.monotonic()
    box.sh("systemctl stop aca-agent", timeout=limit + 30)
    took = time.monotonic() - started
    assert took < limit, f"stop took {took:.1f}s (TimeoutStopSec {limit}s)"
    assert box.show("ActiveState") == "inactive"
    assert (box.show("Result"), box.show("ExecMainCode"), box.show("ExecMainStatus")) == ("success", "1", "0")
    assert "event=stopped" in box.journal(f"_PID={pid}")
    assert box.agent_flows() == flows  # the dataplane keeps forwarding while the agent is down


def _seconds(timespan: str) -> float:
    """systemd's "20s" / "1min 30s" / "500ms" → seconds."""
    units = {"min": 60.0, "ms": 0.001, "us": 1e-6, "s": 1.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(min|ms|us|s|h)", timespan):
        total += float(number) * units[unit]
    return total


@diagnosed
def test_no_errors_under_the_hardening(box: Container) -> None:
    """A denied syscall, address family or capability surfaces as an error in the agent's log
    (SystemCallErrorNumber=EPERM makes a filtered call fail, not kill): none over the whole run."""
    lines = [line for line in box.journal("-u aca-agent -o cat").splitlines() if PROVOKED not in line]
    bad = [line for line in lines if "level=ERROR" in line or "level=CRITICAL" in line or "Traceback" in line]
    assert not bad, "\n".join(bad)


PROVOKED = "provoked-by-test"  # an acactl request the agent does not know: an error with its traceback


@diagnosed
def test_journal_priorities_find_warnings_and_errors_each_in_one_entry_with_its_traceback(
    box: Container,
) -> None:
    """Lines reach journald with their syslog priority and no timestamp of their own, and a
    traceback stays in its record's entry (journald splits a stream on newlines)."""
    pid = box.ensure_active()
    ask = (
        "import json, socket; s = socket.socket(socket.AF_UNIX); "
        f"s.connect({CONTROL_SOCKET!r}); s.sendall(json.dumps({{'what': {PROVOKED!r}}}).encode() + b'\\n'); "
        "print(s.makefile().readline())"
    )
    answer = json.loads(box.sh(f"python3 -c {shlex.quote(ask)}").stdout)
    assert answer["ok"] is False and PROVOKED in answer["error"]
    box.sh("systemctl reload aca-agent")  # event=reloaded: a warning

    def entries() -> list[dict[str, str]]:
        out = box.sh(f"journalctl --no-pager -o json -p warning _PID={pid}", check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    deadline = time.monotonic() + 10
    found = entries()
    while not any("event=reloaded" in e.get("MESSAGE", "") for e in found):
        assert time.monotonic() < deadline, f"no event=reloaded at priority warning: {found}"
        time.sleep(0.2)
        found = entries()
    messages = [str(e["MESSAGE"]) for e in found]
    assert all(m.startswith("level=") for m in messages), messages  # no "<N>" left, no ts=
    assert all(e["PRIORITY"] in ("2", "3", "4") for e in found), found
    reloaded = next(e for e in found if "event=reloaded" in e["MESSAGE"])
    assert reloaded["PRIORITY"] == "4" and "level=WARNING" in reloaded["MESSAGE"]
    (failed,) = [e for e in found if "event=task_failed" in e["MESSAGE"]]
    assert failed["PRIORITY"] == "3" and "level=ERROR" in failed["MESSAGE"]
    assert (
        "traceback=" in failed["MESSAGE"] and f"ValueError: unknown request '{PROVOKED}'" in failed["MESSAGE"]
    )
    traceback = failed["MESSAGE"].split("traceback=", 1)[1]
    assert json.loads(traceback).startswith("Traceback (most recent call last):\n  File ")
    # Not one traceback line as an entry of its own; info lines stay below the warning priority.
    assert not any(m.lstrip().startswith(("File ", "Traceback", "raise ")) for m in messages), messages
    assert not any("event=goal_state " in m for m in messages)
