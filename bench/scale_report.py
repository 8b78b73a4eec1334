"""Summary tables, findings, plots and the RESULT line of `bench.scale`, from its measurement rows.

Also usable on a saved CSV: `python -m bench.scale --report scale.csv --out DIR`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import pathlib
import statistics
from collections.abc import Iterable
from typing import Any

NUMERIC = (
    "op",
    "neighbours",
    "t_s",
    "latency_ms",
    "agent_ms",
    "config_ms",
    "dataplane_ms",
    "queue_ms",
    "wire_ms",
    "cpu_s",
    "rss_mb",
    "held_neighbours",
    "flows",
    "messages",
)
# The agent-side split of one reply, in the order a message goes through.
STAGES = (
    ("wire_ms", "transport+decode"),  # round trip minus the agent's total: gRPC/Kafka, decode, encode
    ("queue_ms", "agent queue"),  # waiting for the agent's worker thread
    ("config_ms", "state+persist"),  # network_configuration_time
    ("dataplane_ms", "plan+bundle"),  # dataplane_programming_time
)
PLOT_BINS = 20
GROWTH_OK_RATIO = 1.5  # programming time may grow this much over the run and still "follow the change"
GROWTH_WINDOW = 100  # reply p99 growth: the last this many ports against the first


def read_csv(path: pathlib.Path) -> list[dict[str, Any]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _normalise(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        r = dict(row)
        for key in NUMERIC:
            value = r.get(key)
            r[key] = None if value in ("", None) else float(value)
        out.append(r)
    return out


def pct(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (0 < p < 100); nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _edges(top: float, n: int) -> list[int]:
    """``n`` equal neighbour-count buckets covering 0..top."""
    step = max(math.ceil((top + 1) / n), 1)
    return [i * step for i in range(n + 1)]


def _bucket(value: float, edges: list[int]) -> int:
    for i in range(len(edges) - 1):
        if value < edges[i + 1]:
            return i
    return len(edges) - 2


def _label(edges: list[int], i: int) -> str:
    return f"{edges[i]}-{edges[i + 1] - 1}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


@dataclasses.dataclass
class Table:
    """Rows as dicts (column → value): printed as text, and written to summary.csv under ``name``."""

    name: str
    caption: str
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        header = list(dict.fromkeys(k for r in self.rows for k in r))
        body = [[_fmt(r.get(k, "")) for k in header] for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
        lines = ["  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)) for row in [header, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return f"{self.caption}\n" + "\n".join(lines)


def _latency(values: list[float], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}p50": pct(values, 50), f"{prefix}p95": pct(values, 95), f"{prefix}p99": pct(values, 99)}


class Data:
    def __init__(self, rows: list[dict[str, Any]], buckets: int) -> None:
        self.rows = _normalise(rows)
        self.transports = list(dict.fromkeys(r["transport"] for r in self.rows))
        self.replies = [r for r in self.rows if r["kind"] == "reply"]
        grow = [r for r in self.replies if r["workload"] == "grow"]
        top = max((r["neighbours"] for r in grow), default=0)
        self.edges = _edges(top, buckets)
        self.plot_edges = _edges(top, PLOT_BINS)

    def replies_of(self, transport: str, workload: str, roles: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        return [
            r
            for r in self.replies
            if r["transport"] == transport
            and r["workload"] == workload
            and (not roles or any(r["role"].startswith(x) for x in roles))
        ]

    @staticmethod
    def ops(replies: list[dict[str, Any]]) -> list[tuple[float, float]]:
        """(neighbours, time until every host replied) per operation."""
        done: dict[float, tuple[float, float]] = {}
        for r in replies:
            n, latency = done.get(r["op"], (r["neighbours"], 0.0))
            done[r["op"]] = (n, max(latency, r["latency_ms"]))
        return list(done.values())

    def by_bucket(self, items: list[Any], key: Any, edges: list[int] | None = None) -> list[list[Any]]:
        edges = edges or self.edges
        out: list[list[Any]] = [[] for _ in range(len(edges) - 1)]
        for item in items:
            out[_bucket(key(item), edges)].append(item)
        return out


def _growth(replies: list[dict[str, Any]], field: str, data: Data) -> tuple[float, float, float, float]:
    """(p50 first bucket, p50 last bucket, ratio, least-squares slope in µs per 1000 neighbours)."""
    buckets = [b for b in data.by_bucket(replies, lambda r: r["neighbours"]) if b]
    if len(buckets) < 2:
        return math.nan, math.nan, math.nan, math.nan
    first = pct([r[field] for r in buckets[0]], 50)
    last = pct([r[field] for r in buckets[-1]], 50)
    xs = [r["neighbours"] for r in replies]
    ys = [r[field] for r in replies]
    slope = statistics.linear_regression(xs, ys).slope * 1e6 if len(set(xs)) > 1 else math.nan
    return first, last, last / first if first else math.nan, slope


def report(
    rows: list[dict[str, Any]],
    out: pathlib.Path,
    buckets: int = 5,
    hosts: int | None = None,
    elapsed_s: float | None = None,
) -> str:
    """The summary as text (tables, findings, RESULT line); also writes summary.txt/.csv and the plots."""
    d = Data(rows, buckets)
    result: dict[str, str] = {
        "hosts": str(hosts or len({r["host"] for r in d.rows if r["kind"] == "resources"})),
        "ports": str(len({r["op"] for r in d.replies if r["workload"] == "grow"})),
    }
    grow = Table(
        "grow",
        "grow (a): one port at a time; time from the controller's send to each host's reply "
        "(ms), by the VPC's\nsize when the port was created; all hosts: until the last host replied",
    )
    split = Table(
        "grow-split",
        "grow (a): where the time goes, per reply, p50 / p99 (ms); transport+decode = "
        "round trip minus the agent's\ntotal, the rest from the reply's timing fields; plan+bundle "
        "split by message: port (own host) / neighbour",
    )
    update = Table(
        "update", "update (b): 1 port with multiple requests (port 0 updated while the VPC grows), ms"
    )
    burst = Table(
        "burst",
        "burst (c): ports created at once; per port, time from the burst's start until every "
        "host had replied (ms)",
    )
    ping = Table(
        "ping",
        "ping: sampled ports get a VM; time from the controller's send until it answers a ping "
        "from a VM on\nanother host (ms; grow: from the port's operation, burst: from the burst's start)",
    )
    agents = Table(
        "agents",
        "agents at the end, per host (CPU: utime+stime of the agent process; run: since "
        "the first goal state)",
    )
    for t in d.transports:
        # Headline figures: replies whose every resource programmed (SUCCESS); a PENDING port
        # (no interface on br-int yet) is held but not programmed: counted apart.
        every = d.replies_of(t, "grow")
        replies = [r for r in every if r["status"] == "SUCCESS"]
        pending = [r["latency_ms"] for r in every if "PENDING" in r["status"]]
        result[f"{t}_pending_replies"] = str(len(pending))
        if pending:
            result[f"{t}_pending_reply_p50_ms"] = f"{pct(pending, 50):.2f}"
        growth = _p99_growth(replies)
        if not math.isnan(growth):
            result[f"{t}_reply_p99_growth_first_last_{GROWTH_WINDOW}"] = f"{growth:.2f}"
        ops = d.ops(replies)
        op_buckets = d.by_bucket(ops, lambda o: o[0])
        for i, bucket in enumerate(d.by_bucket(replies, lambda r: r["neighbours"])):
            if not bucket:
                continue
            key = {"transport": t, "neighbours": _label(d.edges, i)}
            lat = [r["latency_ms"] for r in bucket]
            grow.rows.append({
                **key, "replies": len(bucket), **_latency(lat),
                "port host p50": pct([r["latency_ms"] for r in bucket if r["role"].startswith("port")], 50),
                "other hosts p50": pct([r["latency_ms"] for r in bucket if r["role"] == "neighbour"], 50),
                **_latency([o[1] for o in op_buckets[i]], "all hosts "),
            })  # fmt: skip
            row = dict(key)
            for field, name in STAGES:
                row[f"{name} p50"] = pct([r[field] for r in bucket], 50)
                row[f"{name} p99"] = pct([r[field] for r in bucket], 99)
            for role in ("port", "neighbour"):
                sub = [r["dataplane_ms"] for r in bucket if r["role"].startswith(role)]
                row[f"plan+bundle p50 {role}"] = pct(sub, 50)
            split.rows.append(row)
        lat = [r["latency_ms"] for r in replies]
        for k, v in {**_latency(lat), "all_hosts_p99": pct([o[1] for o in ops], 99)}.items():
            result[f"{t}_reply_{k}_ms" if k.startswith("p") else f"{t}_{k}_ms"] = f"{v:.2f}"

        replies = d.replies_of(t, "update")
        for i, bucket in enumerate(d.by_bucket(replies, lambda r: r["neighbours"])):
            if bucket:
                lat = [r["latency_ms"] for r in bucket]
                update.rows.append({
                    "transport": t, "neighbours": _label(d.edges, i), "updates": len(bucket), **_latency(lat),
                    "plan+bundle p50": pct([r["dataplane_ms"] for r in bucket], 50),
                })  # fmt: skip
        if replies:
            lat = [r["latency_ms"] for r in replies]
            result[f"{t}_update_p50_ms"], result[f"{t}_update_p99_ms"] = (
                f"{pct(lat, 50):.2f}",
                f"{pct(lat, 99):.2f}",
            )

        marker = [r for r in d.rows if r["kind"] == "burst" and r["transport"] == t]
        replies = d.replies_of(t, "burst")
        if marker and replies:
            ports, total_s = marker[0]["op"], marker[0]["latency_ms"] / 1e3
            done = [o[1] for o in d.ops(replies)]
            burst.rows.append({
                "transport": t, "ports": int(ports), "messages": len(replies),
                "VPC size after": int(marker[0]["neighbours"]), "total s": total_s,
                "ports/s": ports / total_s, **_latency(done),
            })  # fmt: skip
            result[f"{t}_burst_ports_per_s"] = f"{ports / total_s:.1f}"
            result[f"{t}_burst_p99_ms"] = f"{pct(done, 99):.1f}"

        for workload in ("grow", "burst"):
            pings = [
                r for r in d.rows if r["kind"] == "ping" and r["transport"] == t and r["workload"] == workload
            ]
            ok = [r["latency_ms"] for r in pings if r["latency_ms"] is not None]
            if pings:
                ping.rows.append({
                    "transport": t, "workload": workload, "sampled": len(pings), "answered": len(ok),
                    **_latency(ok), "max": max(ok, default=math.nan),
                })  # fmt: skip
            if pings and workload == "grow":
                result[f"{t}_ping_p50_ms"] = f"{pct(ok, 50):.2f}"
                result[f"{t}_pings_unanswered"] = str(len(pings) - len(ok))
            elif pings:  # with the kernel's ARP timers a VM gives up after 3 s without an answer
                result[f"{t}_burst_pings_unanswered"] = str(len(pings) - len(ok))

        samples = [r for r in d.rows if r["kind"] == "resources" and r["transport"] == t]
        if samples:
            first: dict[str, dict[str, Any]] = {}
            final: dict[str, dict[str, Any]] = {}
            for r in sorted(samples, key=lambda r: r["t_s"]):
                first.setdefault(r["host"], r)
                final[r["host"]] = r
            cpu = [r["cpu_s"] for r in final.values()]
            run_cpu = [r["cpu_s"] - first[h]["cpu_s"] for h, r in final.items()]
            rss = [r["rss_mb"] for r in final.values()]
            held = [int(r["held_neighbours"]) for r in final.values() if r["held_neighbours"] is not None]
            flows = [int(r["flows"]) for r in final.values() if r["flows"] is not None]
            agents.rows.append({
                "transport": t, "hosts": len(final),
                "CPU s mean": statistics.fmean(cpu), "CPU s max": max(cpu),
                "run CPU s mean": statistics.fmean(run_cpu),
                "RSS MB mean": statistics.fmean(rss), "RSS MB max": max(rss),
                "neighbours held": f"{min(held, default=0)}-{max(held, default=0)}",
                "flows": f"{min(flows, default=0)}-{max(flows, default=0)}",
            })  # fmt: skip
            broker = sorted((r for r in d.rows if r["kind"] == "broker" and r["transport"] == t),
                            key=lambda r: r["t_s"])  # fmt: skip
            if broker:
                agents.rows[-1]["broker run CPU s"] = broker[-1]["cpu_s"] - broker[0]["cpu_s"]
                result[f"{t}_broker_cpu_s"] = f"{broker[-1]['cpu_s'] - broker[0]['cpu_s']:.1f}"
            result[f"{t}_agent_cpu_s"] = f"{statistics.fmean(cpu):.2f}"
            result[f"{t}_agent_rss_mb"] = f"{max(rss):.1f}"

    _shared_comparison(d, result)
    tables = [t for t in (grow, split, update, burst, ping, agents) if t.rows]
    text = [t.text() + "\n" for t in tables]
    text.append("reply statuses (PENDING: the port has no interface on br-int; only sampled ports get a VM)")
    for t in d.transports:
        counts = collections.Counter(
            (r["workload"], r["role"].split("+")[0], r["status"]) for r in d.replies if r["transport"] == t
        )
        text.append(
            f"  {t}: " + ", ".join(f"{w}/{role} {st}={n}" for (w, role, st), n in sorted(counts.items()))
        )
    text += ["", "findings", *_findings(d, result)]

    if elapsed_s is not None:
        result["elapsed_s"] = f"{elapsed_s:.0f}"
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(d, out)
    text += ["", "plots: " + (", ".join(str(p) for p in plots) if plots else "none (matplotlib missing)")]
    summary = "\n".join(text)
    (out / "summary.txt").write_text(summary + "\n")
    _write_summary_csv(out / "summary.csv", tables)
    return summary + "\nRESULT " + " ".join(f"{k}={v}" for k, v in result.items())


def _p99_growth(replies: list[dict[str, Any]]) -> float:
    """Reply p99 over the last ``GROWTH_WINDOW`` ports against the first (half each when fewer)."""
    ports = sorted({r["op"] for r in replies})
    window = min(GROWTH_WINDOW, len(ports) // 2)
    if not window:
        return math.nan
    first, last = set(ports[:window]), set(ports[-window:])
    p99_first = pct([r["latency_ms"] for r in replies if r["op"] in first], 99)
    p99_last = pct([r["latency_ms"] for r in replies if r["op"] in last], 99)
    return p99_last / p99_first if p99_first else math.nan


def _shared_comparison(d: Data, result: dict[str, str]) -> None:
    """The shared-topic mode's keys: per change, the controller's publishes and publish time (first
    send → the broker's last ack) and the time until every host it names has answered (PENDING
    included: the port is applied, its VM is just not plugged), per-host topics against the VPC's."""
    modes = ("perhost", "shared")
    if not all(m in d.transports for m in modes):
        return
    publish_p50, all_p99 = {}, {}
    for m in modes:
        rows = [r for r in d.rows if r["kind"] == "publish" and r["transport"] == m]
        done = [o[1] for o in d.ops(d.replies_of(m, "grow"))]
        publish_p50[m], all_p99[m] = pct([r["latency_ms"] for r in rows], 50), pct(done, 99)
        result[f"{m}_publishes_per_change"] = f"{statistics.fmean(r['messages'] for r in rows):.2f}"
        result[f"{m}_publish_p50_ms"] = f"{publish_p50[m]:.3f}"
        result[f"{m}_publish_p99_ms"] = f"{pct([r['latency_ms'] for r in rows], 99):.3f}"
        result[f"{m}_all_hosts_applied_p50_ms"] = f"{pct(done, 50):.2f}"
        result[f"{m}_all_hosts_applied_p99_ms"] = f"{all_p99[m]:.2f}"
    result["shared_vs_per_host_ratio_all_hosts_p99"] = f"{all_p99['shared'] / all_p99['perhost']:.2f}"
    result["shared_vs_per_host_ratio_publish_p50"] = f"{publish_p50['shared'] / publish_p50['perhost']:.2f}"


