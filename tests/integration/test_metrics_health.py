"""Operability against a real agent in a sandbox host: its Prometheus metrics scraped over HTTP
move with real goal states and real DHCP traffic (udhcpc in a VM namespace), agree with what
OVS holds, and show Kafka intake (a real tansu broker in the host's namespace) with librdkafka's
consumer lag; its gRPC health service says NOT_SERVING while ovs-vswitchd is gone and SERVING
once the agent replayed its flows into the restarted switch."""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import signal
import sys
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from agent.intake.grpc_server import SERVICE
from agent.planner.pipeline import TABLE_NAMES
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.kafka import running_broker
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.kafka_agent import agent_config, committed_offset
from tests.support.parts import missing, require_ovs, require_tansu

pytestmark = pytest.mark.integration
require_ovs()
if shutil.which("busybox") is None:
    missing("busybox (udhcpc) is not installed")

HOST = "host1"
METRICS_PORT = 9464  # in the host's own network namespace
SCRAPE = (
    "import sys, urllib.request; "
    f"body = urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=10).read(); "
    "sys.stdout.write(body.decode())"
)
COOKIE, TABLE = re.compile(r"cookie=(0x[0-9a-f]+)"), re.compile(r"\btable=(\d+)")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        sb.host_up(HOST, agent_args=["--metrics-listen", str(METRICS_PORT)])
        yield sb


def scrape(sb: Sandbox) -> Samples:
    """One scrape over HTTP from inside the host's namespace (loopback is all it listens on)."""
    text = sb.exec(HOST, [sys.executable, "-c", SCRAPE]).stdout
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def ovs_flows_per_table(sb: Sandbox) -> dict[str, int]:
    """The agent's flows (cookie 0xa...) in OVS, per table name."""
    out = sb.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows", "br-int"]).stdout
    counts: collections.Counter[str] = collections.Counter()
    for line in out.splitlines():
        cookie, table = COOKIE.search(line), TABLE.search(line)
        if cookie and int(cookie.group(1), 16) >> 60 == 0xA:
            counts[TABLE_NAMES[int(table.group(1)) if table else 0]] += 1
    return dict(counts)


def test_metrics_move_with_goal_states_and_dhcp_traffic(box: Sandbox) -> None:
    host_ip = box.host(HOST).underlay_ip
    mac, ip = "fa:16:3e:44:00:0a", "10.44.0.10"
    box.vm_add(HOST, "mvm1", mac, f"{ip}/24", iface_id="port-m1")
    box.vm_exec("mvm1", ["ip", "addr", "flush", "dev", "eth0"], check=True)
    before = scrape(box)
    assert value(before, "aca_dataplane_ready") == 1

    message = gs.goal_state_v2(
        gs.vpc("vpc-m", 4400, "10.44.0.0/16"),
        gs.subnet("sn-m", "vpc-m", "10.44.0.0/24", 4400, gateway_ip="10.44.0.1", op=gs.INFO),
        gs.port("port-m1", "vpc-m", "sn-m", ip, mac, host_ip),
        gs.dhcp("dhcp-m1", "sn-m", mac, ip, "m1"),
        gs.neighbor("nb-m2", "vpc-m", "sn-m", "10.44.0.20", "fa:16:3e:44:00:14", "172.31.99.2"),
        host_ip=host_ip,
    )
    (reply,) = box.push_message(HOST, message)
    assert set(status_by_id(reply).values()) == {"SUCCESS"}, status_by_id(reply)
    after = scrape(box)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("aca_goal_states_total", source="grpc-v2", outcome="success") == 1
    for rtype in ("VPC", "PORT", "DHCP", "NEIGHBOR"):
        assert moved("aca_resource_statuses_total", type=rtype, status="SUCCESS") == 1, rtype
    for phase in ("config", "dataplane", "total"):
        assert moved("aca_goal_state_duration_seconds_count", phase=phase) == 1, phase
        assert moved("aca_goal_state_duration_seconds_sum", phase=phase) > 0, phase
    assert moved("aca_goal_state_duration_seconds_sum", phase="total") >= moved(
        "aca_goal_state_duration_seconds_sum", phase="dataplane"
    )
    # One bundle carried the goal state's flows; the mirror's per-table counts are what OVS holds.
    assert moved("aca_openflow_bundle_messages_count") == 1
    assert moved("aca_openflow_bundle_commit_seconds_count") == 1
    tables = by_label(after, "aca_flows_installed", "table")
    assert tables == ovs_flows_per_table(box)
    added = sum(tables.values()) - sum(by_label(before, "aca_flows_installed", "table").values())
    assert moved("aca_openflow_bundle_messages_sum") == added > 0
    kinds = by_label(after, "aca_flows_installed_by_owner_kind", "kind")
    assert sum(kinds.values()) == sum(tables.values())
    assert {"port", "neighbor", "dhcp", "segment"} <= kinds.keys()
    assert value(after, "aca_ports_pending") == 0 and value(after, "aca_owners_failed") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    assert ("aca_worker_queue_depth", frozenset()) in after

    # Bytes that are not a goal state: INVALID_ARGUMENT, and counted.
    with box.channel(HOST) as channel:
        push = channel.unary_unary(f"/{SERVICE}/PushNetworkResourceStates")
        with pytest.raises(grpc.RpcError) as refused:
            push(b"\xff\xff\xff", timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert value(scrape(box), "aca_grpc_undecodable_total") - value(after, "aca_grpc_undecodable_total") == 1

    # A real DHCP exchange: udhcpc gets its lease (DISCOVER → OFFER, REQUEST → ACK).
    got = box.vm_exec(
        "mvm1", ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-s", "/bin/true"]
    )
    assert got.returncode == 0, got.stderr
    dhcp = scrape(box)

    def sent(name: str, **labels: str) -> float:
        return value(dhcp, name, **labels) - value(after, name, **labels)

    discovers, requests = (
        sent("aca_dhcp_requests_total", type="discover"),
        sent("aca_dhcp_requests_total", type="request"),
    )
    assert discovers >= 1 and requests >= 1
    assert sent("aca_dhcp_replies_total", type="offer") == discovers
    assert sent("aca_dhcp_replies_total", type="ack") == requests
    assert sent("aca_dhcp_replies_total", type="nak") == 0
    assert sent("aca_dhcp_frames_total") >= discovers + requests
    assert sum(by_label(dhcp, "aca_dhcp_drops_total", "reason").values()) == sum(
        by_label(after, "aca_dhcp_drops_total", "reason").values()
    )
    assert value(dhcp, "aca_dhcp_send_errors_total") == 0


def health(sb: Sandbox) -> dict[str, str]:
    """The server's ("") and the goal-state service's status from grpc.health.v1."""
    with sb.channel(HOST) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            service: health_pb2.HealthCheckResponse.ServingStatus.Name(
                stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            )
            for service in ("", SERVICE)
        }


