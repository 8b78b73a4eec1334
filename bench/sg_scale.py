"""Security groups at scale: the agent against OVN's ACLs on port groups (issue 13's benchmark).

Policy P: 50 local ports, each in 10 groups of 10 rules (TCP port ranges, UDP, ICMP, ingress
and egress) plus one rule per group whose remote is a group of 1,000 members (neighbours naming
it in the extension field). Measured over one open gRPC channel, send → reply (flows confirmed):
P installed at once; a new port plugged into the 10 groups while P is installed; one member
added to the remote group; one rule added, then removed. Ports are OVS internal interfaces
carrying their iface-id (bound at once), not VMs: only programming is measured.

OVN (ovn-northd + ovn-controller as in bench.dhcp_rate, the same OVS kind) gets the same policy
the way Neutron's OVN driver writes it: a port group per security group, the drop port group,
allow-related ACLs at priority 1002, the remote group as an address set; each operation is one
ovn-nbctl transaction with --wait=hv (flows installed by ovn-controller). Its flow count is
br-int's after P minus before (ports bound, no ACLs).
"""

from __future__ import annotations

import argparse
import ipaddress
import pathlib
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.planner.cookies import AGENT_MASK, KIND_SHIFT, LAYOUT_TAG, TAG_SHIFT, Kind
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from bench.common import (
    SUBNET,
    VPC,
    agent_rss_mb,
    context_states,
    controller_channel,
    environment,
    percentile,
    rss_mb,
    sandbox,
)

GROUPS, RULES, REMOTE = 10, 10, "sg-members"
BASE_IP = int(ipaddress.IPv4Address("10.128.0.0"))


def _ip(i: int) -> str:
    return str(ipaddress.IPv4Address(BASE_IP + 16 + i))


def _mac(i: int) -> str:
    return f"fa:16:3e:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


Rule = tuple[str, int, int, tuple[int, int], str, str]  # id, direction, protocol, ports, prefix, remote group


def rules_of(g: int, extra: int = 0, remote: str = REMOTE) -> list[Rule]:
    """Group g: 10 rules mixing protocols, ranges and directions, one remote-group rule, and
    ``extra`` more (the rule added and removed)."""
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
        (f"g{g}-r{i}", d, proto, ports, f"10.{g}.{i}.0/24", "")
        for i, (d, proto, ports) in enumerate(kinds[:RULES])
    ]
    rules.append((f"g{g}-remote", gs.INGRESS, gs.TCP, (9000 + g, 9000 + g), "", remote))
    rules += [(f"g{g}-extra{i}", gs.INGRESS, gs.TCP, (20000 + i, 20000 + i), "", "") for i in range(extra)]
    return rules


def group(g: int, extra: int = 0, revision: int = 1, remote: str = REMOTE) -> gs.pb.SecurityGroupState:
    rules = [
        gs.sg_rule(rid, d, proto, ports, remote_ip_prefix=prefix, remote_group_id=remote_group)
        for rid, d, proto, ports, prefix, remote_group in rules_of(g, extra, remote)
    ]
    return gs.security_group(
        f"sg-{g}", rules, op=gs.CREATE if revision == 1 else gs.UPDATE, revision=revision
    )


def member(i: int) -> gs.pb.NeighborState:
    """Member i of policy P's remote group: a port on another host naming the group."""
    j = 100_000 + i
    host = f"172.30.{i % 50 // 250}.{i % 50 + 1}"
    return gs.neighbor(f"member-{i}", VPC, SUBNET, _ip(j), _mac(j), host, groups=[REMOTE])


def port(box: Sandbox, i: int) -> gs.pb.PortState:
    host_ip = box.host("host1").underlay_ip
    return gs.port(
        f"port-{i}", VPC, SUBNET, _ip(i), _mac(i), host_ip, groups=[f"sg-{g}" for g in range(GROUPS)]
    )


