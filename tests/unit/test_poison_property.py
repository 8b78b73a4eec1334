"""Property: whatever decode and the desired state accept, the planner, the OpenFlow encoder, the
reconciler, the DHCP driver and the route driver can program without raising.

Goal states are generated with arbitrary and near-valid values in every field the decoder reads
(IPv4 and IPv6 addresses, CIDRs, MACs, DHCP options, routes, revisions, operations), with ids
from a small pool so ports, neighbours, subnets, routers and DHCP entries reference each other.
Each example applies a few messages in turn, binds some ports, and plans every owner both
incrementally (``touch``, then ``update``) and from scratch (``rebuild``, then ``resync``) with
a tunnel, DHCP and route port. The C engines run for real, without their I/O threads; the
reconciler works against the in-memory switch of the unit tests.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent._pb import goalstate_pb2 as pb
from agent.dataplane.openflow.codec import FlowModCommand, encode_bundle_add
from agent.dhcp.driver import DhcpDriver
from agent.dhcp.engine import Engine
from agent.dhcp.leases import Settings
from agent.model.decode import decode_v2
from agent.model.state import DesiredState
from agent.planner.flows import Flow
from agent.planner.plan import ON_DEMAND, PROACTIVE, Owner, Planner
from agent.reconciler.flows import FlowReconciler
from agent.routing.driver import RouteDriver
from agent.routing.engine import RouteEngine
from agent.sandbox import goalstates as gs
from tests.support.recording_driver import RecordingDriver

LOCAL_IP = "172.31.0.1"
IDS = ("a", "b", "c")
BOUND = ("a", "b")  # ports with an interface on the bridge; "c" stays pending
SUBNET_IDS = ("s1", "s2", "s3")
# Each subnet's CIDR in the base state, so generated addresses usually fall inside theirs.
PREFIXES = {"s1": "10.0.0", "s2": "10.0.1", "s3": "10.0.2"}
revision = st.integers(0, 3)

junk = st.text(max_size=12)
good_ipv4 = st.builds("10.0.{}.{}".format, st.integers(0, 2), st.integers(1, 12))


def _in_subnet(sid: str) -> st.SearchStrategy[tuple[str, str]]:
    return st.integers(2, 12).map(lambda host: (sid, f"{PREFIXES[sid]}.{host}"))


good_fixed = st.sampled_from(SUBNET_IDS).flatmap(_in_subnet)
ipv6 = st.sampled_from(["fd00::5", "::", "fe80::1", "::ffff:10.0.0.5", "2001:db8::1"])
odd_ipv4 = st.sampled_from(["0.0.0.0", "255.255.255.255", "10.0.0.0", "10.0.1.255", LOCAL_IP, "224.0.0.1"])
odd_address = st.one_of(odd_ipv4, ipv6, odd_ipv4, ipv6, junk)  # mostly what a decoder might let by
good_cidr = st.sampled_from(["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.0.5/32", "0.0.0.0/0"])
odd_cidr = (
    st.builds("{}/{}".format, odd_ipv4 | good_ipv4, st.integers(0, 33))
    | st.builds("{}/{}".format, ipv6, st.integers(0, 129))
    | st.sampled_from(
        ["255.255.255.255/32", "10.0.0.0/31", "fd00::/64", "fd00::5/128", "10.1.0.0/255.255.0.0"]
    )
)
good_mac = st.builds(
    "{:02x}:16:3e:00:00:{:02x}".format, st.sampled_from([0x02, 0xFA, 0xFE]), st.integers(0, 9)
)
odd_mac = st.sampled_from(["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"]) | junk
good_vni = st.sampled_from([100, 101])
odd_vni = st.sampled_from([0, 1, (1 << 24) - 1, 1 << 24, (1 << 32) - 1])
good_op = st.sampled_from([pb.CREATE, pb.CREATE, pb.UPDATE])
odd_op = st.sampled_from([pb.DELETE, pb.INFO, pb.GET, 7])
update_type = st.sampled_from([pb.FULL, pb.DELTA])
option_name = st.sampled_from(
    ["mtu", "router", "dns-server", "domain-name", "domain-search", "classless-static-route", "lease-time",
     "ip-forward-enable", "default-ttl", "ntp-server", "tftp-server", "netmask", "bogus", "option:²"]
) | st.builds("option:{}".format, st.integers(0, 300))  # fmt: skip
option_value = st.one_of(
    st.integers(-5, 1 << 33).map(str),
    good_ipv4,
    odd_address,
    st.lists(good_ipv4 | odd_address, max_size=70).map(",".join),
    st.lists(st.builds("{},{}".format, good_cidr | odd_cidr, good_ipv4), max_size=40).map(" ".join),
    st.lists(st.sampled_from(["example.com", "a" * 70, "x.y", ".", "ü.example"]), max_size=5).map(",".join),
    st.sampled_from(["true", "off", "maybe", " 1450 ", "1_000", "-1", "70000"]),
    st.text(max_size=300),
)


class Twist:
    """Each generated resource has at most one field drawn from the odd values, the others from
    values that pass: so most resources reach the planner, each with something unusual in it."""

    def __init__(self, draw: Any, fields: tuple[str, ...]) -> None:
        self.draw = draw
        self.odd = draw(st.sampled_from((None, *fields)))

    def strategy(self, name: str, good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
        return odd if name == self.odd else good

    def __call__(self, name: str, good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
        return self.draw(self.strategy(name, good, odd))


def _id(pool: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(pool)


ODD_ID = st.just("") | junk


@st.composite
def subnet_state(draw: Any) -> tuple[str, pb.SubnetState]:
    f = Twist(draw, ("id", "op", "cidr", "vni", "gw_ip", "gw_mac", "dns", "options"))
    sid = f("id", _id(SUBNET_IDS), ODD_ID)
    own = st.just(f"{PREFIXES[sid]}.0/24") if sid in PREFIXES else good_cidr
    config = pb.SubnetConfiguration(
        revision_number=draw(revision), id=sid, vpc_id="v1", cidr=f("cidr", own, odd_cidr),
        tunnel_id=f("vni", good_vni, odd_vni), dhcp_enable=draw(st.booleans()), update_type=draw(update_type),
    )  # fmt: skip
    gateway = st.sampled_from([f"{PREFIXES[sid]}.1", ""]) if sid in PREFIXES else st.just("")
    config.gateway.ip_address = f("gw_ip", gateway, odd_address)
    config.gateway.mac_address = f("gw_mac", good_mac, odd_mac | st.just(""))
    for entry in f("dns", st.lists(good_ipv4, max_size=3), st.lists(good_ipv4 | odd_address, max_size=18)):
        config.dns_entry_list.add(entry=entry)
    extras = f("options", st.just([]), st.lists(st.tuples(option_name, option_value), min_size=1, max_size=6))
    for name, value in extras:
        config.extra_dhcp_options.add(name=name, value=value)
    return sid, pb.SubnetState(operation_type=f("op", good_op, odd_op), configuration=config)


@st.composite
def port_state(draw: Any) -> tuple[str, pb.PortState]:
    f = Twist(draw, ("id", "op", "mac", "host", "fixed", "pair_ip", "pair_mac", "admin"))
    pid = f("id", _id(IDS), ODD_ID)
    config = pb.PortConfiguration(
        revision_number=draw(revision), id=pid, vpc_id="v1", mac_address=f("mac", good_mac, odd_mac),
        admin_state_up=f("admin", st.just(True), st.just(False)), update_type=draw(update_type),
    )  # fmt: skip
    config.host_info.ip_address = f("host", st.just(LOCAL_IP), odd_address)
    for subnet_id, ip in draw(
        st.lists(f.strategy("fixed", good_fixed, st.tuples(ODD_ID, odd_address)), max_size=2)
    ):
        config.fixed_ips.add(subnet_id=subnet_id, ip_address=ip)
    for _ in range(draw(st.integers(0, 3))):
        config.allow_address_pairs.add(
            ip_address=f("pair_ip", good_ipv4 | good_cidr, odd_address | odd_cidr),
            mac_address=f("pair_mac", st.just("") | good_mac, odd_mac),
        )
    return pid, pb.PortState(operation_type=f("op", good_op, odd_op), configuration=config)


@st.composite
def neighbor_state(draw: Any) -> tuple[str, pb.NeighborState]:
    f = Twist(draw, ("id", "op", "mac", "host", "fixed", "nb_type", "nb_vni", "pair_ip", "pair_mac"))
    nid = f("id", _id(IDS), ODD_ID)
    config = pb.NeighborConfiguration(
        revision_number=draw(revision), id=nid, vpc_id="v1", mac_address=f("mac", good_mac, odd_mac),
        host_ip_address=f("host", st.sampled_from(["172.31.0.2", "172.31.0.3", LOCAL_IP]), odd_address),
    )  # fmt: skip
    for subnet_id, ip in draw(
        st.lists(f.strategy("fixed", good_fixed, st.tuples(ODD_ID, odd_address)), max_size=2)
    ):
        config.fixed_ips.add(
            neighbor_type=f("nb_type", st.sampled_from([pb.L2, pb.L3]), st.just(5)), subnet_id=subnet_id,
            ip_address=ip, tunnel_id=f("nb_vni", st.just(0), odd_vni | good_vni),
        )  # fmt: skip
    for _ in range(draw(st.integers(0, 2))):
        config.allow_address_pairs.add(
            ip_address=f("pair_ip", good_ipv4 | good_cidr, odd_address | odd_cidr),
            mac_address=f("pair_mac", st.just("") | good_mac, odd_mac),
        )
    key = draw(st.sampled_from(["L2/", "L3/", ""])) + nid
    return key, pb.NeighborState(operation_type=f("op", good_op, odd_op), configuration=config)


@st.composite
def dhcp_state(draw: Any) -> tuple[str, pb.DHCPState]:
    f = Twist(draw, ("id", "op", "subnet", "mac", "ipv6", "hostname"))
    did = f("id", _id(IDS), ODD_ID)
    subnet_id, ip = f("subnet", good_fixed, st.tuples(ODD_ID, good_ipv4 | odd_address | st.just("")))
    config = pb.DHCPConfiguration(
        revision_number=draw(revision), id=did, subnet_id=subnet_id, mac_address=f("mac", good_mac, odd_mac),
        ipv4_address=ip, ipv6_address=f("ipv6", st.just(""), ipv6),
        port_host_name=f("hostname", st.just("vm"), st.text(max_size=300)),
    )  # fmt: skip
    return did, pb.DHCPState(operation_type=f("op", good_op, odd_op), configuration=config)


@st.composite
def router_state(draw: Any) -> tuple[str, pb.RouterState]:
    f = Twist(draw, ("id", "op", "dvr_mac", "subnet", "rule_op", "rule_dest", "rule_hop", "rule_count"))
    rid = f("id", _id(("r1", "r2")), ODD_ID)
    config = pb.RouterConfiguration(
        revision_number=draw(revision), id=rid, update_type=draw(update_type),
        host_dvr_mac_address=f("dvr_mac", good_mac, odd_mac | st.just("")),
    )  # fmt: skip
    for _ in range(draw(st.integers(0, 3))):
        table = config.subnet_routing_tables.add(subnet_id=f("subnet", _id(SUBNET_IDS), ODD_ID))
        for n in range(f("rule_count", st.integers(0, 3), st.integers(20, 40))):
            table.routing_rules.add(
                operation_type=f("rule_op", st.just(pb.CREATE), st.sampled_from([pb.DELETE, pb.INFO])),
                id=f"rule{n}", destination=f("rule_dest", good_cidr, odd_cidr),
                next_hop_ip=f("rule_hop", good_ipv4, odd_address | st.just("")),
                priority=draw(st.integers(0, (1 << 32) - 1)),
            )  # fmt: skip
    return rid, pb.RouterState(operation_type=f("op", good_op, odd_op), configuration=config)


@st.composite
def context_state(draw: Any) -> tuple[str, Any, Any]:
    """A VPC, security group or gateway: decoded and held, never planned (so any value goes)."""
    kind = draw(st.sampled_from(["vpc", "sg", "gw"]))
    if kind == "vpc":
        vpc = pb.VpcConfiguration(
            id=draw(_id(("v1", "v2"))), cidr=draw(good_cidr | odd_cidr), tunnel_id=draw(odd_vni)
        )
        return "vpc_states", vpc.id, pb.VpcState(operation_type=draw(good_op | odd_op), configuration=vpc)
    if kind == "sg":
        sg = pb.SecurityGroupConfiguration(id=draw(_id(("g1",))))
        sg.security_group_rules.add(
            id="r", ethertype=draw(st.sampled_from([0, 1])), remote_ip_prefix=draw(good_cidr | odd_cidr),
            port_range_min=draw(st.integers(0, 70000)), port_range_max=draw(st.integers(0, 70000)),
        )  # fmt: skip
        return (
            "security_group_states",
            sg.id,
            pb.SecurityGroupState(operation_type=pb.CREATE, configuration=sg),
        )
    gw = pb.GatewayConfiguration(id=draw(_id(("gw1",))), gateway_type=draw(st.integers(0, 9)))
    gw.destinations.add(ip_address=draw(good_ipv4 | odd_address), mac_address=draw(good_mac | odd_mac))
    gw.arion_info.vni = draw(odd_vni)
    return "gateway_states", gw.id, pb.GatewayState(operation_type=pb.CREATE, configuration=gw)


@st.composite
def goal_state(draw: Any) -> pb.GoalStateV2:
    msg = pb.GoalStateV2(format_version=1)
    for field, strategy in (
        ("subnet_states", subnet_state()),
        ("port_states", port_state()),
        ("neighbor_states", neighbor_state()),
        ("dhcp_states", dhcp_state()),
        ("router_states", router_state()),
    ):
        for key, state in draw(st.lists(strategy, min_size=1, max_size=3)):
            getattr(msg, field)[key].CopyFrom(state)
    for field, key, state in draw(st.lists(context_state(), max_size=2)):
        getattr(msg, field)[key].CopyFrom(state)
    if draw(st.booleans()):  # this host acts on some resources only; the others are context
        for rtype, key in draw(
            st.lists(st.tuples(st.sampled_from([pb.PORT, pb.SUBNET, pb.ROUTER]), _id(IDS)))
        ):
            msg.host_resources[LOCAL_IP].resources.add(type=rtype, id=key)
    return msg


def _base() -> pb.GoalStateV2:
    """Subnets (DHCP on, gateways), a router over two of them and a remote neighbour: what the
    generated messages mostly refer to."""
    subnets = [
        gs.subnet(sid, "v1", f"{prefix}.0/24", 100 + n, f"{prefix}.1", f"02:00:00:00:0{n}:01", op=gs.CREATE)
        for n, (sid, prefix) in enumerate(PREFIXES.items())
    ]
    return gs.goal_state_v2(
        *subnets,
        gs.router("r0", "fe:16:11:00:00:01", ["s1", "s2"], [("s1", "10.9.0.0/16", "10.0.1.5", 0)]),
        gs.neighbor("n0", "v1", "s2", "10.0.1.5", "fa:16:3e:00:01:05", "172.31.0.9"),
    )


def _planned(planner: Planner, owners: set[Owner]) -> dict[Owner, list[Flow]]:
    """Each owner's flows, encoded as the OpenFlow driver would send them."""
    planned = {}
    for owner in sorted(owners, key=str):
        planned[owner] = planner.flows(owner)
        for flow in planned[owner]:
            encode_bundle_add(1, 0, flow, FlowModCommand.ADD, 1)
        planner.route_targets(owner)
    return planned


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    messages=st.lists(goal_state(), min_size=1, max_size=3),
    mode=st.sampled_from([PROACTIVE, ON_DEMAND]),
)
def test_accepted_goal_states_always_program(messages: list[pb.GoalStateV2], mode: str) -> None:
    state = DesiredState()
    planner = Planner(state, LOCAL_IP, mode)
    dhcp_engine, route_engine = Engine(), RouteEngine()
    try:
        dhcp = DhcpDriver(state, Settings(domain="example.org"), dhcp_engine)
        routes = RouteDriver(planner, route_engine)
        reconciler = FlowReconciler(RecordingDriver())
        interfaces = [(f"tap{pid}", pid, 10 + n, 100 + n) for n, pid in enumerate(BOUND)]
        for step, msg in enumerate([_base(), *messages]):
            owners: set[Owner] = set()
            for outcome in state.apply(decode_v2(msg, LOCAL_IP)):
                if outcome.changed:
                    owners |= planner.touch(outcome.request.type, outcome.request.id)
            if step == 0:  # the dataplane appears after the first message, as at start
                owners |= planner.set_interfaces(interfaces)
                owners |= planner.set_tunnel(1) | planner.set_dhcp_port(2) | planner.set_route_port(3)
            reconciler.update(_planned(planner, owners).items())
            dhcp.apply(owners, planner.bindings, planner.dhcp_ofport, planner.ifindexes)
            routes.apply(owners)
        everything = planner.rebuild()  # the resync at start plans every owner at once
        reconciler.resync(_planned(planner, everything))
        dhcp.apply(everything, planner.bindings, planner.dhcp_ofport, planner.ifindexes)
        routes.apply(everything)
    finally:
        dhcp_engine.close()
        route_engine.close()