def _findings(d: Data, result: dict[str, str]) -> list[str]:
    """The slowest stage, and how the agent's work and the reply time grow with the VPC."""
    lines = []
    for t in d.transports:
        replies = d.replies_of(t, "grow")
        if not replies:
            continue
        means = {name: statistics.fmean(r[field] for r in replies) for field, name in STAGES}
        slowest = max(means, key=means.__getitem__)
        result[f"{t}_slowest_stage"] = slowest
        total = sum(means.values())
        share = ", ".join(f"{name} {ms:.2f} ms ({ms / total:.0%})" for name, ms in means.items())
        lines.append(f"  {t}: slowest stage is {slowest}; mean per reply: {share}")
        for label, role, field in (
            ("plan+bundle, neighbour messages", "neighbour", "dataplane_ms"),
            ("plan+bundle, port messages", "port", "dataplane_ms"),
            ("state+persist, all messages", "", "config_ms"),
            ("reply time, all messages", "", "latency_ms"),
        ):
            first, last, ratio, slope = _growth([r for r in replies if r["role"].startswith(role)], field, d)
            if math.isnan(ratio):
                continue
            line = (f"  {t}: {label}: p50 {first:.2f} ms in the first bucket, {last:.2f} ms in the last "
                    f"(x{ratio:.2f}; fit {slope:+.1f} us per 1000 neighbours)")  # fmt: skip
            if field == "dataplane_ms":
                ok = ratio <= GROWTH_OK_RATIO
                line += ": follows the size of the change" if ok else ": GROWS with the size of the VPC"
            lines.append(line)
            if role == "neighbour":
                result[f"{t}_dataplane_p50_first_ms"] = f"{first:.3f}"
                result[f"{t}_dataplane_p50_last_ms"] = f"{last:.3f}"
                result[f"{t}_dataplane_growth_ratio"] = f"{ratio:.2f}"
            if field == "latency_ms":
                result[f"{t}_reply_growth_ratio"] = f"{ratio:.2f}"
    return lines


