"""Shared Kafka topics (issue 17): hosts subscribed to a VPC topic by ``PushNodeSubscribeInfo``
over gRPC, each acting only on its own ``host_resources`` entry of the one record published.

Three simulated hosts with agents, a VM on each, and a real broker (tansu) on the sandbox
underlay that every host reaches. One sandbox serves the module; every test brings its own
topics and resource ids.
"""

from __future__ import annotations

import collections
import contextlib
import pathlib
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.planner.cookies import Kind, cookie
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.kafka import KafkaBroker, running_broker
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.kafka_agent import agent_config, committed_offset
from tests.support.parts import require_ovs, require_tansu
from tests.support.traffic import assert_flow_table_clean, assert_reaches, dump_cookies, dump_flows

pytestmark = pytest.mark.integration

require_ovs()
require_tansu()

HOSTS = ("host1", "host2", "host3")
BROKER_IP = "172.31.0.1"  # on the underlay bridge (hosts are .11 and up): every host reaches it
VPC, VNI, SUBNET, CIDR = "vpc-sh", 810, "sn-sh", "10.81.0.0/16"  # VMs in 10.81.0.0/24
# Quick group joins, and no half-second floor per fetch (tansu answers a fetch only at its end).
OPTIONS = {"fetch.wait.max.ms": "10"}


def vm_ip(n: int) -> str:
    return f"10.81.0.{10 + n}"


def vm_mac(n: int) -> str:
    return f"fa:16:3e:81:00:{n:02x}"


@dataclass
class Shared:
    box: Sandbox
    broker: KafkaBroker
    ips: dict[str, str]  # host → underlay IP

    def push_subscribe(self, host: str, topic: str, key: str = "", op: int = pb.Subscribe) -> str:
        """PushNodeSubscribeInfo over gRPC, as the controller calls it; the status's name."""
        sock = pathlib.Path(self.box.host(host).dir) / "subscribe.sock"
        with self.box.channel(host, target=f"unix:{sock}") as channel:
            stub = pb_grpc.SubscribeInfoProvisionerStub(channel)
            request = pb.NodeSubscribeInfo(subscribe_operation=op, topic=topic, key=key)
            reply = stub.PushNodeSubscribeInfo(request, timeout=60)
        return pb.OperationStatus.Name(reply.operation_status)

    def publish(self, topic: str, msg: pb.GoalStateV2, key: bytes | None = None) -> int:
        return self.broker.produce(topic, msg.SerializeToString(), key=key)

    def committed(self, host: str, topic: str) -> int:
        return committed_offset(self.broker, topic, f"aca-agent-{host}")

    def wait_committed(self, host: str, topic: str, offset: int) -> None:
        wait_for(
            lambda: self.committed(host, topic) > offset, 30, f"{host} to commit {topic} past offset {offset}"
        )

    def replies(self, host: str) -> list[tuple[str, int, pb.GoalStateOperationReply]]:
        """Every reply on the host's reply topic: (source topic, source offset, reply)."""

        def read() -> list[tuple[str, int, pb.GoalStateOperationReply]]:
            reader = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": "test-reply-reader"})
            out = []
            try:
                topic_partition = TopicPartition(f"host-{host}-replies", 0)
                _low, high = reader.get_watermark_offsets(topic_partition, timeout=5)
                reader.assign([TopicPartition(topic_partition.topic, 0, OFFSET_BEGINNING)])
                deadline = time.monotonic() + 20
                while len(out) < high and time.monotonic() < deadline:
                    msg = reader.poll(0.2)
                    if msg is None or msg.error() is not None:
                        continue
                    headers = {k: v.decode() for k, v in msg.headers() or () if v is not None}
                    reply = pb.GoalStateOperationReply.FromString(msg.value())
                    out.append((headers["alcor-source-topic"], int(headers["alcor-source-offset"]), reply))
                return out
            finally:
                reader.close()

        return self.broker.call(read)

    def reply_for(self, host: str, topic: str, offset: int) -> pb.GoalStateOperationReply:
        found: list[pb.GoalStateOperationReply] = []

        def arrived() -> bool:
            found[:] = [r for t, o, r in self.replies(host) if (t, o) == (topic, offset)]
            return bool(found)

        wait_for(arrived, 30, f"{host}'s reply to {topic}@{offset}")
        return found[0]

    def neighbours(self, host: str) -> dict[str, dict[str, object]]:
        return {n["id"]: n for n in self.box.control(host, "neighbours")}

    def status(self, host: str) -> dict[str, object]:
        return self.box.control(host, "status")

    def topics(self, host: str) -> dict[str, dict[str, object]]:
        return {t["topic"]: t for t in self.status(host)["kafka_topics"]}  # type: ignore[union-attr]

    def create_topics(self, *topics: str) -> None:
        for topic in topics:
            self.broker.create_topic(topic)


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    with contextlib.ExitStack() as stack:
        box = stack.enter_context(scratch_sandbox())
        box.underlay_up()
        subprocess.run(
            ["ip", "-n", box.underlay_netns, "addr", "add", f"{BROKER_IP}/24", "dev", "ul0"], check=True
        )
        broker = stack.enter_context(running_broker(netns=box.underlay_netns, host=BROKER_IP))
        ips = {}
        for n, name in enumerate(HOSTS, 1):
            host = box.host_up(name, agent=False)
            stack.callback(box.stop_agent, name)  # unwound first: agents leave while the broker is up
            ips[name] = host.underlay_ip
            broker.create_topic(f"host-{name}")
            broker.create_topic(f"host-{name}-replies")
            config = agent_config(host, broker, f"host-{name}-replies", OPTIONS)
            sock = pathlib.Path(host.dir) / "subscribe.sock"
            box.restart_agent(
                name, agent_args=["--config", str(config), "--subscribe-listen", f"unix:{sock}"]
            )
            box.vm_add(name, f"vm{n}", vm_mac(n), f"{vm_ip(n)}/24", iface_id=f"p-{n}")
        yield Shared(box, broker, ips)


