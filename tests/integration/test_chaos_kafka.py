"""Chaos over Kafka: 1,000 goal states (creates, updates and deletes of subnets, ports and
neighbours, revisions always rising) consumed from the real broker while the agent is SIGKILLed
10 times at moments drawn from a seeded generator, and restarted each time.

At the end: the consumer group's commit reaches the end of the topic, every goal state's effect
is in the agent's state (compared with the controller's model), every reply (redeliveries too)
carries the statuses the model predicts, and the flows in OVS equal those of a fresh agent fed
only the final state.
"""

from __future__ import annotations

import collections
import contextlib
import pathlib
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agent._pb import goalstate_pb2 as pb
from agent.sandbox import goalstates as g
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.kafka import KafkaBroker, running_broker
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox, statuses
from tests.support.fresh_agent import fresh_agent_flows
from tests.support.kafka_agent import agent_config, committed_offset
from tests.support.parts import require_ovs, require_tansu
from tests.support.traffic import dump_flows

pytestmark = pytest.mark.integration

require_ovs()
require_tansu()

SEED = 14
GOAL_STATES = 1000
KILLS = 10
HOST = "host1"
TOPIC, GROUP, REPLIES = f"host-{HOST}", f"aca-agent-{HOST}", f"host-{HOST}-replies"
VPC, VNI, VPC_CIDR = "vpc-chaos", 700, "10.70.0.0/16"
SUBNETS, PORTS, VMS, NEIGHBOURS = 4, 12, 4, 60  # ports 0..VMS-1 have a VM plugged on the host
AHEAD = 100  # goal states the producer may be ahead of the agent
REMOTE_HOSTS = ("172.31.0.201", "172.31.0.202", "172.31.0.203")  # never sent to: no peer exists

Expected = list[tuple[str, str, str, str]]  # (id, type, operation, status), sorted


def _vm_mac(n: int) -> str:
    return f"fa:16:3e:70:01:{n:02x}"


