"""Goal-state builders playing the controller: used by the demo, the sandbox, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable

from agent._pb import goalstate_pb2 as pb

CREATE, UPDATE, DELETE, INFO = pb.CREATE, pb.UPDATE, pb.DELETE, pb.INFO


def vpc(vpc_id: str, vni: int, cidr: str = "10.0.0.0/16", op: int = CREATE, revision: int = 1) -> pb.VpcState:
    return pb.VpcState(
        operation_type=op,
        configuration=pb.VpcConfiguration(
            revision_number=revision, id=vpc_id, tunnel_id=vni, cidr=cidr, name=vpc_id, update_type=pb.FULL
        ),
    )


def subnet(
    subnet_id: str,
    vpc_id: str,
    cidr: str,
    vni: int,
    gateway_ip: str = "",
    gateway_mac: str = "",
    op: int = INFO,
    revision: int = 1,
    dns: Iterable[str] = (),
) -> pb.SubnetState:
    config = pb.SubnetConfiguration(
        revision_number=revision,
        id=subnet_id,
        vpc_id=vpc_id,
        cidr=cidr,
        tunnel_id=vni,
        name=subnet_id,
        update_type=pb.FULL,
        dhcp_enable=True,
    )
    config.gateway.ip_address = gateway_ip
    config.gateway.mac_address = gateway_mac
    for entry in dns:
        config.dns_entry_list.add(entry=entry)
    return pb.SubnetState(operation_type=op, configuration=config)


def port(
    port_id: str,
    vpc_id: str,
    subnet_id: str,
    ip: str,
    mac: str,
    host_ip: str = "",
    op: int = CREATE,
    revision: int = 1,
    admin_up: bool = True,
    pairs: Iterable[tuple[str, str]] = (),
    groups: Iterable[str] = (),
) -> pb.PortState:
    config = pb.PortConfiguration(
        revision_number=revision,
        id=port_id,
        vpc_id=vpc_id,
        mac_address=mac,
        admin_state_up=admin_up,
        name=port_id,
        update_type=pb.FULL,
    )
    config.host_info.ip_address = host_ip
    config.fixed_ips.add(subnet_id=subnet_id, ip_address=ip)
    for pair_ip, pair_mac in pairs:
        config.allow_address_pairs.add(ip_address=pair_ip, mac_address=pair_mac)
    for group_id in groups:
        config.security_group_ids.add(id=group_id)
    return pb.PortState(operation_type=op, configuration=config)


def neighbor(
    port_id: str,
    vpc_id: str,
    subnet_id: str,
    ip: str,
    mac: str,
    host_ip: str,
    kind: int = pb.L2,
    op: int = CREATE,
    revision: int = 1,
    groups: Iterable[str] = (),
) -> pb.NeighborState:
    config = pb.NeighborConfiguration(
        revision_number=revision,
        id=port_id,
        vpc_id=vpc_id,
        mac_address=mac,
        host_ip_address=host_ip,
        name=port_id,
        update_type=pb.FULL,
    )
    config.fixed_ips.add(neighbor_type=kind, subnet_id=subnet_id, ip_address=ip)
    config.security_group_ids.extend(groups)  # the aca extension field (upstream sends none)
    return pb.NeighborState(operation_type=op, configuration=config)


def dhcp(
    entry_id: str, subnet_id: str, mac: str, ip: str, hostname: str = "", op: int = CREATE, revision: int = 1
) -> pb.DHCPState:
    return pb.DHCPState(
        operation_type=op,
        configuration=pb.DHCPConfiguration(
            revision_number=revision,
            id=entry_id,
            subnet_id=subnet_id,
            mac_address=mac,
            ipv4_address=ip,
            port_host_name=hostname,
        ),
    )


def router(
    router_id: str,
    dvr_mac: str,
    subnet_ids: Iterable[str],
    routes: Iterable[tuple[str, str, str, int]] = (),
    op: int = CREATE,
    revision: int = 1,
) -> pb.RouterState:
    """A router over ``subnet_ids``; ``routes`` are (subnet id, destination CIDR, next hop, priority)."""
    config = pb.RouterConfiguration(
        revision_number=revision, id=router_id, host_dvr_mac_address=dvr_mac, update_type=pb.FULL
    )
    tables = {sid: config.subnet_routing_tables.add(subnet_id=sid) for sid in subnet_ids}
    for n, (sid, destination, next_hop, priority) in enumerate(routes):
        tables[sid].routing_rules.add(
            operation_type=CREATE, id=f"{router_id}-rule-{n}", destination=destination,
            next_hop_ip=next_hop, priority=priority,
        )  # fmt: skip
    return pb.RouterState(operation_type=op, configuration=config)


EGRESS, INGRESS = pb.SecurityGroupConfiguration.EGRESS, pb.SecurityGroupConfiguration.INGRESS
TCP, UDP, ICMP = pb.TCP, pb.UDP, pb.ICMP


def sg_rule(
    rule_id: str,
    direction: int,
    protocol: int = TCP,
    ports: tuple[int, int] = (0, 0),
    remote_ip_prefix: str = "",
    remote_group_id: str = "",
    ethertype: int = pb.IPV4,
) -> pb.SecurityGroupConfiguration.SecurityGroupRule:
    """A rule as upstream sends it (no protocol: TCP with ports 0/0; operation_type left INFO)."""
    return pb.SecurityGroupConfiguration.SecurityGroupRule(
        id=rule_id,
        direction=direction,
        ethertype=ethertype,
        protocol=protocol,
        port_range_min=ports[0],
        port_range_max=ports[1],
        remote_ip_prefix=remote_ip_prefix,
        remote_group_id=remote_group_id,
    )


def security_group(
    group_id: str,
    rules: Iterable[pb.SecurityGroupConfiguration.SecurityGroupRule] = (),
    op: int = CREATE,
    revision: int = 1,
    stateless: bool = False,
    member_ips: Iterable[str] = (),
) -> pb.SecurityGroupState:
    """``stateless`` and ``member_ips`` are aca extension fields (100, 101); upstream never sets them."""
    config = pb.SecurityGroupConfiguration(
        revision_number=revision, id=group_id, name=group_id, stateless=stateless, member_ips=list(member_ips)
    )
    for rule in rules:
        config.security_group_rules.add().CopyFrom(rule)
        config.security_group_rules[-1].security_group_id = group_id
    return pb.SecurityGroupState(operation_type=op, configuration=config)


def goal_state_v2(
    *states: pb.VpcState
    | pb.SubnetState
    | pb.PortState
    | pb.NeighborState
    | pb.DHCPState
    | pb.RouterState
    | pb.SecurityGroupState,
    host_ip: str = "",
) -> pb.GoalStateV2:
    """A GoalStateV2 holding ``states``; with ``host_ip`` the acted-on ones are listed for that host."""
    msg = pb.GoalStateV2(format_version=1)
    targets = {
        pb.VpcState: (msg.vpc_states, pb.VPC),
        pb.SubnetState: (msg.subnet_states, pb.SUBNET),
        pb.PortState: (msg.port_states, pb.PORT),
        pb.NeighborState: (msg.neighbor_states, pb.NEIGHBOR),
        pb.DHCPState: (msg.dhcp_states, pb.DHCP),
        pb.RouterState: (msg.router_states, pb.ROUTER),
        pb.SecurityGroupState: (msg.security_group_states, pb.SECURITYGROUP),
    }
    for state in states:
        table, rtype = targets[type(state)]
        key = state.configuration.id
        if isinstance(state, pb.NeighborState):
            kind = state.configuration.fixed_ips[0].neighbor_type if state.configuration.fixed_ips else pb.L2
            key = f"{'L3' if kind == pb.L3 else 'L2'}/{key}"
        table[key].CopyFrom(state)
        if host_ip and state.operation_type not in (pb.INFO, pb.GET):
            msg.host_resources[host_ip].resources.add(type=rtype, id=key)
    return msg


def goal_state_v1(
    *states: pb.VpcState | pb.SubnetState | pb.PortState | pb.NeighborState | pb.DHCPState | pb.RouterState,
) -> pb.GoalState:
    msg = pb.GoalState(format_version=1)
    targets = {
        pb.VpcState: msg.vpc_states,
        pb.SubnetState: msg.subnet_states,
        pb.PortState: msg.port_states,
        pb.NeighborState: msg.neighbor_states,
        pb.DHCPState: msg.dhcp_states,
        pb.RouterState: msg.router_states,
    }
    for state in states:
        targets[type(state)].add().CopyFrom(state)
    return msg
