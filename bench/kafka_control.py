"""Control for bench.scale's Kafka growth: the same Kafka traffic with no agent and no OVS.

One tansu broker on loopback; ``--hosts`` agent-like clients, each consuming its topic
``host-<i>`` in its own group and, per record, producing a reply to ``host-<i>-replies`` (flushed)
and committing the record synchronously, as the agent does; a controller producing one 600-byte
record per host per round and a reader of every reply topic. Client settings are bench.scale's
(fetch.wait.max.ms=10, linger.ms=0). Three runs on fresh brokers: topics empty at the start;
topics already holding ``--prefill`` records (one batch each, as the bench's records are); and as
many records in as many other topics that nobody reads. If the reply time depends on what the
broker holds in the partitions being fetched, rather than on the clients' history or on data held
anywhere, the second run starts where the first ends and the third does not. ``--no-commit``
leaves out the commits.

    python -m bench.kafka_control                 # 8 hosts, 400 rounds, prefill 800 (a few minutes)
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from agent.sandbox.kafka import FAST_GROUP_OPTIONS, KafkaBroker, running_broker
from bench.common import environment
from bench.scale import PRODUCER_OPTIONS, READER_OPTIONS, agent_cpu_s

VALUE = b"m" * 600  # about a one-neighbour goal state


def _agent(broker: KafkaBroker, i: int, start: int, commit: bool, stop: threading.Event) -> None:
    consumer = Consumer(
        {**broker.client_config(), **FAST_GROUP_OPTIONS, **READER_OPTIONS,
         "group.id": f"agent-{i}", "enable.auto.commit": False}
    )  # fmt: skip
    producer = Producer({**broker.client_config(), **PRODUCER_OPTIONS})
    consumer.assign([TopicPartition(f"host-{i}", 0, start)])
    while not stop.is_set():
        msg = consumer.poll(0.1)
        if msg is None or msg.error() is not None:
            continue
        producer.produce(f"host-{i}-replies", b"r" * 60, headers=[("offset", str(msg.offset()))])
        producer.flush(10)
        if commit:
            consumer.commit(message=msg, asynchronous=False)
    consumer.close()


def run(hosts: int, rounds: int, prefill: int, unread: int, commit: bool) -> tuple[list[float], float]:
    """Per-round reply times (ms, every host's reply) and the broker's CPU seconds over the rounds;
    the clients' topics hold ``prefill`` records at the start, as many topics nobody reads ``unread``."""
    with running_broker() as broker:
        for i in range(hosts):
            for topic in (f"host-{i}", f"unread-{i}"):
                broker.create_topic(topic)
                broker.create_topic(f"{topic}-replies")
        producer = Producer({**broker.client_config(), **PRODUCER_OPTIONS})
        for n in range(max(prefill, unread)):  # one flush per record: one batch each, as in bench.scale
            for i in range(hosts):
                for topic, fill in ((f"host-{i}", prefill), (f"unread-{i}", unread)):
                    if n < fill:
                        producer.produce(topic, VALUE)
                        producer.produce(f"{topic}-replies", b"r" * 60, headers=[("offset", "-1")])
            producer.flush(10)
        stop, arrived, cond = threading.Event(), {}, threading.Condition()

        def read() -> None:
            reader = Consumer({**broker.client_config(), **READER_OPTIONS, "group.id": "reader"})
            reader.assign([TopicPartition(f"host-{i}-replies", 0, prefill) for i in range(hosts)])
            while not stop.is_set():
                msg = reader.poll(0.05)
                if msg is None or msg.error() is not None:
                    continue
                with cond:
                    arrived[(msg.topic(), int(dict(msg.headers())["offset"]))] = time.perf_counter()
                    cond.notify_all()
            reader.close()

        threads = [
            threading.Thread(target=_agent, args=(broker, i, prefill, commit, stop)) for i in range(hosts)
        ]
        threads.append(threading.Thread(target=read))
        for thread in threads:
            thread.start()
        times: list[float] = []
        cpu = agent_cpu_s(broker.pid or 0)
        try:
            for r in range(prefill, prefill + rounds):
                t0 = time.perf_counter()
                for i in range(hosts):
                    producer.produce(f"host-{i}", VALUE)
                producer.poll(0)
                keys = [(f"host-{i}-replies", r) for i in range(hosts)]
                with cond:
                    if not cond.wait_for(lambda keys=keys: all(k in arrived for k in keys), timeout=60):
                        raise TimeoutError(f"round {r - prefill}: not every reply within 60 s")
                times += [(arrived[k] - t0) * 1e3 for k in keys]
            cpu = agent_cpu_s(broker.pid or 0) - cpu
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        return times, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kafka_control", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--prefill", type=int, default=800, help="records per topic before the second run")
    p.add_argument("--no-commit", action="store_true", help="agents do not commit")
    args = p.parse_args(argv)
    print(f"# {environment()}")
    result = {"hosts": args.hosts, "rounds": args.rounds, "commit": "off" if args.no_commit else "sync"}
    runs = (("empty", 0, 0), ("prefilled", args.prefill, 0), ("unread_prefilled", 0, args.prefill))
    for label, prefill, unread in runs:
        times, cpu = run(args.hosts, args.rounds, prefill, unread, not args.no_commit)
        tenth = len(times) // 10
        first, last = statistics.median(times[:tenth]), statistics.median(times[-tenth:])
        print(f"{label} ({prefill} records in the topics read, {unread} in unread ones): reply p50 "
              f"first tenth {first:.1f} ms, last tenth {last:.1f} ms; broker CPU {cpu:.1f} s")  # fmt: skip
        result |= {f"{label}_first_p50_ms": f"{first:.2f}", f"{label}_last_p50_ms": f"{last:.2f}",
                   f"{label}_broker_cpu_s": f"{cpu:.1f}"}  # fmt: skip
    result["prefill"] = args.prefill
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
