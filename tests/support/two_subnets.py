"""The routing tests' topology: one VPC, two subnets on one router, a DVR MAC per host."""

from __future__ import annotations

from agent.sandbox import goalstates as gs

DVR = {"host1": "fe:16:11:00:00:01", "host2": "fe:16:11:00:00:02"}
GW1, GW2 = ("10.1.1.1", "fa:16:3e:aa:00:01"), ("10.1.2.1", "fa:16:3e:aa:00:02")
SUBNETS = (
    gs.subnet("s1", "v1", "10.1.1.0/24", 101, *GW1, op=gs.CREATE),
    gs.subnet("s2", "v1", "10.1.2.0/24", 102, *GW2, op=gs.CREATE),
)