def plug_args(count: int, prefix: str) -> list[str]:
    """ovs-vsctl arguments: ``count`` internal interfaces on br-int whose iface-ids are
    ``prefix`` + their index, in one transaction."""
    args: list[str] = []
    for i in range(count):
        iface = f"sgp{i}"
        args += ["--", "add-port", "br-int", iface, "--", "set", "Interface", iface, "type=internal",
                 f"external_ids:iface-id={prefix}{i}"]  # fmt: skip
    return args


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


@dataclass
class Side:
    """One implementation's figures: milliseconds per operation, flows for P."""

    policy_ms: float = 0.0
    flows: int = 0
    new_port: list[float] = field(default_factory=list)
    member_add: list[float] = field(default_factory=list)
    rule_add: list[float] = field(default_factory=list)
    rule_remove: list[float] = field(default_factory=list)
    rss_mb: float = 0.0


def remotes_of(own: bool) -> list[str]:
    """Policy P's one remote group, or (the scale point) one remote group per group."""
    return [f"{REMOTE}-{g}" for g in range(GROUPS)] if own else [REMOTE]


def run_agent(ports: int, members: int, n: int, own_remotes: bool = False) -> Side:
    """P (with ``members`` per remote group), then ``n`` samples of each operation. Members are
    neighbours naming their group (extension field 100); at the scale point (``own_remotes``)
    the remote groups list their members' addresses instead (extension field 101), as OVN's
    address sets do."""
    side = Side()
    remotes = remotes_of(own_remotes)
    with sandbox("acab-sg") as box, controller_channel(box, "host1") as send:
        box.exec("host1", ["ovs-vsctl", *plug_args(ports + n, "port-")])
        groups = [group(g, remote=remotes[g % len(remotes)]) for g in range(GROUPS)]
        if own_remotes:
            remote_groups = [
                gs.security_group(r, [], member_ips=[_ip(100_000 + k * members + i) for i in range(members)])
                for k, r in enumerate(remotes)
            ]
            members_states = []
        else:
            remote_groups = [gs.security_group(r, []) for r in remotes]
            members_states = [member(i) for i in range(members)]
        ports_states = [port(box, i) for i in range(ports)]
        side.policy_ms = timed(send, *groups, *remote_groups, *members_states, *ports_states)
        side.flows = security_flows(box)
        # Members and rules on P as it is; new ports last, since each one joins the 10 groups
        # (a rule change then has more ports to reach).
        side.member_add = [timed(send, member(members + i)) for i in range(n)]
        for i in range(n):
            side.rule_add.append(timed(send, group(0, extra=1, revision=2 + 2 * i)))
            side.rule_remove.append(timed(send, group(0, extra=0, revision=3 + 2 * i)))
        side.new_port = [timed(send, port(box, ports + i)) for i in range(n)]
        side.rss_mb = agent_rss_mb(box, "host1")
    return side


# ---------------------------------------------------------------- OVN, as Neutron's OVN driver writes it
_CHUNK = 5000  # addresses per ovn-nbctl argument


def address_set(remote: str) -> str:
    """The address set of a remote group's members (Neutron: one per group and IP version)."""
    return f"as_{remote.replace('-', '_')}_ip4"


def ovn_acl(g: int, rule: Rule) -> list[str]:
    """``acl-add`` arguments of one rule: one ACL on the group's port group, allow-related."""
    _rid, direction, proto, (lo, hi), prefix, remote = rule
    ingress = direction == gs.INGRESS
    side = "src" if ingress else "dst"
    match = [f"{'outport' if ingress else 'inport'} == @pg_sg_{g}", "ip4"]
    if prefix:
        match.append(f"ip4.{side} == {prefix}")
    if remote:
        match.append(f"ip4.{side} == ${address_set(remote)}")
    if proto == gs.ICMP:
        match.append("icmp4" + (f" && icmp4.type == {lo}" if lo else ""))
    else:
        name = "tcp" if proto == gs.TCP else "udp"
        hi = hi or lo
        match.append(
            name
            if not lo
            else f"{name}.dst == {lo}"
            if lo == hi
            else f"{name}.dst >= {lo} && {name}.dst <= {hi}"
        )
    return [
        f"pg_sg_{g}",
        "to-lport" if ingress else "from-lport",
        "1002",
        " && ".join(match),
        "allow-related",
    ]