def vpc_goal_state(ips: dict[str, str], nb_ids: dict[str, list[str]] | None = None) -> pb.GoalStateV2:
    """The VPC with the three hosts' ports; each host's entry: the VPC, the subnet, its own port
    and the other two ports as neighbours (``nb_ids`` overrides whose neighbours each host gets)."""
    states: list = [gs.vpc(VPC, VNI, "10.81.0.0/16"), gs.subnet(SUBNET, VPC, CIDR, VNI)]
    hosts = list(ips)
    for n, host in enumerate(hosts, 1):
        states.append(gs.port(f"p-{n}", VPC, SUBNET, vm_ip(n), vm_mac(n), host_ip=ips[host]))
        states.append(gs.neighbor(f"p-{n}", VPC, SUBNET, vm_ip(n), vm_mac(n), ips[host]))
    msg = gs.goal_state_v2(*states)
    for n, host in enumerate(hosts, 1):
        entry = msg.host_resources[ips[host]].resources
        entry.add(type=pb.VPC, id=VPC)
        entry.add(type=pb.SUBNET, id=SUBNET)
        entry.add(type=pb.PORT, id=f"p-{n}")
        others = [f"p-{m}" for m in range(1, len(hosts) + 1) if m != n]
        for nid in (nb_ids or {}).get(host, others):
            entry.add(type=pb.NEIGHBOR, id=f"L2/{nid}")
    return msg


def neighbour_message(
    ips: dict[str, str], nid: str, hosts: tuple[str, ...], i: int, revision: int = 1
) -> pb.GoalStateV2:
    """Neighbour number ``i`` (on a host outside the sandbox; its MAC also names the revision),
    which each of ``hosts`` acts on."""
    ip, mac = (
        f"10.81.{1 + i // 250}.{1 + i % 250}",
        f"02:81:00:{revision % 256:02x}:{i >> 8:02x}:{i & 255:02x}",
    )
    msg = gs.goal_state_v2(
        gs.vpc(VPC, VNI, "10.81.0.0/16"),
        gs.subnet(SUBNET, VPC, CIDR, VNI),
        gs.neighbor(nid, VPC, SUBNET, ip, mac, "172.31.0.200", revision=revision),
    )
    for host in hosts:
        msg.host_resources[ips[host]].resources.add(type=pb.NEIGHBOR, id=f"L2/{nid}")
    return msg


# ---------------------------------------------------------------------------- the tests
def test_one_publish_on_a_vpc_topic_programs_each_host_with_exactly_its_own_entry(shared: Shared) -> None:
    topic = "vpc-sh-all"
    shared.create_topics(topic)
    for host in HOSTS:
        assert shared.push_subscribe(host, topic) == "SUCCESS"
    offset = shared.publish(topic, vpc_goal_state(shared.ips))
    for n, host in enumerate(HOSTS, 1):
        others = {f"p-{m}" for m in range(1, 4) if m != n}
        reply = shared.reply_for(host, topic, offset)
        assert status_by_id(reply) == {VPC: "SUCCESS", f"p-{n}": "SUCCESS"} | {  # the subnet is INFO
            nid: "SUCCESS" for nid in others
        }
        assert [r for t, o, r in shared.replies(host) if (t, o) == (topic, offset)] == [reply]  # one reply
        cookies = set(dump_cookies(shared.box, host))
        assert cookie(Kind.PORT, f"p-{n}") in cookies
        assert {nid for nid in ("p-1", "p-2", "p-3") if cookie(Kind.NEIGHBOR, nid) in cookies} == others
        assert not {cookie(Kind.PORT, nid) for nid in others} & cookies  # other hosts' ports: context
        assert_flow_table_clean(shared.box, host)
    for src in (1, 2, 3):
        for dst in (1, 2, 3):
            if src != dst:
                assert_reaches(shared.box, f"vm{src}", vm_ip(dst))


