"""Security groups at scale, the agent's side of issue 13's benchmark (OVN's side: not yet).

Policy P: 50 local ports, each in 10 groups of 10 rules (TCP port ranges, UDP, ICMP, ingress
and egress) plus one rule per group whose remote is a group of 1,000 members (neighbours naming
it in the extension field). Measured over one open gRPC channel, send → reply (flows confirmed):
P installed at once; a new port plugged into the 10 groups while P is installed; one member
added to the remote group; one rule added, then removed. Ports are OVS internal interfaces
carrying their iface-id (bound at once), not VMs: only programming is measured.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Callable

from agent.planner.cookies import AGENT_MASK, KIND_SHIFT, LAYOUT_TAG, TAG_SHIFT, Kind
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from bench.common import SUBNET, VPC, agent_rss_mb, context_states, controller_channel, percentile, sandbox

GROUPS, RULES, REMOTE = 10, 10, "sg-members"
BASE_IP = int(ipaddress.IPv4Address("10.128.0.0"))


def _ip(i: int) -> str:
    return str(ipaddress.IPv4Address(BASE_IP + 16 + i))


def _mac(i: int) -> str:
    return f"fa:16:3e:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


def group(g: int, extra: int = 0, revision: int = 1) -> gs.pb.SecurityGroupState:
    """Group g: 10 rules mixing protocols, ranges and directions, and one remote-group rule."""
    kinds = [
        (gs.INGRESS, gs.TCP, (1000 + 10 * g, 1009 + 10 * g)),
        (gs.INGRESS, gs.TCP, (22, 22)),
        (gs.INGRESS, gs.UDP, (5000 + g, 5000 + g)),
        (gs.INGRESS, gs.ICMP, (0, 0)),
        (gs.EGRESS, gs.TCP, (8000, 8099)),
        (gs.EGRESS, gs.UDP, (53, 53)),
        (gs.INGRESS, gs.TCP, (443, 443)),
        (gs.EGRESS, gs.ICMP, (8, 0)),
        (gs.INGRESS, gs.UDP, (6000, 6063)),
        (gs.EGRESS, gs.TCP, (3306, 3306)),
    ]
    rules = [
        gs.sg_rule(f"g{g}-r{i}", d, proto, ports, remote_ip_prefix=f"10.{g}.{i}.0/24")
        for i, (d, proto, ports) in enumerate(kinds[:RULES])
    ]
    rules.append(gs.sg_rule(f"g{g}-remote", gs.INGRESS, gs.TCP, (9000 + g, 9000 + g), remote_group_id=REMOTE))
    rules += [gs.sg_rule(f"g{g}-extra{i}", gs.INGRESS, gs.TCP, (20000 + i, 20000 + i)) for i in range(extra)]
    return gs.security_group(
        f"sg-{g}", rules, op=gs.CREATE if revision == 1 else gs.UPDATE, revision=revision
    )


def member(i: int) -> gs.pb.NeighborState:
    j = 100_000 + i
    host = f"172.30.{i % 50 // 250}.{i % 50 + 1}"
    return gs.neighbor(f"member-{i}", VPC, SUBNET, _ip(j), _mac(j), host, groups=[REMOTE])


def port(box: Sandbox, i: int) -> gs.pb.PortState:
    host_ip = box.host("host1").underlay_ip
    return gs.port(
        f"port-{i}", VPC, SUBNET, _ip(i), _mac(i), host_ip, groups=[f"sg-{g}" for g in range(GROUPS)]
    )


def plug(box: Sandbox, first: int, count: int) -> None:
    """Internal interfaces carrying the ports' iface-ids, in one ovs-vsctl transaction."""
    cmd = ["ovs-vsctl"]
    for i in range(first, first + count):
        cmd += ["--", "add-port", "br-int", f"sgp{i}", "--", "set", "Interface", f"sgp{i}", "type=internal",
                f"external_ids:iface-id=port-{i}"]  # fmt: skip
    box.exec("host1", cmd)


def security_flows(box: Sandbox) -> int:
    cookie = (LAYOUT_TAG << TAG_SHIFT) | (int(Kind.SECURITY) << KIND_SHIFT)
    mask = AGENT_MASK | (0xFF << KIND_SHIFT)
    out = box.exec(
        "host1",
        ["ovs-ofctl", "-O", "OpenFlow14", "dump-aggregate", "br-int", f"cookie={cookie:#x}/{mask:#x}"],
    ).stdout
    return int(out.split("flow_count=")[1].split()[0])


def timed(send: Callable[..., list], *states: object) -> float:
    message = gs.goal_state_v2(*context_states(), *states)
    t0 = time.perf_counter()
    (reply,) = send(message, timeout=600)
    elapsed = time.perf_counter() - t0
    bad = {
        s.resource_id: s.operation_status
        for s in reply.operation_statuses
        if s.operation_status != gs.pb.SUCCESS
    }
    assert not bad, bad
    return elapsed * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sg_scale", description=__doc__)
    p.add_argument("--ports", type=int, default=50)
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--samples", type=int, default=30)
    args = p.parse_args(argv)
    n = args.samples
    with sandbox("acab-sg") as box, controller_channel(box, "host1") as send:
        plug(box, 0, args.ports + n)
        groups = [group(g) for g in range(GROUPS)]
        members = [member(i) for i in range(args.members)]
        policy_ms = timed(send, *groups, gs.security_group(REMOTE, []), *members,
                          *(port(box, i) for i in range(args.ports)))  # fmt: skip
        flows = security_flows(box)
        new_port = [timed(send, port(box, args.ports + i)) for i in range(n)]
        member_add = [timed(send, member(args.members + i)) for i in range(n)]
        rule_add, rule_remove = [], []
        for i in range(n):
            rule_add.append(timed(send, group(0, extra=1, revision=2 + 2 * i)))
            rule_remove.append(timed(send, group(0, extra=0, revision=3 + 2 * i)))
        rss = agent_rss_mb(box, "host1")

    def p50_p99(values: list[float]) -> str:
        return f"p50 {percentile(values, 50):7.2f} ms  p99 {percentile(values, 99):7.2f} ms"

    print(f"ports={args.ports} groups={GROUPS}x{RULES}+1 remote_members={args.members} samples={n}")
    print(f"policy P installed      {policy_ms:9.1f} ms  security flows {flows}")
    print(f"new port in 10 groups   {p50_p99(new_port)}")
    print(f"one member added        {p50_p99(member_add)}")
    print(f"one rule added          {p50_p99(rule_add)}")
    print(f"one rule removed        {p50_p99(rule_remove)}")
    print(f"agent RSS after         {rss:9.1f} MB")
    figures = {
        "ports": args.ports,
        "members": args.members,
        "agent_policy_ms": f"{policy_ms:.1f}",
        "agent_flows": flows,
        "agent_new_port_p50_ms": f"{percentile(new_port, 50):.2f}",
        "agent_new_port_p99_ms": f"{percentile(new_port, 99):.2f}",
        "agent_member_add_p99_ms": f"{percentile(member_add, 99):.2f}",
        "agent_rule_add_p99_ms": f"{percentile(rule_add, 99):.2f}",
        "agent_rule_remove_p99_ms": f"{percentile(rule_remove, 99):.2f}",
        "agent_rss_mb": f"{rss:.1f}",
        "ovn": "not_run",
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
