"""The README's first command: two simulated hosts, one VPC with two subnets on one router and
VMs on both hosts, goal states pushed over gRPC like the controller does, then pings (bridged and
routed, on one host and across VXLAN) and what was programmed."""

from __future__ import annotations

import argparse
import subprocess
import sys

from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox

VPC, VNI, ROUTER = "vpc-demo", 1000, "router-demo"
# subnet → (CIDR, VNI, gateway IP, gateway MAC)
SUBNETS = {
    "subnet-1": ("10.0.1.0/24", VNI, "10.0.1.1", "fa:16:3e:aa:00:01"),
    "subnet-2": ("10.0.2.0/24", VNI + 1, "10.0.2.1", "fa:16:3e:aa:00:02"),
}
DVR_MACS = {"host1": "fe:16:11:00:00:01", "host2": "fe:16:11:00:00:02"}
# vm name → (host, subnet, port id, MAC, IP)
VMS = {
    "vm1": ("host1", "subnet-1", "port-vm1", "fa:16:3e:00:01:01", "10.0.1.11"),
    "vm2": ("host1", "subnet-1", "port-vm2", "fa:16:3e:00:01:02", "10.0.1.12"),
    "vm3": ("host2", "subnet-1", "port-vm3", "fa:16:3e:00:01:03", "10.0.1.13"),
    "vm4": ("host2", "subnet-2", "port-vm4", "fa:16:3e:00:02:04", "10.0.2.14"),
}
PINGS = (  # (from, to, what it shows)
    ("vm1", "vm2", "same subnet, same host"),
    ("vm1", "vm3", "same subnet, across VXLAN"),
    ("vm1", "vm4", "routed subnet 1 -> 2, across VXLAN (DVR)"),
    ("vm4", "vm2", "routed subnet 2 -> 1, across VXLAN (DVR)"),
    ("vm3", "10.0.1.1", "the gateway, answered by OVS flows on host2"),
)


def goal_state_for(host: str, host_ips: dict[str, str]) -> object:
    """What the controller sends one host: its ports, the others as neighbours (L3 for the other
    subnet), the VPC, the subnets and the router with this host's DVR MAC."""
    states: list = [gs.vpc(VPC, VNI, "10.0.0.0/16")]
    states += [
        gs.subnet(sid, VPC, cidr, vni, gw_ip, gw_mac) for sid, (cidr, vni, gw_ip, gw_mac) in SUBNETS.items()
    ]
    states.append(gs.router(ROUTER, DVR_MACS[host], list(SUBNETS)))
    for vm_host, subnet, port_id, mac, ip in VMS.values():
        if vm_host == host:
            states.append(gs.port(port_id, VPC, subnet, ip, mac, host_ip=host_ips[host]))
        else:
            states.append(gs.neighbor(port_id, VPC, subnet, ip, mac, host_ips[vm_host], kind=gs.pb.L3))
    return gs.goal_state_v2(*states, host_ip=host_ips[host])


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(sandbox: Sandbox) -> bool:
    _say("simulated hosts: a namespace each with ovsdb-server, ovs-vswitchd (netdev) and aca-agent")
    print(f"  gRPC: mutual TLS, certificates from a throwaway CA ({sandbox.pki.ca})")
    host_ips = {name: sandbox.host_up(name).underlay_ip for name in ("host1", "host2")}
    for name, ip in host_ips.items():
        print(f"  {name}: underlay {ip}")
    _say("VMs plugged into br-int the way Nova does (external_ids:iface-id)")
    for vm, (host, subnet, port_id, mac, ip) in VMS.items():
        sandbox.vm_add(host, vm, mac, f"{ip}/24", gw=SUBNETS[subnet][2], iface_id=port_id)
        print(f"  {vm} on {host}: {ip} ({subnet}) {mac} port {port_id}")
    _say("goal states pushed over gRPC (PushGoalStatesStream) with mutual TLS, one per host")
    for host in host_ips:
        for reply in sandbox.push_message(host, goal_state_for(host, host_ips)):
            for s in reply.operation_statuses:
                print(
                    f"  {host}: {s.resource_id:<12} {gs.pb.ResourceType.Name(s.resource_type):<9}"
                    f" {gs.pb.OperationStatus.Name(s.operation_status):<8} {s.state_elapse_time} us"
                )
            print(f"  {host}: message total {reply.message_total_operation_time} us")
    _say("traffic: ping (one warm-up packet first: ovs-vswitchd resolves the remote host's underlay MAC)")
    ok = True
    for src, dst, what in PINGS:
        ip = VMS[dst][4] if dst in VMS else dst
        sandbox.ping(src, ip, count=1)
        result = sandbox.ping(src, ip, count=3)
        summary = next(
            (line for line in result.stdout.splitlines() if "packet loss" in line), result.stderr.strip()
        )
        print(f"  {src} -> {dst} ({ip}), {what}: {summary}")
        ok &= result.returncode == 0 and " 0% packet loss" in summary
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
