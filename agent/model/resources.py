"""Typed desired-state resources as the controller describes them.

Enum values equal the wire enums so decode and reply stay trivial, but nothing here imports
protobuf: the planner and the store read these plain objects only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ResourceType(enum.IntEnum):
    VPC = 0
    SUBNET = 1
    PORT = 2
    NEIGHBOR = 3
    SECURITYGROUP = 4
    DHCP = 5
    ROUTER = 6
    GATEWAY = 7


class Op(enum.IntEnum):
    INFO = 0
    CREATE = 1
    UPDATE = 2
    GET = 3
    DELETE = 4


class Status(enum.IntEnum):
    SUCCESS = 0
    FAILURE = 1
    INVALID_ARG = 2
    PENDING = 3
    OUT_OF_ORDER = 4


class UpdateType(enum.IntEnum):
    DELTA = 0
    FULL = 1


class NeighborType(enum.IntEnum):
    L2 = 0
    L3 = 1


@dataclass(frozen=True, slots=True)
class Vpc:
    id: str
    revision: int
    project_id: str = ""
    name: str = ""
    cidr: str = ""
    tunnel_id: int = 0
    gateway_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyValue:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Subnet:
    id: str
    revision: int
    vpc_id: str
    cidr: str
    tunnel_id: int
    name: str = ""
    network_type: int = 0
    gateway_ip: str = ""
    gateway_mac: str = ""
    dhcp_enable: bool = False
    dns: tuple[str, ...] = ()
    extra_dhcp_options: tuple[KeyValue, ...] = ()
    availability_zone: str = ""


@dataclass(frozen=True, slots=True)
class FixedIp:
    subnet_id: str
    ip: str


@dataclass(frozen=True, slots=True)
class AddressPair:
    ip: str  # an address or a CIDR
    mac: str = ""


@dataclass(frozen=True, slots=True)
class Port:
    id: str
    revision: int
    mac: str
    vpc_id: str = ""
    name: str = ""
    device_id: str = ""
    device_owner: str = ""
    admin_up: bool = True
    host_ip: str = ""
    host_mac: str = ""
    fixed_ips: tuple[FixedIp, ...] = ()
    address_pairs: tuple[AddressPair, ...] = ()
    security_group_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NeighborIp:
    kind: NeighborType
    subnet_id: str
    ip: str
    tunnel_id: int = 0


@dataclass(frozen=True, slots=True)
class Neighbor:
    id: str
    revision: int
    mac: str
    host_ip: str
    vpc_id: str = ""
    name: str = ""
    host_mac: str = ""
    fixed_ips: tuple[NeighborIp, ...] = ()
    address_pairs: tuple[AddressPair, ...] = ()
    security_group_ids: tuple[str, ...] = ()  # an aca extension field (100); upstream sends none


@dataclass(frozen=True, slots=True)
class SecurityGroupRule:
    id: str
    direction: int  # 0 egress, 1 ingress
    ethertype: int  # 0 IPv4, 1 IPv6
    protocol: int
    port_range_min: int = 0
    port_range_max: int = 0
    remote_ip_prefix: str = ""
    remote_group_id: str = ""


@dataclass(frozen=True, slots=True)
class SecurityGroup:
    id: str
    revision: int
    vpc_id: str = ""
    name: str = ""
    rules: tuple[SecurityGroupRule, ...] = ()
    stateless: bool = False  # an aca extension field (100): no conntrack for its rules
    member_ips: tuple[str, ...] = ()  # an aca extension field (101): members named by address


@dataclass(frozen=True, slots=True)
class Dhcp:
    id: str
    revision: int
    subnet_id: str
    mac: str
    ipv4: str = ""
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class RoutingRule:
    id: str
    destination: str
    next_hop_ip: str = ""
    priority: int = 0
    name: str = ""
    destination_type: int = 0
    next_hop_mac: str = ""


@dataclass(frozen=True, slots=True)
class SubnetRoutes:
    subnet_id: str
    rules: tuple[RoutingRule, ...] = ()
    removed_rule_ids: tuple[str, ...] = ()  # rules a DELTA update deletes; empty once applied


@dataclass(frozen=True, slots=True)
class Router:
    id: str
    revision: int
    dvr_mac: str = ""
    subnets: tuple[SubnetRoutes, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayDestination:
    ip: str
    mac: str


@dataclass(frozen=True, slots=True)
class Gateway:
    id: str
    revision: int
    gateway_type: int = 0
    destinations: tuple[GatewayDestination, ...] = ()
    vpc_id: str = ""
    vni: int = 0
    subnet_id: str = ""


Resource = Vpc | Subnet | Port | Neighbor | SecurityGroup | Dhcp | Router | Gateway

RESOURCE_CLASSES: dict[ResourceType, type] = {
    ResourceType.VPC: Vpc,
    ResourceType.SUBNET: Subnet,
    ResourceType.PORT: Port,
    ResourceType.NEIGHBOR: Neighbor,
    ResourceType.SECURITYGROUP: SecurityGroup,
    ResourceType.DHCP: Dhcp,
    ResourceType.ROUTER: Router,
    ResourceType.GATEWAY: Gateway,
}

# Creates and updates are applied in this order so references inside one message resolve
# (a port's subnet arrives in the same message); deletes run in the reverse order.
APPLY_ORDER: tuple[ResourceType, ...] = (
    ResourceType.VPC,
    ResourceType.SUBNET,
    ResourceType.SECURITYGROUP,
    ResourceType.PORT,
    ResourceType.NEIGHBOR,
    ResourceType.DHCP,
    ResourceType.ROUTER,
    ResourceType.GATEWAY,
)


@dataclass(frozen=True, slots=True)
class Request:
    """One resource of a goal state, decoded: what to do with which object (or why it is invalid)."""

    type: ResourceType
    op: Op
    id: str
    update_type: UpdateType = UpdateType.FULL
    resource: Resource | None = None
    error: str = ""
    acted_on: bool = True  # False: context only (INFO/GET, or listed for another host)
    revision: int = 0  # a DELETE's revision_number (others carry theirs in ``resource``)
    partial: str = ""  # applied, but this part of it is not enforced: answered INVALID_ARG with it
