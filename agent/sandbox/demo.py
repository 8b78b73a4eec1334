"""The README's first command: two simulated hosts, one VPC with two VMs on each, goal states
pushed over gRPC like the controller does, then pings across hosts and what was programmed."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox

VPC, SUBNET, VNI, CIDR, GATEWAY = "vpc-demo", "subnet-demo", 1000, "10.0.1.0/24", "10.0.1.1"
# vm name → (host, port id, MAC, IP)
VMS = {
    "vm1": ("host1", "port-vm1", "fa:16:3e:00:01:01", "10.0.1.11"),
    "vm2": ("host1", "port-vm2", "fa:16:3e:00:01:02", "10.0.1.12"),
    "vm3": ("host2", "port-vm3", "fa:16:3e:00:01:03", "10.0.1.13"),
    "vm4": ("host2", "port-vm4", "fa:16:3e:00:01:04", "10.0.1.14"),
}


def goal_state_for(host: str, host_ips: dict[str, str]) -> object:
    """What the controller sends one host: its ports, the others as neighbours, VPC and subnet."""
    states: list = [gs.vpc(VPC, VNI, "10.0.0.0/16"), gs.subnet(SUBNET, VPC, CIDR, VNI, GATEWAY)]
    for vm_host, port_id, mac, ip in VMS.values():
        if vm_host == host:
            states.append(gs.port(port_id, VPC, SUBNET, ip, mac, host_ip=host_ips[host]))
        else:
            states.append(gs.neighbor(port_id, VPC, SUBNET, ip, mac, host_ips[vm_host]))
    return gs.goal_state_v2(*states, host_ip=host_ips[host])


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(sandbox: Sandbox) -> bool:
    _say("simulated hosts: a namespace each with ovsdb-server, ovs-vswitchd (netdev) and aca-agent")
    host_ips = {name: sandbox.host_up(name).underlay_ip for name in ("host1", "host2")}
    for name, ip in host_ips.items():
        print(f"  {name}: underlay {ip}")
    _say("VMs plugged into br-int the way Nova does (external_ids:iface-id)")
    for vm, (host, port_id, mac, ip) in VMS.items():
        sandbox.vm_add(host, vm, mac, f"{ip}/24", iface_id=port_id)
        print(f"  {vm} on {host}: {ip} {mac} port {port_id}")
    _say("goal states pushed over gRPC (PushGoalStatesStream), one per host")
    for host in host_ips:
        for reply in sandbox.push_message(host, goal_state_for(host, host_ips)):
            for s in reply.operation_statuses:
                print(
                    f"  {host}: {s.resource_id:<12} {gs.pb.ResourceType.Name(s.resource_type):<9}"
                    f" {gs.pb.OperationStatus.Name(s.operation_status):<8} {s.state_elapse_time} us"
                )
            print(f"  {host}: message total {reply.message_total_operation_time} us")
    time.sleep(0.5)
    _say("traffic: ping between VMs (same host and across the VXLAN overlay)")
    ok = True
    for src, dst in (("vm1", "vm2"), ("vm1", "vm3"), ("vm4", "vm2"), ("vm3", "vm4")):
        result = sandbox.ping(src, VMS[dst][3], count=3)
        summary = next(
            (line for line in result.stdout.splitlines() if "packet loss" in line), result.stderr.strip()
        )
        print(f"  {src} -> {dst} ({VMS[dst][3]}): {summary}")
        ok &= result.returncode == 0
    host1 = sandbox.host("host1")
    for what in ("ports", "neighbours", "flows"):
        _say(f"acactl dump {what} on host1")
        out = subprocess.run(
            [sys.executable, "-m", "agent.cli.acactl", "--socket", host1.control_socket, "dump", what],
            capture_output=True,
            text=True,
        )
        print(out.stdout or out.stderr)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aca-demo", description=__doc__)
    p.add_argument("--dir", default="/run/aca-demo", help="sandbox state directory")
    p.add_argument(
        "--keep", action="store_true", help="leave the sandbox up (tear down with aca-sandbox down)"
    )
    args = p.parse_args(argv)
    sandbox = Sandbox(args.dir, prefix="aca-demo-")
    sandbox.down()
    try:
        ok = run(sandbox)
    finally:
        if not args.keep:
            sandbox.down()
    print("\nDEMO OK: every ping answered" if ok else "\nDEMO FAILED: some pings were lost")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
