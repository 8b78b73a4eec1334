"""Scale test: N simulated hosts, a controller simulator playing Alcor's NCM, latency as a VPC grows.

For every new port the simulator sends, like the NCM, a GoalStateV2 to the port's host (the
port, its DHCP entry and the router, with the VPC and subnet as context; the first port of the
VPC on a host also carries every existing port as a neighbour) and the new port as a neighbour
to every other host of the VPC. Transport: one long-lived PushGoalStatesStream per host (gRPC),
or one topic per host with a reply topic per host (Kafka, a tansu broker in the sandbox underlay).
``--transport shared`` grows a second VPC beside the first whose changes go once to the VPC's
topic, every agent subscribed to it by PushNodeSubscribeInfo (docs/scale.md, shared-topic mode).

Workloads, one after the other on the same hosts:
  grow    one VPC from 0 to --ports ports, a port at a time (each waits for every host's reply);
  update  "1 port with multiple requests": every --update-every ports, an UPDATE of port 0
          (its allowed address pair toggled) while the neighbour count grows;
  burst   --burst ports created at once (every message sent before the first reply is awaited).

Measured: each host's reply time (controller send → reply received) and the agent-side split
from the reply (network_configuration_time: state + persist; dataplane_programming_time: plan +
OpenFlow bundle; the rest of message_total_operation_time: waiting in the agent's queue; the
rest of the round trip: transport, decode, encode); for sampled ports (--ping-every) a VM is
plugged and the time until it answers a ping from a VM on another host (ping's own receive
timestamp); agent CPU seconds, RSS, neighbours and flows per host every --sample-every ports.
Unplugged ports answer PENDING (their interface is not on the bridge): expected, counted.

Output in --out: scale.csv (every measurement), summary.txt and summary.csv (the table printed
at the end), latency_vs_neighbours.png and resources_vs_neighbours.png. Needs root.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import dataclasses
import ipaddress
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from agent._pb import goalstate_pb2 as pb
from agent.cli import acactl
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import HostInfo, Sandbox, SandboxError, VmInfo
from bench import scale_report
from bench.common import environment

VPC, SUBNET, ROUTER, VNI = "vpc-scale", "subnet-scale", "router-scale", 7000
CIDR, GW_IP, GW_MAC, DVR_MAC = "10.64.0.0/16", "10.64.0.1", "fa:16:3e:ff:ff:01", "fa:16:3e:ff:ff:02"
PAIR_IP, PAIR_MAC = "10.64.255.250", "fa:16:3e:ff:ff:fa"  # toggled on port 0 by the update workload
BROKER_IP, BROKER_PORT = "172.31.0.1", 9092  # on the underlay bridge: every host reaches it


def reply_topic(host: str) -> str:
    """Each agent replies on its own topic: tansu's memory storage loses records now and then when
    several producers append to one partition at the same time."""
    return f"host-{host}-replies"


def replying_host(topic: str) -> str:
    return topic.removeprefix("host-").removesuffix("-replies")


PING_LEAD_S = 0.1  # a sampled VM's ping runs this long before its goal states are sent
# tansu's quick-join settings plus no batching delays: the bench measures latency, not batching.
# tansu answers a fetch only when fetch.wait.max.ms is over, even when data arrived meanwhile (a
# one-way latency floor of up to that long), and now and then leaves a request unanswered: a short
# socket.timeout.ms makes librdkafka drop such a connection after 3 s and retry on a new one.
AGENT_KAFKA_OPTIONS = {
    "session.timeout.ms": "1000",
    "heartbeat.interval.ms": "100",
    "topic.metadata.refresh.interval.ms": "500",
    "fetch.wait.max.ms": "10",
    "linger.ms": "0",
    "socket.timeout.ms": "3000",
}
PRODUCER_OPTIONS = {"linger.ms": "0", "socket.timeout.ms": "3000"}
READER_OPTIONS = {"fetch.wait.max.ms": "10", "socket.timeout.ms": "3000"}
CSV_FIELDS = [
    "kind", "transport", "workload", "op", "port", "host", "role", "neighbours", "t_s",
    "latency_ms", "agent_ms", "config_ms", "dataplane_ms", "queue_ms", "wire_ms", "status",
    "cpu_s", "rss_mb", "held_neighbours", "flows", "messages",
]  # fmt: skip
SHARED_VPC = 1  # the shared-topic mode's second VPC (Ncm n), grown over its topic


# ---------------------------------------------------------------- controller simulator (NCM)
@dataclasses.dataclass
class PortSpec:
    index: int
    host: HostInfo
    revision: int = 1
    vpc: int = 0  # which of the run's VPCs (the shared-topic mode grows a second one)

    @property
    def id(self) -> str:
        return f"port-{self.index}" if not self.vpc else f"port{self.vpc}-{self.index}"

    @property
    def ip(self) -> str:
        return str(ipaddress.IPv4Address(f"10.{64 + self.vpc}.0.0") + 16 + self.index)

    @property
    def mac(self) -> str:
        i = self.index
        return f"fa:16:{0x3E + self.vpc:02x}:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


class Ncm:
    """What Alcor's NCM sends for a new or updated port of one VPC; ports go round-robin over hosts.

    VPC ``n`` (0: the bench's) has its own names, VNI and addresses, so two grow side by side."""

    def __init__(self, hosts: list[HostInfo], n: int = 0) -> None:
        self.hosts = hosts
        self.n = n
        self.vpc, self.subnet, self.router = (
            (VPC, SUBNET, ROUTER) if not n else (f"{VPC}-{n}", f"{SUBNET}-{n}", f"{ROUTER}-{n}")
        )
        self.vni, self.cidr, self.gw_ip = VNI + n, f"10.{64 + n}.0.0/16", f"10.{64 + n}.0.1"
        self.ports: list[PortSpec] = []
        self.members: list[HostInfo] = []  # hosts holding a port of the VPC, in order of their first

    @property
    def topic(self) -> str:
        """The VPC's shared topic (shared-topic mode)."""
        return f"vpc-{self.vpc}"

    def new_port(self) -> PortSpec:
        index = len(self.ports)  # numbered in creation order
        return PortSpec(index, self.hosts[index % len(self.hosts)], vpc=self.n)

    def _context(self) -> list[Any]:
        return [
            gs.vpc(self.vpc, self.vni, self.cidr, op=gs.INFO),
            gs.subnet(self.subnet, self.vpc, self.cidr, self.vni, self.gw_ip, GW_MAC, op=gs.INFO),
        ]

    def _neighbour(self, p: PortSpec) -> Any:
        return gs.neighbor(p.id, self.vpc, self.subnet, p.ip, p.mac, p.host.underlay_ip)

    def _own(self, p: PortSpec) -> tuple[list[Any], list[Any], str]:
        """What ``p``'s own host acts on: the router, the port and its DHCP entry; and, for its
        host's first port of the VPC, every existing port as a neighbour (the bootstrap)."""
        own = [
            gs.router(self.router, DVR_MAC, [self.subnet]),
            gs.port(p.id, self.vpc, self.subnet, p.ip, p.mac, host_ip=p.host.underlay_ip),
            gs.dhcp(f"dhcp-{p.id}", self.subnet, p.mac, p.ip, hostname=f"vm-{p.index}"),
        ]
        if all(h.name != p.host.name for h in self.members):
            return own, [self._neighbour(q) for q in self.ports], "port+bootstrap"
        return own, [], "port"

    def _joined(self, p: PortSpec) -> None:
        self.ports.append(p)
        if all(h.name != p.host.name for h in self.members):
            self.members.append(p.host)

    def create(self, p: PortSpec) -> list[tuple[HostInfo, str, pb.GoalStateV2]]:
        """(host, role, message) for port ``p``, one message per host; the port then counts as a
        member of the VPC."""
        own, bootstrap, role = self._own(p)
        out = [
            (p.host, role, gs.goal_state_v2(*self._context(), *own, *bootstrap, host_ip=p.host.underlay_ip))
        ]
        for h in self.members:
            if h.name != p.host.name:
                msg = gs.goal_state_v2(*self._context(), self._neighbour(p), host_ip=h.underlay_ip)
                out.append((h, "neighbour", msg))
        self._joined(p)
        return out

    def create_shared(self, p: PortSpec) -> tuple[pb.GoalStateV2, list[tuple[HostInfo, str]]]:
        """The same change as one message for the VPC's topic, and (host, role) of every host it
        names: ``host_resources`` gives the port's host what ``create`` sends it, and every other
        member the port as a neighbour; every host subscribed reads it, the others skip it."""
        own, bootstrap, role = self._own(p)
        msg = gs.goal_state_v2(*self._context(), *own, *bootstrap, self._neighbour(p))
        mine = msg.host_resources[p.host.underlay_ip].resources
        for state, rtype in zip(own, (pb.ROUTER, pb.PORT, pb.DHCP), strict=True):
            mine.add(type=rtype, id=state.configuration.id)
        for q in bootstrap:
            mine.add(type=pb.NEIGHBOR, id=f"L2/{q.configuration.id}")
        named = [(p.host, role)]
        for h in self.members:
            if h.name != p.host.name:
                msg.host_resources[h.underlay_ip].resources.add(type=pb.NEIGHBOR, id=f"L2/{p.id}")
                named.append((h, "neighbour"))
        self._joined(p)
        return msg, named

    def update(self, p: PortSpec) -> list[tuple[HostInfo, str, pb.GoalStateV2]]:
        """A FULL update of ``p`` with its allowed address pair toggled; only its host is told."""
        p.revision += 1
        pairs = [(PAIR_IP, PAIR_MAC)] if p.revision % 2 == 0 else []
        port = gs.port(
            p.id, self.vpc, self.subnet, p.ip, p.mac, p.host.underlay_ip, gs.UPDATE, p.revision, pairs=pairs
        )
        return [(p.host, "update", gs.goal_state_v2(*self._context(), port, host_ip=p.host.underlay_ip))]


# ---------------------------------------------------------------- operations and replies
@dataclasses.dataclass
class Reply:
    host: str
    role: str
    t: float
    message: pb.GoalStateOperationReply


class Op:
    """One controller operation: several messages, done when every host has replied."""

    def __init__(self, workload: str, index: int, port: PortSpec | None, neighbours: int, expected: int):
        self.workload, self.index, self.port, self.neighbours = workload, index, port, neighbours
        self.expected = expected
        self.t0 = 0.0  # perf_counter at the first send
        self.t0_wall = 0.0  # the same moment on the wall clock (ping timestamps)
        self.published: list[float] = []  # perf_counter when the broker acknowledged each message (Kafka)
        self.replies: list[Reply] = []
        self.sent_to: list[str] = []
        self.error: str | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def add(self, host: str, role: str, message: pb.GoalStateOperationReply, t: float) -> None:
        with self._lock:
            self.replies.append(Reply(host, role, t, message))
            if len(self.replies) >= self.expected:
                self._done.set()

    def fail(self, error: str) -> None:
        self.error = error
        self._done.set()

    def wait(self, timeout: float) -> None:
        if not self._done.wait(timeout):
            with self._lock:
                missing = collections.Counter(self.sent_to) - collections.Counter(
                    r.host for r in self.replies
                )
            raise TimeoutError(
                f"{self.workload} op {self.index}: no reply from {', '.join(sorted(missing))} in {timeout}s"
            )
        if self.error:
            raise RuntimeError(f"{self.workload} op {self.index}: {self.error}")

    @property
    def done_t(self) -> float:
        return max(r.t for r in self.replies)


@dataclasses.dataclass
class Sent:
    op: Op
    host: str
    role: str


class GrpcTransport:
    """One PushGoalStatesStream per host, open for the whole run, fed from a queue; the agent
    answers a stream's messages in order, so replies are matched to what was sent in order."""

    name = "grpc"

    def __init__(self, box: Sandbox, hosts: list[HostInfo]) -> None:
        import grpc

        from agent._pb import goalstate_pb2_grpc

        self._grpc = grpc
        self._closing = False
        self._streams: dict[str, tuple[Any, queue.SimpleQueue, collections.deque, Any, threading.Thread]] = {}
        for h in hosts:
            channel = box.channel(h.name, options=[("grpc.max_send_message_length", 256 << 20)])
            stub = goalstate_pb2_grpc.GoalStateProvisionerStub(channel)
            requests: queue.SimpleQueue = queue.SimpleQueue()
            pending: collections.deque[Sent] = collections.deque()
            call = stub.PushGoalStatesStream(self._requests(requests))
            reader = threading.Thread(target=self._read, args=(h.name, call, pending), daemon=True)
            reader.start()
            self._streams[h.name] = (channel, requests, pending, call, reader)

    @staticmethod
    def _requests(requests: queue.SimpleQueue) -> Iterator[pb.GoalStateV2]:
        while (msg := requests.get()) is not None:
            yield msg

    def _read(self, host: str, call: Any, pending: collections.deque[Sent]) -> None:
        try:
            for reply in call:
                t = time.perf_counter()
                sent = pending.popleft()
                sent.op.add(sent.host, sent.role, reply, t)
        except self._grpc.RpcError as exc:
            if not self._closing:
                while pending:
                    pending.popleft().op.fail(f"stream to {host}: {exc.code().name}: {exc.details()}")

    def send(self, sent: Sent, msg: pb.GoalStateV2) -> None:
        _channel, requests, pending, _call, _reader = self._streams[sent.host]
        pending.append(sent)
        requests.put(msg)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._closing = True
        for _channel, requests, _pending, _call, reader in self._streams.values():
            requests.put(None)  # half-close: the agent ends the stream after the last reply
            reader.join(5)
        for channel, _requests, _pending, call, _reader in self._streams.values():
            call.cancel()
            channel.close()


class KafkaTransport:
    """Goal states produced to each host's topic (host-<host id>), or once to a VPC's topic that
    several hosts act on; each agent replies on its reply topic, whose records name the source
    topic and offset they answer; one reader reads them all and matches (topic, offset, host)."""

    name = "kafka"

    def __init__(self, broker: Any, hosts: list[HostInfo]) -> None:
        from confluent_kafka import Producer

        from agent.sandbox.kafka import enter_netns

        self._broker = broker
        self._hosts = hosts
        self._lock = threading.Lock()
        self._by_offset: dict[tuple[str, int, str], Sent] = {}
        self._early: dict[tuple[str, int, str], tuple[pb.GoalStateOperationReply, float]] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # librdkafka's threads are created with the client and inherit the creating thread's
        # namespace, so clients made on a thread inside the underlay namespace talk there.
        self._producer = broker.call(lambda: Producer({**broker.client_config(), **PRODUCER_OPTIONS}))
        self._reader = threading.Thread(target=self._read, args=(enter_netns,), daemon=True)
        self._reader.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"reply consumer did not start: {self._error!r}")

    def _read(self, enter_netns: Callable[[str], None]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        try:
            enter_netns(self._broker.netns)
            consumer = Consumer(
                {
                    **self._broker.client_config(),
                    **READER_OPTIONS,
                    "group.id": f"scale-reader-{uuid.uuid4().hex[:6]}",
                    "enable.auto.commit": False,
                }
            )
            consumer.assign([TopicPartition(reply_topic(h.name), 0, OFFSET_BEGINNING) for h in self._hosts])
        except BaseException as exc:
            self._error = exc
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                record = consumer.poll(0.05)
                if record is None or record.error() is not None:
                    continue
                t = time.perf_counter()
                headers = {k: v.decode() for k, v in record.headers() or () if v is not None}
                key = (
                    headers["alcor-source-topic"],
                    int(headers["alcor-source-offset"]),
                    replying_host(record.topic()),
                )
                reply = pb.GoalStateOperationReply.FromString(record.value())
                with self._lock:
                    sent = self._by_offset.pop(key, None)
                    if sent is None:
                        self._early[key] = (reply, t)
                if sent is not None:
                    sent.op.add(sent.host, sent.role, reply, t)
        finally:
            consumer.close()

    def _delivered(self, sents: list[Sent], err: Any, record: Any) -> None:
        if err is not None:
            for sent in sents:
                sent.op.fail(f"produce to {record.topic()}: {err}")
            return
        acked = time.perf_counter()
        for sent in sents:
            sent.op.published.append(acked)
            key = (record.topic(), record.offset(), sent.host)
            with self._lock:
                early = self._early.pop(key, None)
                if early is None:
                    self._by_offset[key] = sent
            if early is not None:
                sent.op.add(sent.host, sent.role, early[0], early[1])

    def send(self, sent: Sent, msg: pb.GoalStateV2 | bytes) -> None:
        self.publish(f"host-{sent.host}", msg, [sent])

    def publish(self, topic: str, msg: pb.GoalStateV2 | bytes, sents: list[Sent]) -> None:
        """One record on ``topic`` that every host of ``sents`` answers."""
        value = msg if isinstance(msg, bytes) else msg.SerializeToString()
        self._producer.produce(
            topic, value=value, on_delivery=lambda err, rec: self._delivered(sents, err, rec)
        )
        self._producer.poll(0)

    def flush(self) -> None:
        if self._producer.flush(30):
            raise RuntimeError("Kafka producer did not deliver within 30s")

    def close(self) -> None:
        self._stop.set()
        self._reader.join(5)
        self._producer.purge()
        self._producer.flush(1)


# ---------------------------------------------------------------- the sandbox for one run
def agent_cpu_s(pid: int) -> float:
    """utime + stime of a process (the agent's, all its threads), in seconds."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def scale_sandbox(
    transport: str, hosts: int, progress: Progress, agent_kafka_options: dict[str, str] | None = None
) -> Iterator[tuple[Sandbox, Any]]:
    """``hosts`` hosts with agents at their default log level (and, for Kafka, a broker on the
    underlay; for the shared-topic mode also the shared VPC's topic and each agent's subscribe
    endpoint on a unix socket); always torn down."""
    root = tempfile.mkdtemp(prefix="acasc-")
    box = Sandbox(pathlib.Path(root) / "sandbox", prefix=f"acasc{uuid.uuid4().hex[:4]}-")
    broker = None
    try:
        box.underlay_up()
        agent_args: tuple[str, ...] = ()
        if transport in ("kafka", "shared"):
            from agent.sandbox.kafka import KafkaBroker

            subprocess.run(
                ["ip", "-n", box.underlay_netns, "addr", "add", f"{BROKER_IP}/24", "dev", "ul0"], check=True
            )
            broker = KafkaBroker(port=BROKER_PORT, netns=box.underlay_netns, host=BROKER_IP)
            broker.start()
            for i in range(1, hosts + 1):
                broker.create_topic(f"host-host{i}")
                broker.create_topic(reply_topic(f"host{i}"))
            if transport == "shared":
                broker.create_topic(Ncm([], SHARED_VPC).topic)
            chosen = AGENT_KAFKA_OPTIONS if agent_kafka_options is None else agent_kafka_options
            options = "\n".join(f'"{k}" = "{v}"' for k, v in chosen.items())
            config = pathlib.Path(root) / "agent-kafka.toml"
            config.write_text(
                # The broker is on the sandbox underlay, plaintext (tansu speaks no TLS): allowed.
                f'[kafka]\nbootstrap_servers = "{broker.bootstrap}"\nallow_insecure = true\n\n'
                f"[kafka.options]\n{options}\n"
            )
            agent_args = (*agent_args, "--config", str(config))
        for i in range(1, hosts + 1):
            progress.line(f"[{transport}] starting host {i}/{hosts}")
            extra: tuple[str, ...] = ()
            if broker is not None:
                extra = ("--kafka-reply-topic", reply_topic(f"host{i}"))
            if transport == "shared":
                extra += ("--subscribe-listen", f"unix:{subscribe_socket(box, f'host{i}')}")
            box.host_up(f"host{i}", agent_args=(*agent_args, *extra))
        yield box, broker
    finally:
        progress.line(f"[{transport}] tearing down")
        try:
            if broker is not None:
                # Agents leave their group while the broker is still there, then the broker goes.
                for name in box.hosts():
                    with contextlib.suppress(SandboxError):
                        box.stop_agent(name)
                broker.stop()
        finally:
            box.down()
            shutil.rmtree(root, ignore_errors=True)
            progress.clear()


def subscribe_socket(box: Sandbox, host: str) -> pathlib.Path:
    return box.root / host / "subscribe.sock"  # the host's directory (Sandbox._new_host)


def push_subscribe(box: Sandbox, host: str, topic: str) -> None:
    """``PushNodeSubscribeInfo(Subscribe, topic)`` to the host's agent, as the controller does."""

    from agent._pb import goalstate_pb2_grpc

    with box.channel(host, target=f"unix:{subscribe_socket(box, host)}") as channel:
        stub = goalstate_pb2_grpc.SubscribeInfoProvisionerStub(channel)
        request = pb.NodeSubscribeInfo(subscribe_operation=pb.Subscribe, topic=topic)
        status = stub.PushNodeSubscribeInfo(request, timeout=60).operation_status
    if status != pb.SUCCESS:
        raise RuntimeError(f"{host}: subscribing to {topic} answered {pb.OperationStatus.Name(status)}")


def tansu_version() -> str:
    from agent.sandbox.kafka import tansu_binary

    binary = tansu_binary()
    if binary is None:
        return "missing"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.split()
    return out[-1] if out else "unknown"


# ---------------------------------------------------------------- progress
class Progress:
    """One status line on stderr, redrawn at most 5 times a second (every 10 s when not a tty)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def line(self, text: str, force: bool = True) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 10.0):
            return
        self._last = now
        text = f"{text}  [{now - self._start:5.0f}s]"
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{text}")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def bar(self, label: str, done: int, total: int, extra: str = "") -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        self.line(f"{label} |{'#' * filled}{'.' * (width - filled)}| {done}/{total} {extra}", force=False)

    def clear(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ---------------------------------------------------------------- one transport's run
class Run:
    def __init__(
        self, args: argparse.Namespace, transport: str, box: Sandbox, broker: Any, progress: Progress
    ):
        self.args, self.transport_name, self.box, self.progress = args, transport, box, progress
        self.hosts = list(box.hosts().values())
        self.pids = {h.name: h.agent_pid for h in self.hosts}
        self.broker_pid = broker.pid if broker is not None else None
        self.ncm = Ncm(self.hosts)
        self.rows: list[dict[str, Any]] = []
        self.vms: list[VmInfo] = []
        self.start = time.perf_counter()
        self.transport: GrpcTransport | KafkaTransport = (
            GrpcTransport(box, self.hosts) if transport == "grpc" else KafkaTransport(broker, self.hosts)
        )

    def close(self) -> None:
        self.transport.close()

    # -------------------------------------------------- sending
    def _send(self, op: Op, messages: list[tuple[HostInfo, str, Any]]) -> None:
        op.t0, op.t0_wall = time.perf_counter(), time.time()
        for host, role, msg in messages:
            op.sent_to.append(host.name)
            self.transport.send(Sent(op, host.name, role), msg)

    def _exchange(self, op: Op, messages: list[tuple[HostInfo, str, Any]], label: str | None = None) -> None:
        """One operation: its messages sent, every reply awaited, the op recorded (``label``:
        the mode it is recorded under, with one publish per message)."""
        op.expected = len(messages)
        self._send(op, messages)
        self.transport.flush()
        op.wait(self.args.timeout)
        self.record(op, label, len(messages) if label else 0)

    def warm_up(self) -> None:
        """An empty goal state to every host; Kafka agents answer once they have joined their group."""
        op = Op("warmup", 0, None, 0, len(self.hosts))
        self._send(op, [(h, "warmup", pb.GoalStateV2(format_version=1)) for h in self.hosts])
        self.transport.flush()
        op.wait(60)

    # -------------------------------------------------- VMs and pings
    def plug(self, p: PortSpec) -> VmInfo:
        vm = self.box.vm_add(p.host.name, f"p{p.index}", p.mac, f"{p.ip}/16", gw=GW_IP, iface_id=p.id)
        if self.args.fast_arp:
            # Re-ask ARP every 5 ms (default 1 s) and for up to 15 s: the time to the first answer
            # then measures the agent rather than the kernel's ARP timers.
            sysctl = ["net.ipv4.neigh.eth0.retrans_time_ms=5", "net.ipv4.neigh.eth0.mcast_solicit=3000"]
            subprocess.run(["ip", "netns", "exec", vm.netns, "sysctl", "-qw", *sysctl], check=True)
        return vm

    def start_ping(self, p: PortSpec, pingers: list[VmInfo]) -> subprocess.Popen[str] | None:
        """Start pinging ``p`` every 5 ms from the latest of ``pingers`` on another host (None when
        there is none); started before the goal states are sent, so process start-up is not timed.

        ping -c 1 stops at its first ICMP error too; the VMs keep asking ARP instead of failing.
        """
        pinger = next((vm for vm in reversed(pingers) if vm.host != p.host.name), None)
        if pinger is None:
            return None
        cmd = ["ip", "netns", "exec", pinger.netns, "ping", "-n", "-D", "-c", "1", "-i", "0.005",
               "-w", str(int(self.args.timeout)), p.ip]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def finish_ping(self, proc: subprocess.Popen[str] | None, op: Op) -> None:
        """Record the time from the op's send to the first echo reply (ping's receive timestamp)."""
        if proc is None:
            return
        out, _ = proc.communicate(timeout=self.args.timeout + 5)
        match = re.search(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)
        latency = (float(match.group(1)) - op.t0_wall) * 1e3 if match and proc.returncode == 0 else None
        self.rows.append(
            self._row("ping", op, host=op.port.host.name if op.port else "",
                      latency_ms=None if latency is None else round(latency, 3),
                      status="SUCCESS" if latency is not None else "NO_ANSWER")
        )  # fmt: skip

    # -------------------------------------------------- recording
    def _row(self, kind: str, source: Op | None, **fields: Any) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(CSV_FIELDS, "")
        row.update(kind=kind, transport=self.transport_name)
        if source is not None:
            row.update(
                workload=source.workload,
                op=source.index,
                port=source.port.id if source.port else "",
                neighbours=source.neighbours,
                t_s=round(source.t0 - self.start, 4),
            )
        row.update(fields)
        return row

    def record(self, op: Op, label: str | None = None, published: int = 0) -> None:
        """One row per reply; with ``label`` (the rows' transport: the shared-topic mode's two ways)
        also one row for the ``published`` messages, from the first send to the broker's last ack."""
        if label is not None:
            self.rows.append(
                self._row("publish", op, transport=label, messages=published,
                          latency_ms=round((max(op.published) - op.t0) * 1e3, 3))
            )  # fmt: skip
        for r in op.replies:
            statuses = r.message.operation_statuses
            config = max((s.network_configuration_time for s in statuses), default=0) / 1e3
            dataplane = max((s.dataplane_programming_time for s in statuses), default=0) / 1e3
            agent = r.message.message_total_operation_time / 1e3
            latency = (r.t - op.t0) * 1e3
            names = sorted({pb.OperationStatus.Name(s.operation_status) for s in statuses})
            self.rows.append(
                self._row(
                    "reply", op, host=r.host, role=r.role, latency_ms=round(latency, 3),
                    agent_ms=round(agent, 3), config_ms=round(config, 3), dataplane_ms=round(dataplane, 3),
                    queue_ms=round(max(agent - config - dataplane, 0.0), 3),
                    wire_ms=round(max(latency - agent, 0.0), 3), status="+".join(names) or "EMPTY",
                    **({"transport": label} if label is not None else {}),
                )
            )  # fmt: skip

    def sample_resources(self, neighbours: int) -> None:
        now = round(time.perf_counter() - self.start, 3)
        if self.broker_pid is not None:
            self.rows.append(
                self._row("broker", None, host="broker", neighbours=neighbours, t_s=now,
                          cpu_s=round(agent_cpu_s(self.broker_pid), 3),
                          rss_mb=round(agent_rss_mb(self.broker_pid), 2))
            )  # fmt: skip
        for h in self.hosts:
            pid = self.pids[h.name]
            try:
                status = acactl.request(h.control_socket, "status", timeout=30)
                held, flows = status["resources"].get("neighbor", 0), status["flows_installed"]
            except (OSError, RuntimeError, KeyError):
                held, flows = "", ""
            self.rows.append(
                self._row("resources", None, host=h.name, neighbours=neighbours,
                          t_s=now, cpu_s=round(agent_cpu_s(pid), 3),
                          rss_mb=round(agent_rss_mb(pid), 2), held_neighbours=held, flows=flows)
            )  # fmt: skip

    # -------------------------------------------------- workloads
    def grow(self) -> None:
        """(a) one port at a time, each op waiting for every host; (b) interleaved updates of port 0."""
        a = self.args
        label = f"[{self.transport_name}] grow"
        self.sample_resources(0)
        for i in range(a.ports):
            p = self.ncm.new_port()
            sampled = i % a.ping_every == 0
            ping = None
            if sampled:
                pingers = list(self.vms)
                self.vms.append(self.plug(p))
                ping = self.start_ping(p, pingers)
                time.sleep(PING_LEAD_S)
            op = Op("grow", i, p, len(self.ncm.ports), 0)
            self._exchange(op, self.ncm.create(p))
            if sampled:
                self.finish_ping(ping, op)
            if a.update_every and i % a.update_every == a.update_every - 1:
                first = self.ncm.ports[0]
                self._exchange(Op("update", i, first, len(self.ncm.ports), 1), self.ncm.update(first))
            if (i + 1) % a.sample_every == 0:
                self.sample_resources(len(self.ncm.ports))
            last = self.rows[-1]["latency_ms"] if self.rows else ""
            self.progress.bar(label, i + 1, a.ports, f"last reply {last} ms")
        if a.ports % a.sample_every:
            self.sample_resources(len(self.ncm.ports))

    def grow_shared(self) -> None:
        """Shared-topic mode: two VPCs grow side by side, a port of each in turn, so both meet the
        same broker and agents: VPC 0 one message per host on per-host topics (``perhost`` rows),
        VPC 1 one message per change on its topic, which every host was subscribed to by
        PushNodeSubscribeInfo (``shared`` rows). Each change waits for every host it names."""
        a = self.args
        assert isinstance(self.transport, KafkaTransport)
        shared = Ncm(self.hosts, SHARED_VPC)
        for h in self.hosts:
            push_subscribe(self.box, h.name, shared.topic)
        self.sample_resources(0)
        for i in range(a.ports):
            p = self.ncm.new_port()
            self._exchange(Op("grow", i, p, len(self.ncm.ports), 0), self.ncm.create(p), "perhost")

            q = shared.new_port()
            msg, named = shared.create_shared(q)
            op = Op("grow", i, q, len(shared.ports), len(named))
            op.t0, op.t0_wall = time.perf_counter(), time.time()
            op.sent_to = [h.name for h, _role in named]
            self.transport.publish(shared.topic, msg, [Sent(op, h.name, role) for h, role in named])
            self.transport.flush()
            op.wait(a.timeout)
            self.record(op, "shared", 1)
            if (i + 1) % a.sample_every == 0:
                self.sample_resources(len(self.ncm.ports))
            self.progress.bar("[shared] grow", i + 1, a.ports)

    def burst(self) -> None:
        """(c) ``--burst`` ports created at once: every message is sent before any reply is awaited."""
        a = self.args
        if not a.burst:
            return
        label = f"[{self.transport_name}] burst"
        ops: list[tuple[Op, list[Any]]] = []
        sampled: list[Op] = []
        pingers = list(self.vms)  # VMs programmed before the burst
        for _ in range(a.burst):
            p = self.ncm.new_port()
            op = Op("burst", p.index, p, len(self.ncm.ports), 0)
            if p.index % a.ping_every == 0:
                self.vms.append(self.plug(p))
                sampled.append(op)
            messages = self.ncm.create(p)
            op.expected = len(messages)
            ops.append((op, messages))
        pings = [(op, self.start_ping(op.port, pingers)) for op in sampled if op.port is not None]
        time.sleep(PING_LEAD_S)
        self.progress.line(f"{label}: sending {sum(len(m) for _, m in ops)} messages")
        t0, t0_wall = time.perf_counter(), time.time()
        for op, messages in ops:
            self._send(op, messages)
            op.t0, op.t0_wall = t0, t0_wall  # a burst's latency counts from the moment the burst began
        self.transport.flush()
        for n, (op, _messages) in enumerate(ops, 1):
            op.wait(a.timeout)
            self.progress.bar(label, n, len(ops))
        elapsed = max(op.done_t for op, _ in ops) - t0
        for op, _messages in ops:
            self.record(op)
        for op, ping in pings:
            self.finish_ping(ping, op)
        self.rows.append(
            self._row("burst", None, workload="burst", op=a.burst, neighbours=len(self.ncm.ports),
                      latency_ms=round(elapsed * 1e3, 1))
        )  # fmt: skip
        self.sample_resources(len(self.ncm.ports))