def _write_summary_csv(path: pathlib.Path, tables: list[Table]) -> None:
    fields = list(dict.fromkeys(["table", *(k for t in tables for r in t.rows for k in r)]))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for t in tables:
            for r in t.rows:
                writer.writerow(
                    {"table": t.name, **{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in r.items()}}
                )


def _plots(d: Data, out: pathlib.Path) -> list[pathlib.Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    colours = {"grpc": "tab:blue", "kafka": "tab:orange"}
    stage_colours = {
        "transport+decode": "tab:gray",
        "agent queue": "tab:purple",
        "state+persist": "tab:green",
        "plan+bundle": "tab:red",
    }
    styles = {"grpc": "-", "kafka": "--"}
    mids = [(d.plot_edges[i] + d.plot_edges[i + 1]) / 2 for i in range(len(d.plot_edges) - 1)]

    def series(replies: list[dict[str, Any]], field: str, p: float) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for x, bucket in zip(
            mids, d.by_bucket(replies, lambda r: r["neighbours"], d.plot_edges), strict=True
        ):
            if bucket:
                xs.append(x)
                ys.append(pct([r[field] for r in bucket], p))
        return xs, ys

    paths = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for t in d.transports:
        c = colours.get(t)
        grow = d.replies_of(t, "grow")
        left.plot(*series(grow, "latency_ms", 50), color=c, ls="-", marker=".", label=f"{t} reply p50")
        left.plot(*series(grow, "latency_ms", 99), color=c, ls="--", label=f"{t} reply p99")
        update = d.replies_of(t, "update")
        if update:
            left.plot(*series(update, "latency_ms", 50), color=c, ls=":", marker="x", label=f"{t} update p50")
        for field, name in STAGES:
            right.plot(
                *series(grow, field, 50),
                color=stage_colours[name],
                ls=styles.get(t, "-"),
                label=f"{t} {name}",
            )
    left.set(title="time to each host's reply (grow)", xlabel="ports in the VPC (neighbours)", ylabel="ms")
    right.set(title="per-reply split, p50 (grow)", xlabel="ports in the VPC (neighbours)", ylabel="ms")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "latency_vs_neighbours.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for t in d.transports:
        samples = [r for r in d.rows if r["kind"] == "resources" and r["transport"] == t]
        per_n: dict[float, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in samples:
            per_n[r["neighbours"]].append(r)
        xs = sorted(per_n)
        c = colours.get(t)
        left.plot(
            xs,
            [statistics.fmean(r["cpu_s"] for r in per_n[x]) for x in xs],
            color=c,
            marker=".",
            label=f"{t} mean per agent",
        )
        left.plot(xs, [max(r["cpu_s"] for r in per_n[x]) for x in xs], color=c, ls="--", label=f"{t} max")
        right.plot(
            xs,
            [statistics.fmean(r["rss_mb"] for r in per_n[x]) for x in xs],
            color=c,
            marker=".",
            label=f"{t} mean per agent",
        )
        right.plot(xs, [max(r["rss_mb"] for r in per_n[x]) for x in xs], color=c, ls="--", label=f"{t} max")
    left.set(title="agent CPU seconds (cumulative)", xlabel="ports in the VPC (neighbours)", ylabel="s")
    right.set(title="agent RSS", xlabel="ports in the VPC (neighbours)", ylabel="MB")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "resources_vs_neighbours.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths
