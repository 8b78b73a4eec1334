"""The simulated-host sandbox: two hosts on a namespaced underlay, VMs on br-int, clean teardown."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from agent.sandbox import cli
from agent.sandbox.hosts import Sandbox, SandboxError
from agent.sandbox.ovs import OvsInstance, process_gone
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration

require_ovs()


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    # A short directory (unix socket paths) and a prefix of its own, apart from any user sandbox.
    root = tempfile.mkdtemp(prefix="acasb-")
    sb = Sandbox(root, prefix=f"acat{uuid.uuid4().hex[:4]}-")
    try:
        sb.host_up("host1", agent=False)
        sb.host_up("host2", agent=False)
        yield sb
    finally:
        sb.down()
        shutil.rmtree(root, ignore_errors=True)


def test_hosts_reach_each_other_over_the_underlay(sandbox: Sandbox) -> None:
    h1, h2 = sandbox.host("host1"), sandbox.host("host2")
    assert (h1.underlay_ip, h2.underlay_ip) == ("172.31.0.11", "172.31.0.12")
    for src, dst in ((h1, h2), (h2, h1)):
        proc = sandbox.exec(src.name, ["ping", "-c", "2", "-W", "2", dst.underlay_ip], check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # The underlay exists only inside the sandbox's namespaces.
    root_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "172.31.0." not in root_addrs


def test_netlink_helpers_see_the_host_underlay(sandbox: Sandbox) -> None:
    script = (
        "from agent.dataplane import netlink as n; "
        "print(n.underlay_address_present('172.31.0.11'), n.underlay_address_present('172.31.0.99'))"
    )
    proc = sandbox.exec("host1", [sys.executable, "-c", script])
    assert proc.stdout.strip() == "True False"


def test_vm_add_and_remove(sandbox: Sandbox) -> None:
    port_id = "0123456789ab-cdef-0123-4567-89abcdef0123"
    vm = sandbox.vm_add(
        "host1", "vm1", "02:00:00:00:01:01", "10.1.0.5/24", gw="10.1.0.1", iface_id=port_id, nova_name=True
    )
    assert vm.port == "tap0123456789a"
    ovs = sandbox.ovs("host1")
    assert ovs.vsctl("get", "bridge", "br-int", "fail_mode").strip() == "secure"
    assert ovs.vsctl("get", "bridge", "br-int", "datapath_type").strip() == "netdev"
    assert vm.port in ovs.vsctl("list-ports", "br-int").split()
    ids = ovs.vsctl("get", "interface", vm.port, "external_ids").strip()
    assert ids == f'{{attached-mac="02:00:00:00:01:01", iface-id="{port_id}", iface-status=active}}'
    assert int(ovs.vsctl("get", "interface", vm.port, "ofport")) > 0

    eth0 = sandbox.vm_exec("vm1", ["ip", "-o", "addr", "show", "eth0"], check=True).stdout
    assert "10.1.0.5/24" in eth0
    link = sandbox.vm_exec("vm1", ["ip", "-o", "link", "show", "eth0"], check=True).stdout
    assert "mtu 1450" in link and "02:00:00:00:01:01" in link
    assert "default via 10.1.0.1" in sandbox.vm_exec("vm1", ["ip", "route"], check=True).stdout
    offload = sandbox.vm_exec("vm1", ["ethtool", "-k", "eth0"], check=True).stdout
    assert "tx-checksumming: off" in offload
    with pytest.raises(SandboxError, match="already exists"):
        sandbox.vm_add("host1", "vm1", "02:00:00:00:01:02", "10.1.0.6/24")

    sandbox.vm_del("vm1")
    assert vm.port not in ovs.vsctl("list-ports", "br-int").split()
    assert vm.netns not in _netns()
    assert "vm1" not in sandbox.vms()


def test_cli_down_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    root = tempfile.mkdtemp(prefix="acasb-")
    prefix = f"acat{uuid.uuid4().hex[:4]}-"
    args = ["--dir", root, "--prefix", prefix]
    links_before = _root_links()
    pids: list[int] = []
    try:
        assert cli.main([*args, "host", "up", "host1", "--no-agent"]) == 0
        assert cli.main([*args, "host", "up", "host2", "--no-agent"]) == 0
        vm = ["vm", "add", "host2", "vmx", "--mac", "02:00:00:00:02:01", "--ip", "10.2.0.5/24"]
        assert cli.main([*args, *vm]) == 0
        pids = [int(p.read_text()) for p in pathlib.Path(root).rglob("*.pid")]
        assert len(pids) == 4  # ovsdb-server + ovs-vswitchd per host
        created = {n for n in _netns() if n.startswith(prefix)}
        assert created == {f"{prefix}ul", f"{prefix}host1", f"{prefix}host2", f"{prefix}vm-vmx"}

        # Half-created: OVS running, br-phy not configured yet. The failure cleans up after itself.
        def broken_vsctl(self: OvsInstance, *a: str) -> str:
            raise RuntimeError("injected")

        with monkeypatch.context() as m:
            m.setattr(OvsInstance, "vsctl", broken_vsctl)
            assert cli.main([*args, "host", "up", "host3", "--no-agent"]) == 1
        assert f"{prefix}host3" not in _netns()
        assert "host3" not in Sandbox(root, prefix=prefix).hosts()
        assert not (pathlib.Path(root) / "host3").exists()
    finally:
        assert cli.main([*args, "down"]) == 0
    assert not any(n.startswith(prefix) for n in _netns())
    assert _root_links() == links_before
    assert all(process_gone(pid) for pid in pids)
    assert not pathlib.Path(root).exists()
