"""Decode + validate: every resource type, good and bad (table tests)."""

from __future__ import annotations

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.model.decode import decode_state, decode_v1, decode_v2
from agent.model.resources import Op, ResourceType
from agent.sandbox import goalstates as gs


def _decode(rtype: ResourceType, state) -> str:
    return decode_state(rtype, state).error


GOOD = [
    (ResourceType.VPC, gs.vpc("v1", 100)),
    (ResourceType.SUBNET, gs.subnet("s1", "v1", "10.0.1.0/24", 100, "10.0.1.1", "aa:bb:cc:00:00:01")),
    (ResourceType.PORT, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")),
    (ResourceType.NEIGHBOR, gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12")),
    (ResourceType.DHCP, gs.dhcp("d1", "s1", "fa:16:3e:00:00:05", "10.0.1.5")),
]


@pytest.mark.parametrize(("rtype", "state"), GOOD)
def test_valid_resources_decode(rtype: ResourceType, state) -> None:
    assert _decode(rtype, state) == ""


def _with(state, **changes):
    copy = type(state)()
    copy.CopyFrom(state)
    for path, value in changes.items():
        target = copy.configuration
        *parents, leaf = path.split("__")
        for p in parents:
            target = getattr(target, p)
            if hasattr(target, "add") and not hasattr(target, "ip_address"):
                target = target[0]
        setattr(target, leaf, value)
    return copy


BAD = [
    (ResourceType.VPC, _with(GOOD[0][1], cidr="10.0.0.0/33"), "not a CIDR"),
    (ResourceType.VPC, _with(GOOD[0][1], tunnel_id=1 << 24), "not a VNI"),
    (ResourceType.SUBNET, _with(GOOD[1][1], cidr="banana"), "not a CIDR"),
    (ResourceType.SUBNET, _with(GOOD[1][1], cidr=""), "cidr is required"),
    (ResourceType.SUBNET, _with(GOOD[1][1], tunnel_id=0), "not a VNI"),
    (ResourceType.SUBNET, _with(GOOD[1][1], gateway__ip_address="10.9.9.9"), "outside"),
    (ResourceType.SUBNET, _with(GOOD[1][1], gateway__mac_address="zz:bb:cc:00:00:01"), "not a MAC"),
    (ResourceType.PORT, _with(GOOD[2][1], mac_address="fa:16:3e:00:00"), "not a MAC"),
    (ResourceType.PORT, _with(GOOD[2][1], mac_address="01:00:5e:00:00:01"), "multicast"),
    (ResourceType.PORT, _with(GOOD[2][1], mac_address=""), "mac_address is required"),
    (ResourceType.PORT, _with(GOOD[2][1], fixed_ips__ip_address="10.0.1.300"), "not an IPv4"),
    (ResourceType.PORT, _with(GOOD[2][1], host_info__ip_address="nope"), "not an IPv4"),
    (ResourceType.NEIGHBOR, _with(GOOD[3][1], host_ip_address=""), "host_ip_address is required"),
    (ResourceType.NEIGHBOR, _with(GOOD[3][1], fixed_ips__ip_address="x"), "not an IPv4"),
    (ResourceType.DHCP, _with(GOOD[4][1], ipv4_address="10.0.1"), "not an IPv4"),
    (ResourceType.DHCP, _with(GOOD[4][1], subnet_id=""), "subnet_id is required"),
]


@pytest.mark.parametrize(("rtype", "state", "reason"), BAD)
def test_invalid_resources_carry_a_reason(rtype: ResourceType, state, reason: str) -> None:
    assert reason in _decode(rtype, state)


def test_router_and_security_group_validation() -> None:
    router = pb.RouterState(operation_type=pb.CREATE)
    router.configuration.id = "r1"
    router.configuration.host_dvr_mac_address = "fe:16:11:00:00:01"
    table = router.configuration.subnet_routing_tables.add(subnet_id="s1")
    table.routing_rules.add(id="rule", destination="10.1.0.0/16", next_hop_ip="10.0.1.5")
    assert decode_state(ResourceType.ROUTER, router).error == ""
    table.routing_rules[0].destination = "10.1.0.0/99"
    assert "route destination" in decode_state(ResourceType.ROUTER, router).error
    sg = pb.SecurityGroupState(operation_type=pb.CREATE)
    sg.configuration.id = "sg"
    sg.configuration.security_group_rules.add(id="r", port_range_min=80, port_range_max=22)
    assert "port_range_min" in decode_state(ResourceType.SECURITYGROUP, sg).error


def test_empty_id_and_delete_without_body() -> None:
    assert (
        decode_state(ResourceType.PORT, pb.PortState(operation_type=pb.CREATE)).error
        == "resource id is empty"
    )
    delete = pb.PortState(operation_type=pb.DELETE)
    delete.configuration.id = "p1"
    req = decode_state(ResourceType.PORT, delete)
    assert (req.op, req.id, req.error) == (Op.DELETE, "p1", "")


def test_v2_neighbor_keys_and_host_selection() -> None:
    msg = gs.goal_state_v2(
        gs.subnet("s1", "v1", "10.0.1.0/24", 100),
        gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12"),
        host_ip="172.31.0.11",
    )
    msg.neighbor_states["L2/n1"].configuration.id = ""  # id only in the map key
    requests = {(r.type, r.id): r for r in decode_v2(msg, "172.31.0.11")}
    assert requests[(ResourceType.NEIGHBOR, "n1")].acted_on
    assert not requests[(ResourceType.SUBNET, "s1")].acted_on  # INFO: context only
    other = decode_v2(msg, "172.31.0.99")  # host not listed: everything is for us
    assert {r.type for r in other if r.acted_on} == {ResourceType.NEIGHBOR}


def test_v1_keeps_every_state() -> None:
    msg = gs.goal_state_v1(*(state for _t, state in GOOD))
    assert [r.type for r in decode_v1(msg)] == [t for t, _s in GOOD]


def test_unknown_operation_type_is_invalid_and_answered() -> None:
    state = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")
    state.operation_type = 99
    req = decode_state(ResourceType.PORT, state)
    assert req.acted_on and "unknown operation_type 99" in req.error
