"""`acactl trace`: a packet through the flows OVS holds (``ofproto/trace``), each step named.

The agent says what only it knows (which owner each cookie belongs to, its ports' ofports
and addresses, its internal ports, where OVS runs); OVS says what the installed pipeline does.
Each step gets its table's name from the pipeline declaration and its flow's owner; the last
line is the verdict: where the packet leaves, or where it is dropped and why.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pathlib
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

from agent.planner.cookies import kind_of
from agent.planner.pipeline import TABLE_NAMES, Table

# Why a packet that stops in a table is dropped there (the table's miss or its drop flows).
_DROP_REASONS: dict[int, str] = {
    Table.CLASSIFY: "unknown in port: neither a bound VM port nor the tunnel",
    Table.PORT_SECURITY: "port security: the source MAC/IP is not the port's own (nor an allowed pair)",
    Table.SG_EGRESS: "security group: not admitted to conntrack",
    Table.SG_EGRESS_RULES: "security group: no egress rule allows it",
    Table.SG_INGRESS_RULES: "security group: no ingress rule allows it",
    Table.ARP_RESPONDER: "ARP for an address nobody in the segment holds",
    Table.L3_GATEWAY: "not for a gateway this host routes for",
    Table.L3_ROUTING: "no route to the destination",
    Table.L2_LOOKUP: "unknown destination MAC in the segment",
}

_ENGINES = {"dhcp_engine": "to the DHCP engine", "routing_engine": "to the routing engine"}
_STEP = re.compile(r"^\s*(\d+)\. (.*)$")
_HEAD = re.compile(r"^(?:(.*), )?priority (\d+)(?:, cookie (0x[0-9a-f]+))?$")
_GOTO = re.compile(r"goto_table:(\d+)")
_BRIDGE = re.compile(r'^bridge\("([^"]+)"\)')


@dataclass
class Step:
    table: int
    match: str
    priority: int | None
    cookie: int | None
    actions: list[str] = field(default_factory=list)
    table_name: str = ""
    owner: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "table_name": self.table_name,
            "match": self.match,
            "priority": self.priority,
            "cookie": f"{self.cookie:#x}" if self.cookie is not None else None,
            "owner": self.owner,
            "actions": self.actions,
        }


def parse_steps(output: str, bridge: str) -> list[Step]:
    """The steps ``ofproto/trace`` printed for ``bridge`` (recirculations included, in order);
    other bridges (the underlay's), notes (``->``) and the ``drop`` OVS prints after a ``ct``
    action (the packet goes on in its recirculation, or after the commit) are left out."""
    steps: list[Step] = []
    current_bridge = ""
    for line in output.splitlines():
        b = _BRIDGE.match(line)
        if b:
            current_bridge = b.group(1)
            continue
        if line.startswith(("Final flow:", "Megaflow:", "Datapath actions:")):
            current_bridge = ""
        if current_bridge != bridge:
            continue
        m = _STEP.match(line)
        if m:
            table, rest = int(m.group(1)), m.group(2)
            head = _HEAD.match(rest)
            if head is None:  # "No match."
                steps.append(Step(table, rest, None, None))
            else:
                match, priority, cookie = head.groups()
                steps.append(Step(table, match or "", int(priority), int(cookie, 16) if cookie else None))
            continue
        text = line.strip()
        if not steps or not text or text.startswith(("->", "thaw", "Resuming from table", "---")):
            continue
        actions = steps[-1].actions
        if text == "drop" and actions and actions[-1].startswith("ct("):
            continue
        actions.append(text)
    return steps


def annotate(steps: list[Step], info: dict[str, Any]) -> None:
    """Each step's table name and owner (the agent's owner of the cookie, else its kind)."""
    owners = {int(c, 16): o for c, o in info["cookies"].items()}
    for step in steps:
        step.table_name = TABLE_NAMES.get(step.table, str(step.table))
        if step.cookie is None:
            step.owner = "(no flow)" if step.priority is None else "not the agent's"
            continue
        kind = kind_of(step.cookie)
        step.owner = owners.get(step.cookie) or (f"{kind.name.lower()}:?" if kind else "not the agent's")


def verdict(steps: list[Step], info: dict[str, Any]) -> dict[str, Any]:
    """Where the packet goes: every output (VM port, tunnel + remote host and the owner of the
    flow that sent it there, the DHCP or routing engine, back out of its in port), else the
    drop: the table it stopped in, the owner of the flow it stopped at, and why."""
    ports = {p["ofport"]: p["id"] for p in info["ports"] if p["ofport"] is not None}
    outputs: list[dict[str, Any]] = []
    tun_dst = ""
    for step in steps:
        for action in step.actions:
            if action.startswith("set_field:") and action.endswith("->tun_dst"):
                tun_dst = action[len("set_field:") : -len("->tun_dst")]
            port: int | None = None
            if action.startswith("output:"):
                port = int(action.split(":", 1)[1])
            elif action == "IN_PORT":
                outputs.append({"to": "in_port", "by": step.table_name, "owner": step.owner})
                continue
            if port is None:
                continue
            if port == info["tunnel_ofport"]:
                out = {"to": "tunnel", "remote_host": tun_dst, "owner": step.owner}
            elif port == info["dhcp_ofport"]:
                out = {"to": "dhcp_engine"}
            elif port == info["route_ofport"]:
                out = {"to": "routing_engine"}
            elif port in ports:
                out = {"to": "port", "port": ports[port], "ofport": port}
            else:
                out = {"to": "ofport", "ofport": port}
            outputs.append(out)
    if outputs:
        return {"verdict": "output", "outputs": outputs}
    last = steps[-1] if steps else None
    if last is None:
        return {"verdict": "drop", "table": "", "reason": "OVS traced no step"}
    reason = _DROP_REASONS.get(last.table, f"no flow in {last.table_name} sends it on")
    if last.match == "No match.":
        reason = f"no flow matches in {last.table_name}"
    return {"verdict": "drop", "table": last.table_name, "owner": last.owner, "reason": reason}


def describe(v: dict[str, Any]) -> str:
    if v["verdict"] == "drop":
        return f"DROP in {v['table']}: {v['reason']}"
    parts = []
    for out in v["outputs"]:
        if out["to"] == "tunnel":
            parts.append(f"tunnel to host {out['remote_host']}, by {out['owner']}")
        elif out["to"] == "port":
            parts.append(f"port {out['port']} (ofport {out['ofport']})")
        elif out["to"] == "in_port":
            parts.append(f"answered back out of the in port by {out['by']} ({out['owner']})")
        elif out["to"] in _ENGINES:
            parts.append(_ENGINES[out["to"]])
        else:
            parts.append(f"ofport {out['ofport']}")
    return "OUTPUT: " + "; ".join(parts)


def _holder(ip: str | None, info: dict[str, Any]) -> dict[str, Any] | None:
    """The port or neighbour holding ``ip``."""
    return next((h for h in (*info["ports"], *info["neighbours"]) if ip and ip in h["ips"]), None)


def _from_tunnel(args: argparse.Namespace, info: dict[str, Any]) -> tuple[str, str, str]:
    """(in fields, source MAC, source IP) of a packet arriving over VXLAN: from the remote
    neighbour holding --src-ip, in the segment of its destination, unless told otherwise."""
    if info["tunnel_ofport"] is None:
        raise ValueError("this agent has no tunnel port yet")
    src, dst = _holder(args.src_ip, info), _holder(args.dst_ip, info)
    tun_src = args.tun_src or (src or {}).get("host_ip")
    vni = args.tun_id or (dst or {}).get("segment") or next(iter((src or {}).get("segments", ())), None)
    if not (tun_src and vni and args.src_ip):
        raise ValueError("from the tunnel: give --src-ip (a neighbour's), or --tun-src and --tun-id")
    fields = f"in_port={info['tunnel_ofport']},tun_id={vni},tun_src={tun_src},tun_dst={info['underlay_ip']}"
    return fields, args.src_mac or (src or {}).get("mac", ""), args.src_ip


def packet(args: argparse.Namespace, info: dict[str, Any]) -> str:
    """The ``ofproto/trace`` flow for the packet described by ``args``; the VM port's own MAC
    and first IP are the defaults for the source, the destination IP's holder (or the port's
    gateway, for an address outside its subnet) for the destination MAC."""
    port = next((p for p in info["ports"] if args.in_port in (p["id"], str(p["ofport"]))), None)
    if args.in_port == "tunnel":
        in_fields, src_mac, src_ip = _from_tunnel(args, info)
    elif port is None:
        if not args.in_port.isdigit():
            raise ValueError(f"no port {args.in_port!r} on this agent (a port id, 'tunnel' or an ofport)")
        in_fields, src_mac, src_ip = f"in_port={args.in_port}", args.src_mac, args.src_ip
    else:
        if port["ofport"] is None:
            raise ValueError(f"port {port['id']} is not bound to an OVS interface yet (pending)")
        in_fields = f"in_port={port['ofport']}"
        src_mac = args.src_mac or port["mac"]
        src_ip = args.src_ip or (port["ips"][0] if port["ips"] else "0.0.0.0")
    if args.proto == "dhcp":
        return (
            f"udp,{in_fields},dl_src={src_mac},dl_dst=ff:ff:ff:ff:ff:ff,"
            "nw_src=0.0.0.0,nw_dst=255.255.255.255,nw_ttl=64,udp_src=68,udp_dst=67"
        )
    if not args.dst_ip:
        raise ValueError("--dst-ip is needed (except for --proto dhcp)")
    dst_mac = args.dst_mac or _dst_mac(args.dst_ip, port, info)
    if not src_mac or not dst_mac:
        raise ValueError("give --src-mac and --dst-mac (not found among the agent's ports and neighbours)")
    if args.proto == "arp":
        return (
            f"arp,{in_fields},dl_src={src_mac},dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,"
            f"arp_spa={src_ip},arp_tpa={args.dst_ip},arp_sha={src_mac}"
        )
    base = (
        f"{args.proto},{in_fields},dl_src={src_mac},dl_dst={dst_mac},"
        f"nw_src={src_ip},nw_dst={args.dst_ip},nw_ttl=64"
    )
    if args.proto == "icmp":
        return base + ",icmp_type=8,icmp_code=0"
    return base + f",{args.proto}_src={args.src_port},{args.proto}_dst={args.dst_port}"


def _dst_mac(dst_ip: str, port: dict[str, Any] | None, info: dict[str, Any]) -> str:
    """The holder's MAC when it is in the in port's subnet, else the subnet's gateway MAC."""
    cidr = (port or {}).get("cidr")
    if cidr and ipaddress.ip_address(dst_ip) not in ipaddress.ip_network(cidr):
        return str(port.get("gateway_mac", "")) if port else ""
    holder = _holder(dst_ip, info)
    return holder["mac"] if holder else ""