@dataclass
class Workload:
    """The controller: a seeded stream of goal states and the model of what it asked for."""

    host_ip: str
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    revision: int = 1
    subnets: dict[str, pb.SubnetState] = field(default_factory=dict)
    ports: dict[str, pb.PortState] = field(default_factory=dict)
    neighbours: dict[str, pb.NeighborState] = field(default_factory=dict)

    def _rev(self) -> int:
        self.revision += 1
        return self.revision

    def first(self) -> tuple[pb.GoalStateV2, Expected]:
        """The VPC and two subnets, so ports and neighbours have somewhere to live."""
        states: list = [g.vpc(VPC, VNI, VPC_CIDR, revision=1)]
        for n in range(2):
            states.append(self._subnet(f"sn-{n}", g.CREATE))
        return self._message(states)

    def next(self) -> tuple[pb.GoalStateV2, Expected]:
        states: list = []
        used: set[str] = set()
        for _ in range(self.rng.randint(1, 4)):
            kind = self.rng.choices(("neighbour", "port", "subnet"), (60, 25, 15))[0]
            if kind == "subnet":
                rid = f"sn-{self.rng.randrange(SUBNETS)}"
            elif kind == "port":
                rid = f"port-{self.rng.randrange(PORTS)}"
            else:
                rid = f"nb-{self.rng.randrange(NEIGHBOURS)}"
            if rid in used:
                continue
            state = self._change(kind, rid)
            if state is not None:
                used.add(rid)
                states.append(state)
        return self._message(states)

    def _change(self, kind: str, rid: str) -> object | None:
        held = {"subnet": self.subnets, "port": self.ports, "neighbour": self.neighbours}[kind]
        if rid not in held:
            op = g.CREATE
        elif self.rng.random() < 0.3 and not (kind == "subnet" and self._referenced(rid)):
            op = g.DELETE
        else:
            op = g.UPDATE
        if kind == "subnet":
            return self._subnet(rid, op)
        if not self.subnets:
            return None
        return self._port(rid, op) if kind == "port" else self._neighbour(rid, op)

    def _referenced(self, subnet_id: str) -> bool:
        things = [*self.ports.values(), *self.neighbours.values()]
        return any(s.configuration.fixed_ips[0].subnet_id == subnet_id for s in things)

    def _subnet(self, rid: str, op: int) -> pb.SubnetState:
        n = int(rid.split("-")[1])
        cidr = f"10.70.{n}.0/24"
        gateway_mac = f"fa:16:3e:70:00:{self.rng.randrange(256):02x}"
        dns = [f"10.70.{n}.{self.rng.randint(2, 9)}"]
        gateway_ip = f"10.70.{n}.1"
        state = g.subnet(rid, VPC, cidr, VNI, gateway_ip, gateway_mac, op=op, revision=self._rev(), dns=dns)
        return self._hold(self.subnets, rid, op, state)

    def _port(self, rid: str, op: int) -> pb.PortState:
        n = int(rid.split("-")[1])
        sn = int(self.rng.choice(sorted(self.subnets)).split("-")[1])
        pairs = [(f"10.70.{sn}.{50 + n}", "")] if self.rng.random() < 0.5 else []
        state = g.port(
            rid, VPC, f"sn-{sn}", f"10.70.{sn}.{10 + n}", _vm_mac(n), op=op, revision=self._rev(),
            admin_up=self.rng.random() < 0.8, pairs=pairs,
        )  # fmt: skip
        return self._hold(self.ports, rid, op, state)

    def _neighbour(self, rid: str, op: int) -> pb.NeighborState:
        n = int(rid.split("-")[1])
        sn = int(self.rng.choice(sorted(self.subnets)).split("-")[1])
        mac = f"fa:16:3e:7{self.rng.randrange(10)}:02:{n:02x}"
        ip = f"10.70.{sn}.{100 + n}"
        state = g.neighbor(
            rid, VPC, f"sn-{sn}", ip, mac, self.rng.choice(REMOTE_HOSTS), op=op, revision=self._rev()
        )
        return self._hold(self.neighbours, rid, op, state)

    @staticmethod
    def _hold(table: dict, rid: str, op: int, state: object) -> object:
        if op == g.DELETE:
            del table[rid]
        else:
            table[rid] = state
        return state

    def _message(self, states: list) -> tuple[pb.GoalStateV2, Expected]:
        expected = []
        for state in states:
            rtype = {
                pb.VpcState: "VPC",
                pb.SubnetState: "SUBNET",
                pb.PortState: "PORT",
                pb.NeighborState: "NEIGHBOR",
            }[type(state)]
            rid = state.configuration.id
            status = "SUCCESS"
            unplugged = rtype == "PORT" and int(rid.split("-")[1]) >= VMS
            if unplugged and state.operation_type != g.DELETE:
                status = "PENDING"  # no interface carries its iface-id on this host
            expected.append((rid, rtype, pb.OperationType.Name(state.operation_type), status))
        return g.goal_state_v2(*states, host_ip=self.host_ip), sorted(expected)

    def final(self) -> pb.GoalStateV2:
        """Everything the controller holds, as one goal state of creates at held revisions."""
        states: list = [g.vpc(VPC, VNI, VPC_CIDR, revision=1)]
        for table in (self.subnets, self.ports, self.neighbours):
            for held in table.values():
                state = type(held)()
                state.CopyFrom(held)
                state.operation_type = g.CREATE
                states.append(state)
        return g.goal_state_v2(*states, host_ip=self.host_ip)


@dataclass
class ChaosHost:
    sandbox: Sandbox
    host: HostInfo
    broker: KafkaBroker

    def committed(self) -> int:
        return committed_offset(self.broker, TOPIC, GROUP)

    def applied(self) -> int:
        """Goal states the agent applied so far, over all its lives (redeliveries included)."""
        return pathlib.Path(self.host.log_file).read_text().count("event=goal_state ")

    def replies(self) -> dict[int, list[Expected]]:
        """Every reply on the reply topic, by the offset of the goal state it answers."""

        def read() -> dict[int, list[Expected]]:
            reader = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": "chaos-replies"})
            try:
                partition = TopicPartition(REPLIES, 0)
                _low, high = reader.get_watermark_offsets(partition, timeout=5)
                reader.assign([TopicPartition(REPLIES, 0, OFFSET_BEGINNING)])
                out: dict[int, list[Expected]] = collections.defaultdict(list)
                position, deadline = -1, time.monotonic() + 30
                while position < high - 1 and time.monotonic() < deadline:
                    msg = reader.poll(0.2)
                    if msg is None or msg.error() is not None:
                        continue
                    position = msg.offset()
                    source = int(dict(msg.headers() or ())["alcor-source-offset"])
                    out[source].append(sorted(statuses(pb.GoalStateOperationReply.FromString(msg.value()))))
                assert position == high - 1, f"read replies up to {position}, topic ends at {high}"
                return out
            finally:
                reader.close()

        return self.broker.call(read)


