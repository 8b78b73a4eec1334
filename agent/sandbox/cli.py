"""``aca-sandbox``: simulated compute hosts and VMs in network namespaces (see hosts.py)."""

from __future__ import annotations

import argparse
import json
import sys

from agent.sandbox.hosts import DEFAULT_DIR, DEFAULT_SUBNET, Sandbox, SandboxError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aca-sandbox", description=__doc__)
    p.add_argument("--dir", default=str(DEFAULT_DIR), help="state directory (default %(default)s)")
    p.add_argument("--prefix", default="aca-", help="namespace name prefix (default %(default)s)")
    p.add_argument("--subnet", default=DEFAULT_SUBNET, help="underlay subnet of a new sandbox")
    sub = p.add_subparsers(dest="cmd", required=True)

    host = sub.add_parser("host", help="simulated compute hosts").add_subparsers(dest="action", required=True)
    up = host.add_parser("up", help="create a host (namespace, OVS, br-phy, underlay link, agent)")
    up.add_argument("name")
    up.add_argument("--no-agent", action="store_true", help="do not start aca-agent")
    up.add_argument("--agent-arg", action="append", default=[], help="extra aca-agent argument (repeatable)")
    host.add_parser("down", help="remove a host and its VMs").add_argument("name")

    vm = sub.add_parser("vm", help="VMs plugged into a host's br-int").add_subparsers(
        dest="action", required=True
    )
    add = vm.add_parser("add", help="create a VM namespace and plug it like Nova")
    add.add_argument("host")
    add.add_argument("vm")
    add.add_argument("--mac", required=True)
    add.add_argument("--ip", required=True, help="address/prefix, e.g. 10.0.0.5/24")
    add.add_argument("--gw", help="default gateway")
    add.add_argument("--iface-id", help="Neutron/Alcor port id (default: random UUID)")
    add.add_argument("--nova-name", action="store_true", help="name the host end tap<first 11 of port id>")
    vm.add_parser("del", help="remove a VM").add_argument("vm")

    push = sub.add_parser("push", help="send a goal state file to a host's agent over gRPC")
    push.add_argument("host")
    push.add_argument("file", help="protobuf JSON or binary")
    push.add_argument("--v1", action="store_true", help="GoalState v1 (PushNetworkResourceStates)")
    push.add_argument("--timeout", type=float, default=30.0)

    ping = sub.add_parser("ping", help="ping from inside a VM")
    ping.add_argument("vm")
    ping.add_argument("ip")
    ping.add_argument("-c", "--count", type=int, default=3)

    ex = sub.add_parser("exec", help="run a command in a host namespace (OVS_RUNDIR set)")
    ex.add_argument("host")
    ex.add_argument("command", nargs=argparse.REMAINDER)

    sub.add_parser("list", help="print the sandbox metadata as JSON")
    sub.add_parser("down", help="tear down everything and remove the state directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sb = Sandbox(args.dir, prefix=args.prefix, subnet=args.subnet)
    try:
        return _dispatch(sb, args)
    except (SandboxError, RuntimeError, OSError) as e:
        print(f"aca-sandbox: {e}", file=sys.stderr)
        return 1


def _dispatch(sb: Sandbox, args: argparse.Namespace) -> int:
    if args.cmd == "host" and args.action == "up":
        h = sb.host_up(args.name, agent=not args.no_agent, agent_args=args.agent_arg)
        print(
            f"{h.name}: netns {h.netns}, underlay {h.underlay_ip}, grpc {h.grpc} (mutual TLS, CA {sb.pki.ca})"
        )
    elif args.cmd == "host":
        sb.host_down(args.name)
    elif args.cmd == "vm" and args.action == "add":
        v = sb.vm_add(args.host, args.vm, args.mac, args.ip, args.gw, args.iface_id, args.nova_name)
        print(f"{v.name}: netns {v.netns}, port {v.port} on {v.host}/br-int, iface-id {v.iface_id}")
    elif args.cmd == "vm":
        sb.vm_del(args.vm)
    elif args.cmd == "push":
        for reply in sb.push(args.host, args.file, v1=args.v1, timeout=args.timeout):
            print(json.dumps(reply, indent=2))
    elif args.cmd == "ping":
        proc = sb.ping(args.vm, args.ip, args.count)
        print(proc.stdout, end="")
        print(proc.stderr, end="", file=sys.stderr)
        return proc.returncode
    elif args.cmd == "exec":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise SandboxError("exec: no command given")
        return sb.exec(args.host, command, check=False, capture=False).returncode
    elif args.cmd == "list":
        print(json.dumps(sb.state(), indent=2, sort_keys=True))
    elif args.cmd == "down":
        sb.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