def run_trace(info: dict[str, Any], flow: str) -> str:
    """``ovs-appctl ofproto/trace`` on the switch the agent programs (its rundir)."""
    rundir = info["ovs_rundir"]
    fixed = pathlib.Path(rundir, "ovs-vswitchd.ctl")  # a daemon started with --unixctl there
    target = str(fixed) if fixed.exists() else "ovs-vswitchd"
    proc = subprocess.run(
        ["ovs-appctl", "-t", target, "ofproto/trace", info["bridge"], flow],
        env={**os.environ, "OVS_RUNDIR": rundir},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ovs-appctl ofproto/trace failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def trace(args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    flow = packet(args, info)
    steps = parse_steps(run_trace(info, flow), info["bridge"])
    annotate(steps, info)
    return {"packet": flow, "steps": [s.as_dict() for s in steps], **verdict(steps, info)}


def _named_gotos(action: str) -> str:
    return _GOTO.sub(lambda m: f"goto_table:{TABLE_NAMES.get(int(m[1]), m[1])}", action)


def render(result: dict[str, Any]) -> str:
    lines = [f"packet: {result['packet']}"]
    for s in result["steps"]:
        head = " ".join(
            x for x in (f"priority={s['priority']}" if s["priority"] is not None else "", s["match"]) if x
        )
        lines.append(f"  {s['table_name']:<17} {s['owner']:<28} {head}")
        for action in s["actions"]:
            lines.append(f"  {'':<17}   {_named_gotos(action)}")
    lines.append(describe(result))
    return "\n".join(lines)
