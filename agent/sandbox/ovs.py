"""One private Open vSwitch instance (ovsdb-server + ovs-vswitchd), optionally inside a netns.

Used by the sandbox, the demo, tests and benchmarks to play a compute host's OVS. The agent
itself never shells out to OVS tools; these helpers stand for the operator and Nova.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import time

from agent.sandbox.poll import wait_for

SCHEMA = pathlib.Path("/usr/share/openvswitch/vswitch.ovsschema")


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited. A zombie counts as gone: detached daemons are reparented
    to PID 1, which here (a VM init that is no real init) may take long to reap them."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class OvsInstance:
    """ovsdb-server and ovs-vswitchd with their own run directory."""

    def __init__(self, rundir: str | os.PathLike, netns: str | None = None) -> None:
        self.rundir = pathlib.Path(rundir)
        self.netns = netns

    # ------------------------------------------------------------ paths
    @property
    def db_sock(self) -> pathlib.Path:
        return self.rundir / "db.sock"

    @property
    def db_remote(self) -> str:
        return f"unix:{self.db_sock}"

    def mgmt_sock(self, bridge: str) -> pathlib.Path:
        return self.rundir / f"{bridge}.mgmt"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "OVS_RUNDIR": str(self.rundir),
            "OVS_LOGDIR": str(self.rundir),
            "OVS_DBDIR": str(self.rundir),
        }

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [*self._prefix(), *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.rundir.mkdir(parents=True, exist_ok=True)
        db = self.rundir / "conf.db"
        if not db.exists():
            self._run("ovsdb-tool", "create", str(db), str(SCHEMA))
        self._start_ovsdb()
        self.vsctl("--no-wait", "init")
        self.start_vswitchd()

    def _start_ovsdb(self) -> None:
        self._run(
            "ovsdb-server", str(self.rundir / "conf.db"),
            f"--remote=punix:{self.db_sock}",
            f"--unixctl={self.rundir / 'ovsdb-server.ctl'}",
            f"--pidfile={self.rundir / 'ovsdb-server.pid'}",
            f"--log-file={self.rundir / 'ovsdb-server.log'}",
            "--detach",
        )  # fmt: skip
        wait_for(self.db_sock.exists, 10.0, f"{self.db_sock} to appear")

    def start_vswitchd(self) -> None:
        self._run(
            "ovs-vswitchd", self.db_remote,
            f"--unixctl={self.rundir / 'ovs-vswitchd.ctl'}",
            f"--pidfile={self.rundir / 'ovs-vswitchd.pid'}",
            f"--log-file={self.rundir / 'ovs-vswitchd.log'}",
            "--detach",
        )  # fmt: skip
        wait_for((self.rundir / "ovs-vswitchd.ctl").exists, 10.0, "ovs-vswitchd's control socket")

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.rundir / f"{name}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _kill(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process_gone(pid):
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        (self.rundir / f"{name}.pid").unlink(missing_ok=True)

    @property
    def vswitchd_pid(self) -> int | None:
        return self._pid("ovs-vswitchd")

    def stop_vswitchd(self, sig: int = signal.SIGTERM) -> None:
        """Stop ovs-vswitchd; ``SIGKILL`` plays a crash (no clean-up of its own, flows lost)."""
        self._kill("ovs-vswitchd", sig)
        (self.rundir / "ovs-vswitchd.ctl").unlink(missing_ok=True)

    def restart_vswitchd(self) -> None:
        self.stop_vswitchd()
        self.start_vswitchd()

    def restart_ovsdb(self) -> None:
        self._kill("ovsdb-server")
        self.db_sock.unlink(missing_ok=True)
        self._start_ovsdb()

    def stop(self, remove: bool = True) -> None:
        self.stop_vswitchd()
        self._kill("ovsdb-server")
        if remove:
            shutil.rmtree(self.rundir, ignore_errors=True)

    # ------------------------------------------------------------ operator tools
    def vsctl(self, *args: str) -> str:
        return self._run("ovs-vsctl", f"--db={self.db_remote}", "--timeout=30", *args)

    def ofctl(self, *args: str) -> str:
        return self._run("ovs-ofctl", "-O", "OpenFlow14", *args)