@pytest.fixture
def chaos_host() -> Iterator[ChaosHost]:
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(scratch_sandbox())
        host = sandbox.host_up(HOST, agent=False)
        for n in range(VMS):
            sandbox.vm_add(HOST, f"c{n}", _vm_mac(n), f"10.70.9.{10 + n}/24", iface_id=f"port-{n}")
        broker = stack.enter_context(running_broker(netns=host.netns))
        stack.callback(sandbox.stop_agent, HOST)  # unwound first: leaves the group while the broker runs
        broker.create_topic(TOPIC)
        broker.create_topic(REPLIES)
        config = agent_config(host, broker, REPLIES, {"fetch.wait.max.ms": "20"})  # quick fetches
        host = sandbox.restart_agent(HOST, agent_args=["--config", str(config)])
        yield ChaosHost(sandbox, host, broker)


def _held(sb: Sandbox) -> dict[str, object]:
    """What the agent holds, in the terms the model can predict."""
    return {
        "counts": {k: v for k, v in sb.control(HOST, "status")["resources"].items() if v},
        "ports": {p["id"]: (p["mac"], p["ips"], p["admin_up"]) for p in sb.control(HOST, "ports")},
        "neighbours": {n["id"]: (n["mac"], n["host_ip"], n["ips"]) for n in sb.control(HOST, "neighbours")},
    }


def _modelled(work: Workload) -> dict[str, object]:
    counts = {
        "vpc": 1,
        "subnet": len(work.subnets),
        "port": len(work.ports),
        "neighbor": len(work.neighbours),
    }
    ports = {rid: s.configuration for rid, s in work.ports.items()}
    return {
        "counts": {k: v for k, v in counts.items() if v},
        "ports": {
            rid: (c.mac_address, [c.fixed_ips[0].ip_address], c.admin_state_up) for rid, c in ports.items()
        },
        "neighbours": {
            rid: (
                s.configuration.mac_address,
                s.configuration.host_ip_address,
                [s.configuration.fixed_ips[0].ip_address],
            )
            for rid, s in work.neighbours.items()
        },
    }


def test_sigkilled_ten_times_while_consuming_ends_as_a_fresh_agent(chaos_host: ChaosHost) -> None:
    sb = chaos_host.sandbox
    work = Workload(chaos_host.host.underlay_ip)
    stream = [work.first()] + [work.next() for _ in range(GOAL_STATES - 1)]
    produced: list[int] = []

    def produce() -> None:
        """The controller keeps at most ``AHEAD`` goal states ahead of the agent (also while it
        is down), so production and kills interleave over the whole run."""
        for n, (message, _expected) in enumerate(stream):
            wait_for(lambda n=n: chaos_host.applied() >= n - AHEAD, 60, f"the agent to near goal state {n}")
            produced.append(chaos_host.broker.produce(TOPIC, message.SerializeToString()))

    producer = threading.Thread(target=produce, name="chaos-producer")
    producer.start()
    try:
        # Kill points in goal states applied over all lives (the log line comes before the reply
        # and the commit); a point already passed kills the agent as soon as it is up again,
        # while it may still join the group or resync.
        for target in sorted(random.Random(SEED + 1).sample(range(GOAL_STATES - 100), KILLS)):
            wait_for(lambda t=target: chaos_host.applied() >= t, 60, f"{target} goal states applied")
            chaos_host.host = sb.restart_agent(HOST, sig=signal.SIGKILL)
    finally:
        producer.join(120)
    assert produced == list(range(GOAL_STATES))

    # No message lost: the group's commit reaches the end of the topic.
    wait_for(lambda: chaos_host.committed() == GOAL_STATES, 90, "the commit to reach the end of the topic")
    log = pathlib.Path(chaos_host.host.log_file).read_text()
    assert log.count("event=starting ") == KILLS + 1
    assert "event=goal_state_crashed" not in log and "event=fatal" not in log

    # Every goal state's effect is in the final state.
    assert _held(sb) == _modelled(work)

    # Answered statuses are true, and a redelivery answers what the first delivery did.
    replies = chaos_host.replies()
    assert sorted(replies) == list(range(GOAL_STATES)), "a goal state without a reply"
    wrong = {
        offset: (replies[offset], expected)
        for offset, (_msg, expected) in enumerate(stream)
        if any(answer != expected for answer in replies[offset])
    }
    assert not wrong, f"{len(wrong)} replies differ from the model, first: {next(iter(wrong.items()))}"

    # The flows equal those of an agent that only ever saw the final state.
    survived = dump_flows(sb, HOST)
    reply, fresh = fresh_agent_flows(sb, HOST, work.final())
    assert {s.operation_status for s in reply.operation_statuses} <= {pb.SUCCESS, pb.PENDING}
    assert len(fresh) > 2 * len(work.neighbours)
    missing, extra = sorted(set(fresh) - set(survived)), sorted(set(survived) - set(fresh))
    assert survived == fresh, f"missing {len(missing)}: {missing[:5]}, extra {len(extra)}: {extra[:5]}"