def test_after_unsubscribe_a_record_on_the_topic_is_not_applied(shared: Shared) -> None:
    topic = "vpc-sh-unsub"
    shared.create_topics(topic)
    for host in ("host1", "host2"):
        assert shared.push_subscribe(host, topic) == "SUCCESS"
    first = shared.publish(topic, neighbour_message(shared.ips, "nb-u1", ("host1", "host2"), 101))
    for host in ("host1", "host2"):
        assert status_by_id(shared.reply_for(host, topic, first)) == {"nb-u1": "SUCCESS"}

    assert shared.push_subscribe("host1", topic, op=pb.Unsubscribe) == "SUCCESS"
    assert topic not in shared.topics("host1")
    assert shared.committed("host1", topic) == first + 1  # applied and committed before it left
    second = shared.publish(topic, neighbour_message(shared.ips, "nb-u2", ("host1", "host2"), 102))
    # host2, still subscribed, applies the record: it was there to be read ...
    assert status_by_id(shared.reply_for("host2", topic, second)) == {"nb-u2": "SUCCESS"}
    # ... and host1, live (a later record on its own topic applies), did not read it.
    marker = shared.publish("host-host1", neighbour_message(shared.ips, "nb-u3", ("host1",), 103))
    assert status_by_id(shared.reply_for("host1", "host-host1", marker)) == {"nb-u3": "SUCCESS"}
    assert "nb-u2" not in shared.neighbours("host1")
    assert shared.committed("host1", topic) == first + 1
    assert not [o for t, o, _r in shared.replies("host1") if t == topic and o == second]


def test_records_keyed_for_another_host_are_skipped_and_committed(shared: Shared) -> None:
    topic = "vpc-sh-keyed"
    shared.create_topics(topic)
    assert shared.push_subscribe("host1", topic) == "SUCCESS"  # key: its underlay IP
    assert shared.push_subscribe("host2", topic, key="host2-key") == "SUCCESS"
    both = ("host1", "host2")
    skipped_before = shared.status("host1")["counters"].get("kafka_skipped_other_key", 0)  # type: ignore[union-attr]
    for_host2 = shared.publish(topic, neighbour_message(shared.ips, "nb-k1", both, 111), key=b"host2-key")
    for_host1 = shared.publish(
        topic, neighbour_message(shared.ips, "nb-k2", both, 112), key=shared.ips["host1"].encode()
    )
    unkeyed = shared.publish(topic, neighbour_message(shared.ips, "nb-k3", both, 113))

    shared.wait_committed("host1", topic, unkeyed)
    assert {n for n in shared.neighbours("host1") if n.startswith("nb-k")} == {"nb-k2", "nb-k3"}
    assert [o for t, o, _r in shared.replies("host1") if t == topic] == [for_host1, unkeyed]
    counters = shared.status("host1")["counters"]
    assert counters["kafka_skipped_other_key"] == skipped_before + 1  # type: ignore[index]

    shared.wait_committed("host2", topic, unkeyed)
    assert {n for n in shared.neighbours("host2") if n.startswith("nb-k")} == {"nb-k1", "nb-k3"}
    assert [o for t, o, _r in shared.replies("host2") if t == topic] == [for_host2, unkeyed]
    for host in both:
        assert shared.neighbours(host)["nb-k3"]["state"] == "programmed"
        assert cookie(Kind.NEIGHBOR, "nb-k3") in dump_cookies(shared.box, host)


def test_subscription_requests_are_answered_by_what_is_wrong(shared: Shared) -> None:
    assert shared.push_subscribe("host3", "") == "INVALID_ARG"
    assert shared.push_subscribe("host3", "vpc with spaces") == "INVALID_ARG"
    assert shared.push_subscribe("host3", "host-host3") == "INVALID_ARG"  # its own topic
    assert shared.push_subscribe("host3", "vpc-sh-never-created") == "FAILURE"  # the broker does not know it
    assert shared.push_subscribe("host3", "vpc-sh-never-created", op=pb.Unsubscribe) == "SUCCESS"
    assert "vpc-sh-never-created" not in shared.topics("host3")
    log = pathlib.Path(shared.box.host("host3").log_file).read_text()
    assert "event=subscribe_info topic=vpc-sh-never-created status=FAILURE reason=" in log