def _lsp(i: int) -> list[str]:
    """ovn-nbctl arguments adding logical port i to ls0, the 10 groups and the drop group, in one
    transaction (what Neutron does when a port is created)."""
    address = f'"{_mac(i)} {_ip(i)}"'
    cmds = ["--id=@p", "create", "Logical_Switch_Port", f"name=lsp{i}", f"addresses={address}",
            f"port_security={address}", "--", "add", "Logical_Switch", "ls0", "ports", "@p"]  # fmt: skip
    for pg in [f"pg_sg_{g}" for g in range(GROUPS)] + ["neutron_pg_drop"]:
        cmds += ["--", "add", "Port_Group", pg, "ports", "@p"]
    return cmds


def run_ovn(ports: int, members: int, n: int, own_remotes: bool = False) -> Side:
    from bench.dhcp_rate import Lab, ovn_stack

    side = Side()
    remotes = remotes_of(own_remotes)
    with tempfile.TemporaryDirectory(prefix="acab-sgovn-") as root:
        lab = Lab(pathlib.Path(root), f"acasgo{uuid.uuid4().hex[:4]}-")
        try:
            stack = ovn_stack(lab, "ovn", system_id="sg-bench")
            nbctl, ovs = stack.nbctl, stack.ovs
            ovs.vsctl(*plug_args(ports + n, "lsp")[1:])  # type: ignore[attr-defined]
            base = ["ls-add", "ls0", "--", "pg-add", "neutron_pg_drop"]
            for g in range(GROUPS):
                base += ["--", "pg-add", f"pg_sg_{g}"]
            nbctl(*base)
            for i in range(ports):
                nbctl(*_lsp(i))
            nbctl("--wait=hv", "sync")
            before = _ovn_flows(ovs)
            drop = "neutron_pg_drop"
            policy = [
                *("acl-add", drop, "to-lport", "1001", f"outport == @{drop} && ip", "drop"),
                *("--", "acl-add", drop, "from-lport", "1001", f"inport == @{drop} && ip", "drop"),
            ]
            for k, remote in enumerate(remotes):
                # In chunks: one argument may not exceed 128 KiB (MAX_ARG_STRLEN).
                ips = [_ip(100_000 + k * members + i) for i in range(members)]
                chunks = [ips[c : c + _CHUNK] for c in range(0, members, _CHUNK)] or [[]]
                name = address_set(remote)
                policy += ["--", "create", "Address_Set", f"name={name}", f"addresses={','.join(chunks[0])}"]
                for chunk in chunks[1:]:
                    policy += ["--", "add", "Address_Set", name, "addresses", *(f'"{a}"' for a in chunk)]
            for g in range(GROUPS):
                for rule in rules_of(g, remote=remotes[g % len(remotes)]):
                    policy += ["--", "acl-add", *ovn_acl(g, rule)]
            t0 = time.perf_counter()
            nbctl("--wait=hv", *policy)
            side.policy_ms = (time.perf_counter() - t0) * 1e3
            side.flows = _ovn_flows(ovs) - before
            side.rss_mb = rss_mb(stack.controller)
            for i in range(n):  # the same order as the agent's
                address = f'"{_ip(100_000 + len(remotes) * members + i)}"'
                side.member_add.append(
                    _timed_nbctl(nbctl, "add", "Address_Set", address_set(REMOTE), "addresses", address)
                )
            extra = ovn_acl(0, rules_of(0, extra=1)[-1])
            for _ in range(n):
                side.rule_add.append(_timed_nbctl(nbctl, "acl-add", *extra))
                side.rule_remove.append(_timed_nbctl(nbctl, "acl-del", *extra[:4]))
            for i in range(n):
                side.new_port.append(_timed_nbctl(nbctl, *_lsp(ports + i)))
        finally:
            lab.close()
    return side


def _timed_nbctl(nbctl: Callable[..., str], *args: str) -> float:
    t0 = time.perf_counter()
    nbctl("--wait=hv", *args)
    return (time.perf_counter() - t0) * 1e3


