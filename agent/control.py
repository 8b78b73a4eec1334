"""Control socket for acactl: JSON request line in, JSON document out.

Snapshots are taken on the core's worker thread, so they see one consistent state. Most
requests only read; ``resync`` and ``set_log_level`` act, and ``plan`` plans a goal state on a
copy of the held state. They need nothing but access to the socket (root, or the group of the
0660 socket in its 0750 runtime directory): whoever may ask the agent may also ask it to resync.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pathlib
import socketserver
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent import logs
from agent.core import AgentCore
from agent.dataplane import conntrack
from agent.model.decode import Wire, decode_wire
from agent.model.resources import Request, ResourceType, SecurityGroupRule
from agent.planner import security
from agent.planner.cookies import Kind, kind_of
from agent.planner.flows import Flow
from agent.planner.pipeline import TABLE_NAMES, Priority, Table
from agent.planner.plan import Owner, neighbor_owner, port_owner
from agent.preview import preview

log = logging.getLogger("aca.control")
_FAILED_SHOWN = 100  # failed owners listed in `acactl status` (all are counted)
_DRIFT_SHOWN = 100  # flows listed per kind of drift in `acactl check` (all are counted)


def _owner_state(core: AgentCore, owner: tuple[Kind, str], pending: bool) -> str:
    if owner in core.failed:
        return "failed"
    if pending or not core.dataplane_ready:
        return "pending"
    return "programmed"


def _flow_counts(core: AgentCore) -> dict[tuple[Kind, str], int]:
    return {owner: len(fs) for owner, fs in core.reconciler.desired.items()}


def _rule_text(rule: SecurityGroupRule) -> dict[str, Any]:
    lo, hi = rule.port_range_min, rule.port_range_max or rule.port_range_min
    if rule.protocol == security.TCP and not lo:
        protocol, ports = "any", ""
    else:
        protocol = {security.TCP: "tcp", security.UDP: "udp", security.ICMP: "icmp"}[rule.protocol]
        ports = "" if not lo else f"{lo}" if lo == hi else f"{lo}-{hi}"
    remote = f"group:{rule.remote_group_id}" if rule.remote_group_id else rule.remote_ip_prefix or "any"
    direction = "ingress" if rule.direction == security.INGRESS else "egress"
    return {"rule": rule.id, "direction": direction, "protocol": protocol, "ports": ports, "remote": remote}


def _security_groups(core: AgentCore, connections: Counter[tuple[int, int]] | None) -> list[dict[str, Any]]:
    """Each port with groups: its zone, new connections and default drops per direction, and
    each rule with its flows' packets and bytes as OVS counts them (a remote-group rule is a
    conjunction clause: OVS keeps no statistics for those, so None) and the connections
    conntrack holds in the port's zone with the rule's label (``connections``: per (zone,
    label); a remote-group rule's are its group's conjunction's, shared by the port's rules
    naming that group; None when conntrack could not be read)."""
    state, planner = core.state, core.planner
    dumped = list(core.reconciler.driver.dump().values()) if core.dataplane_ready else []
    by_cookie: dict[int, list[Any]] = {}
    for flow in dumped:
        if kind_of(flow.cookie) is Kind.SECURITY:
            by_cookie.setdefault(flow.cookie, []).append(flow)
    groups = state.resources[ResourceType.SECURITYGROUP]
    out = []
    for port in sorted(state.ports.values(), key=lambda p: p.id):
        if not port.security_group_ids:
            continue
        own = by_cookie.get(security.port_cookie(port.id), [])

        def packets(table: Table, priority: int, own: list[Any] = own) -> int:
            return sum(f.packet_count for f in own if f.table == table and f.priority == priority)

        rules = []
        for gid in port.security_group_ids:
            for rule in getattr(groups.get(gid), "rules", ()):
                flows = by_cookie.get(security.rule_cookie(port.id, rule.id), [])
                counted = not rule.remote_group_id
                label = (
                    security.remote_label(rule.remote_group_id)
                    if rule.remote_group_id
                    else security.rule_label(rule.id)
                )
                zone = planner.bindings.get(port.id)
                rules.append(
                    {
                        "group": gid,
                        **_rule_text(rule),
                        "flows": len(flows),
                        "packets": sum(f.packet_count for f in flows) if counted else None,
                        "bytes": sum(f.byte_count for f in flows) if counted else None,
                        "connections": None
                        if connections is None or zone is None
                        else connections[(zone, label)],
                    }
                )
        out.append(
            {
                "port": port.id,
                "zone": planner.bindings.get(port.id),
                "groups": list(port.security_group_ids),
                "missing_groups": [g for g in port.security_group_ids if g not in groups],
                "state": _owner_state(core, security.port_owner(port.id), planner.is_pending(port.id)),
                "egress_new": packets(Table.SG_EGRESS_COMMIT, Priority.SG_COMMIT),
                "ingress_new": packets(Table.SG_INGRESS_COMMIT, Priority.SG_COMMIT),
                "egress_dropped": packets(Table.SG_EGRESS_RULES, Priority.SG_DROP),
                "ingress_dropped": packets(Table.SG_INGRESS_RULES, Priority.SG_DROP),
                "rules": rules,
            }
        )
    return out


def snapshot(
    core: AgentCore, what: str, info: dict[str, Any], connections: Counter[tuple[int, int]] | None = None
) -> Any:
    """What ``what`` asks for; ``connections``: conntrack's, per (zone, label), for ``sg``."""
    state, planner = core.state, core.planner
    if what == "status":
        return {
            **info,
            "dataplane_ready": core.dataplane_ready,
            "resources": state.count(),
            "flows_installed": len(core.reconciler.installed),
            "ports_pending": sum(1 for p in state.ports if planner.is_pending(p)),
            "owners_failed": len(core.failed),
            "failed": [
                {"owner": f"{kind.name.lower()}:{oid}", "reason": reason}
                for (kind, oid), reason in sorted(core.failed.items())[:_FAILED_SHOWN]
            ],
            "repair_in_s": core.repair_in_s,
            "counters": dict(core.counters),
            "dhcp": core.dhcp.stats() if core.dhcp is not None else None,
            "routing": core.routes.stats() if core.routes is not None else None,
        }
    if what == "dhcp":
        if core.dhcp is None:
            return {"enabled": False, "leases": []}
        return {"enabled": True, **core.dhcp.stats(), "leases": core.dhcp.leases()}
    counts = _flow_counts(core)
    if what == "ports":
        return [
            {
                "id": p.id,
                "mac": p.mac,
                "ips": [f.ip for f in p.fixed_ips],
                "subnets": [f.subnet_id for f in p.fixed_ips],
                "segment": state.segment_of_port(p),
                "ofport": planner.bindings.get(p.id),
                "admin_up": p.admin_up,
                "state": _owner_state(core, port_owner(p.id), planner.is_pending(p.id)),
                "flows": counts.get(port_owner(p.id), 0),
            }
            for p in sorted(state.ports.values(), key=lambda p: p.id)
        ]
    if what == "neighbours":
        return [
            {
                "id": n.id,
                "mac": n.mac,
                "host_ip": n.host_ip,
                "ips": [ip for _vni, ip in state.neighbor_segments(n)],
                "segments": sorted({vni for vni, _ip in state.neighbor_segments(n)}),
                "state": _owner_state(core, neighbor_owner(n.id), False),
                "flows": counts.get(neighbor_owner(n.id), 0),
            }
            for n in sorted(state.neighbors.values(), key=lambda n: n.id)
        ]
    if what == "flows":
        installed = core.reconciler.installed.values()
        return [_flow_row(core, f) for f in sorted(installed, key=lambda f: (f.table, -f.priority, f.text()))]
    if what == "check":
        return _check(core)
    if what == "sg":
        return _security_groups(core, connections)
    raise ValueError(
        f"unknown request {what!r} (status, ports, neighbours, flows, dhcp, check, sg, "
        "resync, set_log_level, plan, trace_info)"
    )