def run_transport(
    args: argparse.Namespace, transport: str, progress: Progress, rows: list[dict[str, Any]]
) -> None:
    """Run every workload over ``transport`` on fresh hosts; measurements go to ``rows`` as they are
    made (so a failed run still leaves them), the agents' logs to <out>/logs/."""
    options = {} if args.kafka_client == "agent-defaults" else None
    with scale_sandbox(transport, args.hosts, progress, options) as (box, broker):
        run = Run(args, transport, box, broker, progress)
        run.rows = rows
        try:
            progress.line(f"[{transport}] waiting for {args.hosts} agents to answer")
            run.warm_up()
            if transport == "shared":
                run.grow_shared()
            else:
                run.grow()
                run.burst()
        finally:
            run.close()
            logs = pathlib.Path(args.out) / "logs"
            logs.mkdir(exist_ok=True)
            for h in run.hosts:
                with contextlib.suppress(OSError):
                    shutil.copyfile(h.log_file, logs / f"{transport}-{h.name}.log")


def write_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hosts", type=int, help="simulated hosts (default 8, 24 for shared; tried up to 24)")
    p.add_argument("--ports", type=int, default=2000, help="ports the VPC grows to, one at a time")
    p.add_argument("--burst", type=int, default=500, help="ports created at once after the growth (0: none)")
    p.add_argument(
        "--transport",
        choices=["grpc", "kafka", "both", "shared"],
        help="default grpc; both with --quick; shared: Kafka, one publish per change to the VPC's topic "
        "against one per host on per-host topics",
    )
    p.add_argument(
        "--kafka-client",
        choices=["bench", "agent-defaults"],
        default="bench",
        help="the agents' librdkafka settings: the bench's for tansu (quick joins, 10 ms fetch wait) "
        "or none (the agent's shipped defaults; tansu then holds every fetch 500 ms)",
    )
    p.add_argument("--ping-every", type=int, default=100, help="plug a VM and ping it for every Nth port")
    p.add_argument(
        "--fast-arp",
        action="store_true",
        help="the pinging VMs re-ask ARP every 5 ms instead of the kernel's default 1 s (then the "
        "first-ping time measures the agent, not ARP's timers; RESULT says vm_arp=fast)",
    )
    p.add_argument(
        "--update-every", type=int, default=20, help="update port 0 after every N new ports (0: never)"
    )
    p.add_argument(
        "--sample-every", type=int, default=0, help="agent CPU/RSS every N ports (default ports/20)"
    )
    p.add_argument("--buckets", type=int, default=5, help="neighbour-count buckets in the summary table")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any operation's replies")
    p.add_argument("--out", default="/tmp/aca-scale", help="directory for the CSV, summary and plots")
    p.add_argument("--quick", action="store_true", help="CI: 3 hosts, 150 ports, burst 50, both transports")
    p.add_argument("--report", metavar="CSV", help="only re-make summary and plots from an earlier CSV")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        rows = scale_report.read_csv(pathlib.Path(args.report))
        print(scale_report.report(rows, out, args.buckets))
        return 0
    if args.quick:
        args.hosts, args.ports, args.burst, args.transport = 3, 150, 50, args.transport or "both"
        args.ping_every, args.update_every = 50, 10
    args.transport = args.transport or "grpc"
    args.hosts = args.hosts or (24 if args.transport == "shared" else 8)
    args.sample_every = args.sample_every or max(args.ports // 20, 1)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces, Open vSwitch)")
    if args.hosts < 2:
        p.error("--hosts must be at least 2 (pings go between hosts)")

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so every sandbox is torn down.
    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    print(f"# {environment()} tansu={tansu_version()}" if args.transport != "grpc" else f"# {environment()}")
    progress = Progress(not args.no_progress)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    failed = []
    transports = ["grpc", "kafka"] if args.transport == "both" else [args.transport]
    for transport in transports:
        try:
            run_transport(args, transport, progress, rows)
        except (SandboxError, RuntimeError, TimeoutError, OSError) as exc:
            failed.append(transport)
            print(f"[{transport}] FAILED: {exc} (agent logs in {out / 'logs'})", file=sys.stderr)
    csv_path = out / "scale.csv"
    write_csv(csv_path, rows)
    elapsed = time.monotonic() - started
    print(f"hosts={args.hosts} ports={args.ports} burst={args.burst} transports={','.join(transports)} "
          f"run took {elapsed:.0f} s; every measurement in {csv_path}")  # fmt: skip
    summary = scale_report.report(rows, out, args.buckets, hosts=args.hosts, elapsed_s=elapsed)
    if any(t != "grpc" for t in transports):
        summary += f" kafka_client_settings={args.kafka_client}"
    summary += f" vm_arp={'fast' if args.fast_arp else 'default'}"
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
