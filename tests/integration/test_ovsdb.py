"""The OVSDB owner against a real ovsdb-server + ovs-vswitchd (netdev) in a private namespace."""

from __future__ import annotations

import queue
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from agent.dataplane.ovsdb import AddPort, InterfaceInfo, Ovsdb, OvsdbError
from agent.sandbox.ovs import OvsInstance
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration

require_ovs()


@pytest.fixture
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    # Its own namespace, so the bridges' internal devices never appear in the root namespace.
    netns = f"aca-t-ovsdb-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    instance = OvsInstance(tmp_path_factory.mktemp("ovs"), netns=netns)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False)


class Events:
    """Interface lists reported from the IDL thread."""

    def __init__(self) -> None:
        self.q: queue.Queue[list[InterfaceInfo]] = queue.Queue()

    def wait_for(
        self, pred: Callable[[list[InterfaceInfo]], bool], timeout: float = 15.0
    ) -> list[InterfaceInfo]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching interface report")
            try:
                report = self.q.get(timeout=remaining)
            except queue.Empty:
                continue
            if pred(report):
                return report


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def db(ovs: OvsInstance, events: Events) -> Iterator[Ovsdb]:
    client = Ovsdb(ovs.db_remote, on_interface_change=events.q.put)
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()


def _by_name(report: list[InterfaceInfo], name: str) -> InterfaceInfo | None:
    return next((i for i in report if i.name == name), None)


def _get(ovs: OvsInstance, *args: str) -> str:
    return ovs.vsctl("get", *args).strip()


def test_ensure_integration_bridge_is_idempotent(ovs: OvsInstance, db: Ovsdb) -> None:
    db.ensure_integration_bridge("br-int", datapath_type="netdev")
    assert _get(ovs, "bridge", "br-int", "fail_mode") == "secure"
    assert _get(ovs, "bridge", "br-int", "datapath_type") == "netdev"
    assert _get(ovs, "bridge", "br-int", "protocols") == "[OpenFlow14, OpenFlow15]"
    assert _get(ovs, "bridge", "br-int", "other_config:disable-in-band") == '"true"'
    # Applied by ovs-vswitchd before the call returned: the OpenFlow socket is there.
    assert ovs.mgmt_sock("br-int").exists()
    next_cfg = _get(ovs, "open_vswitch", ".", "next_cfg")
    listing = ovs.vsctl("list", "bridge", "br-int")

    db.ensure_integration_bridge("br-int", datapath_type="netdev")
    assert _get(ovs, "open_vswitch", ".", "next_cfg") == next_cfg  # empty transaction, nothing sent
    assert ovs.vsctl("list", "bridge", "br-int") == listing
    assert ovs.vsctl("list-br").split() == ["br-int"]
    assert db.datapath_id("br-int") == int(_get(ovs, "bridge", "br-int", "datapath_id").strip('"'), 16)


def test_vxlan_port_ofport(ovs: OvsInstance, db: Ovsdb) -> None:
    db.ensure_integration_bridge("br-int", datapath_type="netdev")
    ofport = db.ensure_vxlan_port("br-int", local_ip="172.31.0.11")
    assert ofport == int(_get(ovs, "interface", "vxlan0", "ofport"))
    assert _get(ovs, "interface", "vxlan0", "type") == "vxlan"
    options = _get(ovs, "interface", "vxlan0", "options")
    assert options == '{key=flow, local_ip="172.31.0.11", remote_ip=flow}'
    assert db.ensure_vxlan_port("br-int", local_ip="172.31.0.11") == ofport
    [info] = [i for i in db.interfaces("br-int") if i.name == "vxlan0"]
    assert (info.type, info.ofport, info.iface_id) == ("vxlan", ofport, None)


def test_errors_name_the_operation(ovs: OvsInstance, db: Ovsdb) -> None:
    with pytest.raises(OvsdbError) as err:
        db.ensure_vxlan_port("br-missing", local_ip="172.31.0.11")
    assert err.value.what == "ensure vxlan port vxlan0 on br-missing"
    assert "no such bridge" in err.value.reason
    db.ensure_integration_bridge("br-int", datapath_type="netdev")
    ovs.vsctl("add-br", "br-other", "--", "set", "bridge", "br-other", "datapath_type=netdev")
    with pytest.raises(OvsdbError, match="another bridge"):
        db.execute("move br-other", [AddPort("br-int", "br-other")])


def test_write_waits_for_vswitchd(ovs: OvsInstance, db: Ovsdb) -> None:
    ovs.stop_vswitchd()
    try:
        with pytest.raises(OvsdbError, match="did not apply"):
            db.set_flow_restore_wait(True, timeout=1.0)
    finally:
        ovs.start_vswitchd()
    db.set_flow_restore_wait(True)  # the restarted vswitchd catches up with next_cfg
    assert db.get_flow_restore_wait() is True


def test_interface_add_remove_reported(ovs: OvsInstance, db: Ovsdb, events: Events) -> None:
    db.ensure_integration_bridge("br-int", datapath_type="netdev")
    events.wait_for(lambda r: _by_name(r, "br-int") is not None)
    ovs.vsctl(
        "add-port", "br-int", "tap1", "--", "set", "interface", "tap1", "type=internal",
        "external_ids:iface-id=port-1", "external_ids:attached-mac=02:00:00:00:00:01",
    )  # fmt: skip
    report = events.wait_for(lambda r: (i := _by_name(r, "tap1")) is not None and i.ofport is not None)
    tap = _by_name(report, "tap1")
    assert tap is not None
    assert (tap.iface_id, tap.mac) == ("port-1", "02:00:00:00:00:01")
    assert tap.ofport == int(_get(ovs, "interface", "tap1", "ofport"))
    assert db.interfaces("br-int") == report

    ovs.vsctl("del-port", "br-int", "tap1")
    report = events.wait_for(lambda r: _by_name(r, "tap1") is None)
    assert [i.name for i in report] == ["br-int"]


def test_survives_ovsdb_restart(ovs: OvsInstance, db: Ovsdb, events: Events) -> None:
    db.ensure_integration_bridge("br-int", datapath_type="netdev")
    ovs.restart_ovsdb()
    # The IDL reconnects with backoff and re-monitors; the callback keeps firing.
    ovs.vsctl("add-port", "br-int", "tap2", "--", "set", "interface", "tap2", "type=internal",
              "external_ids:iface-id=port-2")  # fmt: skip
    report = events.wait_for(lambda r: (i := _by_name(r, "tap2")) is not None and i.ofport is not None)
    assert _by_name(report, "tap2").iface_id == "port-2"  # type: ignore[union-attr]
    # And writes go through the new connection.
    db.set_flow_restore_wait(True)
    assert _get(ovs, "open_vswitch", ".", "other_config:flow-restore-wait") == '"true"'


def test_flow_restore_wait(ovs: OvsInstance, db: Ovsdb) -> None:
    assert db.get_flow_restore_wait() is False
    db.set_flow_restore_wait(True)
    assert db.get_flow_restore_wait() is True
    assert _get(ovs, "open_vswitch", ".", "other_config:flow-restore-wait") == '"true"'
    db.set_flow_restore_wait(False)
    assert db.get_flow_restore_wait() is False
    assert "flow-restore-wait" not in _get(ovs, "open_vswitch", ".", "other_config")