def _owner_name(owner: Owner | None) -> str:
    return f"{owner[0].name.lower()}:{owner[1]}" if owner else ""


def _flow_row(core: AgentCore, flow: Flow) -> dict[str, str]:
    return {
        "cookie": f"{flow.cookie:#018x}",
        "owner": _owner_name(core.reconciler.owner_of(flow.key)),
        "flow": flow.text(TABLE_NAMES),
    }


def cookie_owners(core: AgentCore) -> dict[int, str]:
    """Cookie → the owner the agent programmed it for (a security group's rules have cookies of
    their own, named after the port's owner)."""
    owner_of = core.reconciler.owner_of
    return {f.cookie: _owner_name(owner_of(k)) for k, f in core.reconciler.installed.items()}


def _check(core: AgentCore) -> dict[str, Any]:
    """The mirror against OVS's dump of the agent's cookies, flow by flow and summed per owner.
    A flow the mirror does not hold is named after the owner whose cookie it carries, if any."""
    drift = core.reconciler.check()
    owners = cookie_owners(core)

    def rows(flows: list[Flow], extra: bool = False) -> list[dict[str, str]]:
        out = []
        for f in flows[:_DRIFT_SHOWN]:
            row = _flow_row(core, f)
            if extra:  # the dump's actions are not decoded: show the key only
                row["owner"] = owners.get(f.cookie, "")
                row["flow"] = row["flow"].rsplit(" actions=", 1)[0]
            out.append(row)
        return out

    per_owner: dict[str, dict[str, int]] = {}
    for kind, flows in (("missing", drift.missing), ("differ", drift.differ), ("extra", drift.extra)):
        for f in flows:
            name = (
                owners.get(f.cookie, "") if kind == "extra" else _owner_name(core.reconciler.owner_of(f.key))
            )
            counts = per_owner.setdefault(
                name or f"unknown:{f.cookie:#x}", {"missing": 0, "differ": 0, "extra": 0}
            )
            counts[kind] += 1
    return {
        "ok": not (drift.missing or drift.differ or drift.extra),
        "checked": drift.checked,
        "counts": {"missing": len(drift.missing), "differ": len(drift.differ), "extra": len(drift.extra)},
        "owners": dict(sorted(per_owner.items())),
        "missing": rows(drift.missing),
        "differ": rows(drift.differ),
        "extra": rows(drift.extra, extra=True),
    }