def _ovn_flows(ovs: object) -> int:
    out = ovs.ofctl("dump-aggregate", "br-int")  # type: ignore[attr-defined]
    return int(out.split("flow_count=")[1].split()[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sg_scale", description=__doc__)
    p.add_argument("--ports", type=int, default=50)
    p.add_argument("--members", type=int, default=1000)
    p.add_argument(
        "--samples", type=int, default=200, help="samples per operation (p99 of 200 is not the maximum)"
    )
    p.add_argument("--no-ovn", action="store_true", help="the agent only")
    p.add_argument(
        "--scale-point",
        type=int,
        default=0,
        metavar="MEMBERS",
        help="also P with each group's remote group its own, of MEMBERS members (issue: 10000)",
    )
    args = p.parse_args(argv)
    n = args.samples
    sides = {"agent": run_agent(args.ports, args.members, n)}
    if not args.no_ovn:
        sides["ovn"] = run_ovn(args.ports, args.members, n)

    def p50_p99(values: list[float]) -> str:
        return f"p50 {percentile(values, 50):8.2f} ms  p99 {percentile(values, 99):8.2f} ms"

    print(f"versions {environment(tools=() if args.no_ovn else ('ovn',))}")
    print(f"ports={args.ports} groups={GROUPS}x{RULES}+1 remote_members={args.members} samples={n}")
    figures: dict[str, object] = {"ports": args.ports, "members": args.members}
    for name, side in sides.items():
        print(f"{name:5s} policy P installed      {side.policy_ms:9.1f} ms  flows {side.flows}")
        print(f"{name:5s} new port in 10 groups   {p50_p99(side.new_port)}")
        print(f"{name:5s} one member added        {p50_p99(side.member_add)}")
        print(f"{name:5s} one rule added          {p50_p99(side.rule_add)}")
        print(f"{name:5s} one rule removed        {p50_p99(side.rule_remove)}")
        figures |= {
            f"{name}_policy_ms": f"{side.policy_ms:.1f}",
            f"{name}_flows": side.flows,
            f"{name}_new_port_p50_ms": f"{percentile(side.new_port, 50):.2f}",
            f"{name}_new_port_p99_ms": f"{percentile(side.new_port, 99):.2f}",
            f"{name}_member_add_p99_ms": f"{percentile(side.member_add, 99):.2f}",
            f"{name}_rule_add_p99_ms": f"{percentile(side.rule_add, 99):.2f}",
            f"{name}_rule_remove_p99_ms": f"{percentile(side.rule_remove, 99):.2f}",
        }
    print(f"agent RSS after            {sides['agent'].rss_mb:9.1f} MB")
    figures["agent_rss_mb"] = f"{sides['agent'].rss_mb:.1f}"
    if "ovn" in sides:
        agent, ovn = sides["agent"], sides["ovn"]
        figures["policy_vs_ovn_ratio"] = f"{ovn.policy_ms / agent.policy_ms:.2f}"
        figures["flows_vs_ovn_ratio"] = f"{agent.flows / max(ovn.flows, 1):.2f}"
        figures["new_port_p99_vs_ovn_ratio"] = (
            f"{percentile(ovn.new_port, 99) / percentile(agent.new_port, 99):.2f}"
        )
    if args.scale_point:
        scale = {"agent": run_agent(args.ports, args.scale_point, 0, own_remotes=True)}
        if not args.no_ovn:
            scale["ovn"] = run_ovn(args.ports, args.scale_point, 0, own_remotes=True)
        addresses = GROUPS * args.scale_point
        for name, side in scale.items():
            process = "agent" if name == "agent" else "ovn-controller"
            print(
                f"{name:5s} scale point ({addresses} remote addresses) {side.policy_ms:9.1f} ms  "
                f"flows {side.flows}  RSS {side.rss_mb:.1f} MB ({process})"
            )
            figures |= {
                f"scale_{name}_ms": f"{side.policy_ms:.1f}",
                f"scale_{name}_flows": side.flows,
                f"scale_{name}_rss_mb": f"{side.rss_mb:.1f}",
            }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
