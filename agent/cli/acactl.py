"""acactl: ask the running agent what it holds and programmed, check it against OVS, trace a
packet, preview a goal state; resync and set-log-level act (they need the socket's access too).

Exit codes: 0 yes / done, 1 the agent could not be asked (or refused), 2 usage, 3 the answer is
no: drift (`check`), not ready or owners failed (`status`), a resource the goal state would not
get accepted (`plan`: INVALID_ARG, OUT_OF_ORDER or FAILURE).
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import socket
import sys
from typing import Any

from agent.cli import completion, trace
from agent.version import version

DEFAULT_SOCKET = "/run/aca-agent/acactl.sock"
NOT_OK = 3


def request(path: str, what: str, timeout: float = 30.0, **params: Any) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"what": what, **params}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "agent returned an error"))
    return reply["result"]


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [
        [", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in (r.get(c, "") for c in columns)]
        for r in rows
    ]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


COLUMNS = {
    "ports": ["id", "mac", "ips", "segment", "ofport", "state", "flows"],
    "neighbours": ["id", "mac", "ips", "host_ip", "segments", "state", "flows"],
    "dhcp": ["id", "network", "mac", "ip", "subnet", "hostname"],
    "sg": [
        "group",
        "rule",
        "direction",
        "protocol",
        "ports",
        "remote",
        "flows",
        "packets",
        "bytes",
        "connections",
    ],
}


def _print_sg(ports: list[dict[str, Any]]) -> None:
    for port in ports:
        missing = f" missing={','.join(port['missing_groups'])}" if port["missing_groups"] else ""
        print(
            f"port {port['port']} zone={port['zone']} state={port['state']}{missing} "
            f"new_connections(egress/ingress)={port['egress_new']}/{port['ingress_new']} "
            f"dropped(egress/ingress)={port['egress_dropped']}/{port['ingress_dropped']}"
        )
        # A remote-group rule is a conjunction clause: OVS keeps no statistics for it.
        rows = [{k: "-" if v is None else v for k, v in r.items()} for r in port["rules"]]
        print("  " + _table(rows, COLUMNS["sg"]).replace("\n", "\n  "))


def healthy(status: dict[str, Any]) -> bool:
    """Ready (or, from an agent without the supervisor's view, the dataplane ready) and no owner failed."""
    return bool(status.get("ready", status.get("dataplane_ready"))) and not status.get("owners_failed")


def _print_status(s: dict[str, Any]) -> None:
    state = "ready" if healthy(s) else "NOT READY" if not s.get("ready", s["dataplane_ready"]) else "DEGRADED"
    print(f"{s['host_id']} ({s['underlay_ip']}, bridge {s['bridge']}): {state}")
    print(f"  dataplane: {'ready' if s['dataplane_ready'] else 'not ready'}", end="")
    if s.get("repair_in_s") is not None:
        print(f", next repair in {s['repair_in_s']:.1f}s", end="")
    print()
    threads = s.get("threads", {})
    unwell = {k: v for k, v in threads.items() if v != "running"}
    print(f"  threads: {len(threads) - len(unwell)}/{len(threads)} running", end="")
    print("".join(f", {k} {v}" for k, v in sorted(unwell.items())))
    for name, error in sorted(s.get("thread_errors", {}).items()):
        print(f"    {name}: {error}")
    print("  resources: " + " ".join(f"{k}={v}" for k, v in s["resources"].items() if v) or "none")
    print(
        f"  flows installed: {s['flows_installed']}  ports pending: {s['ports_pending']}  "
        f"owners failed: {s['owners_failed']}"
    )
    for row in s["failed"]:
        print(f"    failed {row['owner']}: {row['reason']}")
    recovery = s.get("state_recovery") or {}
    if recovery.get("quarantined") or recovery.get("rows_skipped") or recovery.get("journal_entries_skipped"):
        print("  state recovery: " + " ".join(f"{k}={v}" for k, v in recovery.items() if v))
    if s["counters"]:
        print("  counters: " + " ".join(f"{k}={v}" for k, v in sorted(s["counters"].items())))
    for engine in ("dhcp", "routing"):
        stats = s.get(engine)
        if stats:
            counters = " ".join(f"{k}={v}" for k, v in sorted(stats.get("counters", {}).items()) if v)
            print(f"  {engine} ({stats.get('interface', '')}): {counters or 'no traffic yet'}")


def _print_check(result: dict[str, Any]) -> None:
    counts = " ".join(f"{k}={v}" for k, v in result["counts"].items())
    print(f"{'ok' if result['ok'] else 'DRIFT'}: {result['checked']} flows checked, {counts}")
    for owner, per in result.get("owners", {}).items():
        print(f"  {owner}: " + " ".join(f"{k}={v}" for k, v in per.items() if v))
    for kind in ("missing", "differ", "extra"):
        for row in result[kind]:
            print(f"{kind} cookie={row['cookie']} owner={row['owner'] or '-'} {row['flow']}")


def _print_plan(result: dict[str, Any]) -> None:
    print(_table(result["resources"], ["type", "id", "op", "status", "reason"]))
    for kind, sign in (("added", "+"), ("changed", "~"), ("removed", "-")):
        for row in result[kind]:
            print(f"{sign} {row['owner']:<28} {row['flow']}")
    print(
        f"flows: {len(result['added'])} added, {len(result['changed'])} changed, "
        f"{len(result['removed'])} removed (nothing applied)"
    )


def read_goal_state(path: str, v1: bool) -> tuple[int, bytes]:
    """A goal state file, protobuf JSON or binary, as (version, protobuf bytes)."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    from agent._pb import goalstate_pb2 as pb

    raw = pathlib.Path(path).read_bytes()
    msg = pb.GoalState() if v1 else pb.GoalStateV2()
    try:
        json_format.Parse(raw.decode(), msg)
    except (UnicodeDecodeError, json_format.ParseError) as json_error:
        try:
            msg.ParseFromString(raw)
        except DecodeError:
            raise ValueError(f"{path}: neither protobuf JSON ({json_error}) nor binary") from None
    return (1 if v1 else 2), msg.SerializeToString()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="acactl", description="Inspect and operate a running aca-agent")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument(
        "--socket", default=DEFAULT_SOCKET, help=f"agent control socket (default {DEFAULT_SOCKET})"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "status", help="health, resource counts, failed owners (exit 3 unless ready and all programmed)"
    )
    check = sub.add_parser(
        "check", help="compare OVS's flows with what the agent installed (exit 3 on drift)"
    )
    check.add_argument("--repair", action="store_true", help="on drift, resync and check again")
    sub.add_parser("resync", help="dump the switch and make it match the held state")
    level = sub.add_parser("set-log-level", help="change the agent's log level until restart or reload")
    level.add_argument("level", choices=["debug", "info", "warning", "error", "critical"])
    dump = sub.add_parser(
        "dump", help="ports, neighbours, flows with their state, DHCP leases, or security groups per port"
    )
    dump.add_argument("what", choices=["ports", "neighbours", "neighbors", "flows", "dhcp", "sg"])
    plan = sub.add_parser("plan", help="what a goal state file would change (nothing is applied)")
    plan.add_argument("file", help="GoalStateV2 (or GoalState with --v1), protobuf JSON or binary")
    plan.add_argument("--v1", action="store_true", help="the file is a V1 GoalState")
    plan.add_argument("--host-ip", help="decode a V2 goal state for this host (default: the agent's)")
    tr = sub.add_parser("trace", help="a packet through the flows OVS holds, each step's owner named")
    tr.add_argument("--in-port", required=True, help="VM port id, 'tunnel' (from a remote host) or an ofport")
    tr.add_argument("--proto", choices=["icmp", "tcp", "udp", "arp", "dhcp"], default="icmp")
    tr.add_argument("--src-mac", help="default: the port's MAC")
    tr.add_argument("--dst-mac", help="default: the destination IP's holder, or the gateway if routed")
    tr.add_argument("--src-ip", help="default: the port's first IP")
    tr.add_argument("--dst-ip")
    tr.add_argument("--src-port", type=int, default=40000)
    tr.add_argument("--dst-port", type=int, default=80)
    tr.add_argument("--tun-src", help="from the tunnel: the remote host (default: --src-ip's neighbour's)")
    tr.add_argument("--tun-id", type=int, help="from the tunnel: the VNI (default: the destination's)")
    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument("shell", choices=["bash"])
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "completion":
        print(completion.bash(p))
        return 0
    try:
        return _run(args)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"acactl: {exc}", file=sys.stderr)
        return 1


def _emit(args: argparse.Namespace, result: Any, text: Any) -> None:
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        text(result)


def _run(args: argparse.Namespace) -> int:
    sock = args.socket
    if args.command == "status":
        result = request(sock, "status")
        _emit(args, result, _print_status)
        return 0 if healthy(result) else NOT_OK
    if args.command == "check":
        result = request(sock, "check", timeout=60)
        if not result["ok"] and args.repair:
            repaired = request(sock, "resync", timeout=120)
            if not args.json:
                _print_check(result)
                print(f"repaired by a resync: added={repaired['added']} deleted={repaired['deleted']}")
            result = {**request(sock, "check", timeout=60), "repaired": repaired, "drift_before": result}
        _emit(args, result, _print_check)
        return 0 if result["ok"] else NOT_OK
    if args.command == "resync":
        result = request(sock, "resync", timeout=120)
        _emit(
            args,
            result,
            lambda r: print(f"resynced: added={r['added']} deleted={r['deleted']} failed={len(r['failed'])}"),
        )
        return NOT_OK if result["failed"] else 0
    if args.command == "set-log-level":
        result = request(sock, "set_log_level", level=args.level)
        _emit(args, result, lambda r: print(f"log level: {r['level']}"))
        return 0
    if args.command == "plan":
        version_, raw = read_goal_state(args.file, args.v1)
        params = {"version": version_, "message": base64.b64encode(raw).decode()}
        if args.host_ip:
            params["host_ip"] = args.host_ip
        result = request(sock, "plan", timeout=90, **params)
        _emit(args, result, _print_plan)
        refused = [r for r in result["resources"] if r["status"] not in ("SUCCESS", "PENDING")]
        return NOT_OK if refused else 0
    if args.command == "trace":
        result = trace.trace(args, request(sock, "trace_info"))
        _emit(args, result, lambda r: print(trace.render(r)))
        return 0
    what = args.what.replace("neighbors", "neighbours")
    result = request(sock, what)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif what == "flows":
        for row in result:
            print(f"cookie={row['cookie']} owner={row['owner'] or '-'} {row['flow']}")
    elif what == "sg":
        _print_sg(result)
    elif what == "dhcp":
        counters = result.get("counters", {})
        print(" ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v) or "no DHCP traffic yet")
        print(_table(result["leases"], COLUMNS[what]))
    else:
        print(_table(result, COLUMNS[what]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