def _resync(core: AgentCore) -> dict[str, Any]:
    """An operator's resync: the switch is dumped and made to match the held state."""
    if not core.dataplane_ready:
        raise RuntimeError("the dataplane is not ready: the agent resyncs by itself once OVS is back")
    core.counters["operator_resyncs"] += 1
    try:
        result = core.resync()
    except (ConnectionError, TimeoutError) as exc:  # as for a bundle: the outcome is unknown
        core.dataplane_lost()
        raise RuntimeError(f"resync failed ({exc}); the agent repairs by itself") from exc
    return {
        "added": result.added,
        "deleted": result.deleted,
        "failed": sorted(_owner_name(o) for o in result.failed),
        "us": result.elapsed_us,
    }


def _plan(core: AgentCore, requests: list[Request]) -> dict[str, Any]:
    """The decoded goal state planned on a copy of the held state: per resource its
    status-to-be and owners, and the flows its bundle would add, change and remove."""
    ready = core.dataplane_ready
    result = preview(core.planner, core.reconciler, requests, ready, retrying=bool(core.failed) or not ready)

    def flows(bucket: dict[Owner, list[Flow]]) -> list[dict[str, str]]:
        return [
            {"owner": _owner_name(o), "cookie": f"{f.cookie:#018x}", "flow": f.text(TABLE_NAMES)}
            for o, fs in sorted(bucket.items())
            for f in sorted(fs, key=lambda f: (f.table, -f.priority, f.text()))
        ]

    return {
        "resources": [
            {
                "type": r.type.name.lower(),
                "id": r.id,
                "op": r.op.name.lower(),
                "status": r.status.name,
                "reason": r.reason,
                "owners": [_owner_name(o) for o in r.owners],
            }
            for r in result.resources
        ],
        "added": flows(result.added),
        "changed": flows(result.changed),
        "removed": flows(result.removed),
    }