def test_sigkill_with_two_shared_topics_in_flight_loses_nothing_and_applies_nothing_twice(
    shared: Shared,
) -> None:
    host, topics = "host3", ("vpc-sh-kill-a", "vpc-sh-kill-b")
    shared.create_topics(*topics)
    for topic in topics:
        assert shared.push_subscribe(host, topic) == "SUCCESS"
    # Per topic: its own neighbours created once each, and one neighbour updated by every
    # record with a rising revision and a new MAC (an old record applied again after a newer
    # one would bring its MAC back).
    produced: dict[str, list[int]] = {topic: [] for topic in topics}
    last_mac: dict[str, str] = {}
    stop = threading.Event()

    def producer() -> None:
        n = 0
        while n < 60 or (not stop.is_set() and n < 400):
            topic = topics[n % 2]
            msg = neighbour_message(shared.ips, f"nb-kill-{n}", (host,), 200 + n)
            moving = neighbour_message(
                shared.ips, f"nb-move-{topic[-1]}", (host,), 1000 + n % 2, revision=n + 1
            )
            msg.neighbor_states.MergeFrom(moving.neighbor_states)
            msg.host_resources[shared.ips[host]].resources.MergeFrom(
                moving.host_resources[shared.ips[host]].resources
            )
            produced[topic].append(shared.publish(topic, msg))
            last_mac[topic] = moving.neighbor_states[f"L2/nb-move-{topic[-1]}"].configuration.mac_address
            n += 1

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        wait_for(lambda: shared.committed(host, topics[1]) > 3, 30, "host3 to apply some of both topics")
        shared.box.stop_agent(host, sig=signal.SIGKILL)
        shared.box.restart_agent(host)
    finally:
        stop.set()
        thread.join(120)
    assert set(shared.topics(host)) >= set(topics)  # both subscriptions are back by themselves
    for topic in topics:
        shared.wait_committed(host, topic, produced[topic][-1])
    held = shared.neighbours(host)
    sent = len(produced[topics[0]]) + len(produced[topics[1]])
    assert {f"nb-kill-{n}" for n in range(sent)} <= set(held)
    flows = "\n".join(dump_flows(shared.box, host))
    for topic in topics:
        moving = held[f"nb-move-{topic[-1]}"]
        assert (moving["mac"], moving["state"]) == (last_mac[topic], "programmed")
        macs = set(re.findall(rf"02:81:00:[0-9a-f]{{2}}:{last_mac[topic][-5:]}", flows))
        assert macs == {last_mac[topic]}  # in OVS only the newest revision's MAC
    # Every record has a reply; a record answered twice (redelivered after the kill) got the same
    # statuses both times, and the switch holds exactly the agent's flows.
    replies: dict[tuple[str, int], list[dict[str, str]]] = {}
    for topic, offset, reply in shared.replies(host):
        replies.setdefault((topic, offset), []).append(status_by_id(reply))
    for topic in topics:
        for offset in produced[topic]:
            answers = replies[(topic, offset)]
            assert all(a == answers[0] for a in answers), (topic, offset, answers)
            assert set(answers[0].values()) == {"SUCCESS"}
    wait_for(  # acactl status: both topics caught up (the figures are refreshed every second)
        lambda: all(shared.topics(host)[topic]["lag"] == 0 for topic in topics), 10, "lag 0 on both topics"
    )
    assert_flow_table_clean(shared.box, host)


def test_subscribing_while_the_own_topic_flows_loses_and_repeats_nothing_there(shared: Shared) -> None:
    """The re-subscribe rebalances the group while records flow on the host's own topic (before,
    during and after): every one is applied, and answered exactly once (a replay would answer twice)."""
    host, topic, own = "host2", "vpc-sh-join", "host-host2"
    shared.create_topics(topic)
    log = pathlib.Path(shared.box.host(host).log_file)
    offsets: list[int] = []
    started, stop = threading.Event(), threading.Event()

    def producer() -> None:
        """Keeps at most a few records ahead of the agent, so some are always in flight."""
        n = 0
        while not stop.is_set() and n < 400:
            offsets.append(shared.publish(own, neighbour_message(shared.ips, f"nb-j{n}", (host,), 600 + n)))
            n += 1
            if n == 10:
                started.set()
            if n > 5:
                wait_for(lambda n=n: f"nb-j{n - 5}" in shared.neighbours(host), 30, f"nb-j{n - 5} applied")

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        assert started.wait(60)
        assert shared.push_subscribe(host, topic) == "SUCCESS"
        wait_for(lambda: f"{topic}/0" in log.read_text(), 30, "the rebalance that assigns the new topic")
        produced = len(offsets)
        wait_for(lambda: len(offsets) >= produced + 10, 30, "more records after the rebalance")
    finally:
        stop.set()
        thread.join(120)
    shared.wait_committed(host, own, offsets[-1])
    answered = collections.Counter(o for t, o, _r in shared.replies(host) if t == own and o in set(offsets))
    assert answered == dict.fromkeys(offsets, 1)
    assert {f"nb-j{n}" for n in range(len(offsets))} <= set(shared.neighbours(host))
