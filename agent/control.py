"""Read-only control socket for acactl: JSON request line in, JSON document out.

Snapshots are taken on the core's worker thread, so they see one consistent state.
"""

from __future__ import annotations

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

from agent.core import AgentCore
from agent.dataplane import conntrack
from agent.model.resources import ResourceType, SecurityGroupRule
from agent.planner import security
from agent.planner.cookies import Kind, kind_of
from agent.planner.flows import Flow
from agent.planner.pipeline import TABLE_NAMES, Priority, Table
from agent.planner.plan import neighbor_owner, port_owner

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
        drift = core.reconciler.check()

        def rows(flows: list[Flow]) -> list[dict[str, str]]:
            return [_flow_row(core, f) for f in flows[:_DRIFT_SHOWN]]

        return {
            "ok": not (drift.missing or drift.differ or drift.extra),
            "checked": drift.checked,
            "counts": {"missing": len(drift.missing), "differ": len(drift.differ), "extra": len(drift.extra)},
            "missing": rows(drift.missing),
            "differ": rows(drift.differ),
            "extra": rows(drift.extra),
        }
    if what == "sg":
        return _security_groups(core, connections)
    raise ValueError(f"unknown request {what!r} (status, ports, neighbours, flows, dhcp, check, sg)")


def _flow_row(core: AgentCore, flow: Flow) -> dict[str, str]:
    owner = core.reconciler.owner_of(flow.key)
    return {
        "cookie": f"{flow.cookie:#018x}",
        "owner": f"{owner[0].name.lower()}:{owner[1]}" if owner else "",
        "flow": flow.text(TABLE_NAMES),
    }


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
                    connections = control.connections() if what == "sg" else None
                    result = control.core.call(
                        lambda: snapshot(control.core, what, control.info, connections)
                    ).result(30)
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

    def connections(self) -> Counter[tuple[int, int]] | None:
        """Conntrack's labelled connections, read off the worker thread (a subprocess); None when
        it cannot be read (the rules' other counters are still shown)."""
        rundir = self.info.get("ovs_rundir")
        if not rundir:
            return None
        try:
            return conntrack.labelled_connections(rundir)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("event=conntrack_unreadable error=%r", str(exc))
            return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.path.unlink(missing_ok=True)