def _trace_info(core: AgentCore, info: dict[str, Any]) -> dict[str, Any]:
    """What `acactl trace` needs to build a packet and name each step: the switch's rundir and
    bridge, the ports (ofport, MAC, IPs, gateway), the neighbours, the agent's internal ports and
    which owner each cookie belongs to."""
    state, planner = core.state, core.planner

    def gateway(subnet_id: str) -> dict[str, str]:
        sn = state.subnets.get(subnet_id)
        return {"gateway_ip": sn.gateway_ip, "gateway_mac": sn.gateway_mac, "cidr": sn.cidr} if sn else {}

    return {
        "bridge": info.get("bridge", "br-int"),
        "ovs_rundir": info.get("ovs_rundir", ""),
        "underlay_ip": info.get("underlay_ip", ""),
        "tunnel_ofport": planner.tunnel_ofport,
        "dhcp_ofport": planner.dhcp_ofport,
        "route_ofport": planner.route_ofport,
        "ports": [
            {
                "id": p.id,
                "ofport": planner.bindings.get(p.id),
                "mac": p.mac,
                "ips": [f.ip for f in p.fixed_ips],
                "segment": state.segment_of_port(p),
                **(gateway(p.fixed_ips[0].subnet_id) if p.fixed_ips else {}),
            }
            for p in state.ports.values()
        ],
        "neighbours": [
            {
                "id": n.id,
                "mac": n.mac,
                "host_ip": n.host_ip,
                "ips": [ip for _v, ip in state.neighbor_segments(n)],
                "segments": sorted({vni for vni, _ip in state.neighbor_segments(n)}),
            }
            for n in state.neighbors.values()
        ],
        "cookies": {f"{c:#x}": o for c, o in cookie_owners(core).items()},
    }


def handle(core: AgentCore, request: dict[str, Any], info: dict[str, Any]) -> Any:
    """One request: reads run as snapshots on the worker, the rest as their own kind needs."""
    what = str(request.get("what", "status"))
    if what == "set_log_level":
        level = str(request.get("level", "")).upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(
                f"unknown log level {request.get('level')!r} (debug, info, warning, error, critical)"
            )
        logs.set_level(level)
        log.warning("event=log_level_set level=%s by=control_socket", level.lower())
        return {"level": level.lower()}
    if what == "plan":  # version (1, 2), message (base64 protobuf), host_ip (V2; default this host)
        host_ip = str(request.get("host_ip") or info.get("underlay_ip", ""))
        wire = Wire(int(request.get("version", 2)), base64.b64decode(request["message"]), host_ip)
        requests = decode_wire(wire)  # here, not on the worker: decoding needs no state
        return core.call(lambda: _plan(core, requests)).result(60)
    if what == "resync":
        return core.call(lambda: _resync(core)).result(120)
    if what == "trace_info":
        return core.call(lambda: _trace_info(core, info)).result(30)
    connections = _connections(info) if what == "sg" else None  # a subprocess: off the worker
    return core.call(lambda: snapshot(core, what, info, connections)).result(30)


def _connections(info: dict[str, Any]) -> Counter[tuple[int, int]] | None:
    """Conntrack's labelled connections, per (zone, label); None when they cannot be read (the
    rules' other counters are still shown)."""
    rundir = info.get("ovs_rundir")
    if not rundir:
        return None
    try:
        return conntrack.labelled_connections(rundir)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("event=conntrack_unreadable error=%r", str(exc))
        return None


class ControlServer:
    """``live``, if given, adds to every status what the agent knows outside the core:
    readiness and the supervised threads' health."""

    def __init__(
        self,
        path: str,
        core: AgentCore,
        info: dict[str, Any],
        live: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.path = pathlib.Path(path)
        self.core = core
        self.info = info
        self.live = live
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        control = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    request = json.loads(self.rfile.readline() or b"{}")
                    what = str(request.get("what", "status"))
                    started = time.monotonic()
                    result = handle(control.core, request, control.info)
                    if what == "status" and control.live is not None:
                        result = {**result, **control.live()}
                    reply: dict[str, Any] = {
                        "ok": True,
                        "result": result,
                        "ms": (time.monotonic() - started) * 1e3,
                    }
                except Exception as exc:  # a bad request gets an error document, never kills the server
                    reply = {"ok": False, "error": str(exc)}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        self._server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        os.chmod(self.path, 0o660)
        threading.Thread(target=self._server.serve_forever, name="aca-control", daemon=True).start()
        log.info("event=control_listening path=%s", self.path)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.path.unlink(missing_ok=True)