def test_health_is_not_serving_while_ovs_vswitchd_is_gone(box: Sandbox) -> None:
    serving = {"": "SERVING", SERVICE: "SERVING"}
    not_serving = {"": "NOT_SERVING", SERVICE: "NOT_SERVING"}
    wait_for(lambda: health(box) == serving, 30, "SERVING once started")
    reconnects = value(scrape(box), "aca_openflow_reconnects_total")
    ovs = box.ovs(HOST)
    ovs.stop_vswitchd(signal.SIGKILL)
    try:
        wait_for(lambda: health(box) == not_serving, 30, "NOT_SERVING with ovs-vswitchd killed")
        assert value(scrape(box), "aca_dataplane_ready") == 0
    finally:
        ovs.start_vswitchd()
    wait_for(lambda: health(box) == serving, 60, "SERVING again once the flows are replayed")
    after = scrape(box)
    assert value(after, "aca_dataplane_ready") == 1
    assert value(after, "aca_openflow_reconnects_total") == reconnects + 1
    # Serving again means the switch holds the agent's flows again.
    assert by_label(after, "aca_flows_installed", "table") == ovs_flows_per_table(box)


def test_kafka_intake_counts_and_consumer_lag() -> None:
    require_tansu()
    topic, group = f"host-{HOST}", f"aca-agent-{HOST}"
    with contextlib.ExitStack() as stack:
        sb = stack.enter_context(scratch_sandbox())
        host = sb.host_up(HOST, agent=False)
        broker = stack.enter_context(running_broker(netns=host.netns))
        stack.callback(sb.stop_agent, HOST)  # unwound first: the agent leaves while the broker is up
        broker.create_topic(topic)
        broker.create_topic(f"{topic}-replies")
        config = agent_config(host, broker, f"{topic}-replies", {"statistics.interval.ms": "500"})
        sb.restart_agent(HOST, agent_args=["--config", str(config), "--metrics-listen", str(METRICS_PORT)])
        message = gs.goal_state_v2(
            gs.vpc("vpc-k", 4500),
            gs.subnet("sn-k", "vpc-k", "10.45.0.0/24", 4500),
            gs.neighbor("nb-k1", "vpc-k", "sn-k", "10.45.0.9", "fa:16:3e:45:00:09", "172.31.99.3"),
            host_ip=host.underlay_ip,
        )
        applied = broker.produce(topic, message.SerializeToString())
        poison = broker.produce(topic, b"\xff\xff not a goal state")
        wait_for(lambda: committed_offset(broker, topic, group) == poison + 1, 30, "both records committed")
        assert poison == applied + 1
        got = scrape(sb)
        assert value(got, "aca_kafka_messages_total", result="applied") == 1
        assert value(got, "aca_kafka_messages_total", result="poison") == 1
        assert value(got, "aca_goal_states_total", source="kafka-v2", outcome="success") == 1
        assert value(got, "aca_resource_statuses_total", type="NEIGHBOR", status="SUCCESS") == 1
        assert ("aca_kafka_errors_total", frozenset()) in got
        # librdkafka's statistics (every 500 ms here) report the partition caught up.
        wait_for(
            lambda: (
                ("aca_kafka_consumer_lag", frozenset({("topic", topic), ("partition", "0")})) in scrape(sb)
            ),
            30,
            "the consumer lag of partition 0",
        )
        assert value(scrape(sb), "aca_kafka_consumer_lag", topic=topic, partition="0") == 0
