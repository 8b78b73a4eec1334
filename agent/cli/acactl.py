"""acactl: show what the running agent holds and programmed (read-only)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

DEFAULT_SOCKET = "/run/aca-agent/acactl.sock"


def request(path: str, what: str, timeout: float = 30.0) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"what": what}).encode() + b"\n")
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
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="acactl", description="Inspect a running aca-agent (read-only)")
    p.add_argument(
        "--socket", default=DEFAULT_SOCKET, help=f"agent control socket (default {DEFAULT_SOCKET})"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="agent, OVS connection and resource counts")
    sub.add_parser("check", help="compare the switch's flows with what the agent installed (exit 3 on drift)")
    dump = sub.add_parser(
        "dump", help="ports, neighbours, flows with their state, DHCP leases, or security groups per port"
    )
    dump.add_argument("what", choices=["ports", "neighbours", "neighbors", "flows", "dhcp", "sg"])
    args = p.parse_args(argv)
    what = args.what.replace("neighbors", "neighbours") if args.command == "dump" else args.command
    try:
        result = request(args.socket, what)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"acactl: {exc}", file=sys.stderr)
        return 1
    if args.json or what == "status":
        print(json.dumps(result, indent=2, sort_keys=True))
    elif what == "check":
        counts = " ".join(f"{k}={v}" for k, v in result["counts"].items())
        print(f"{'ok' if result['ok'] else 'DRIFT'}: {result['checked']} flows checked, {counts}")
        for kind in ("missing", "differ", "extra"):
            for row in result[kind]:
                print(f"{kind} cookie={row['cookie']} owner={row['owner'] or '-'} {row['flow']}")
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
    return 3 if what == "check" and not result["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
