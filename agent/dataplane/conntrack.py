"""The connections OVS's conntrack holds, counted by (zone, label): a zone is a port (its
ofport), a label the security-group rule that allowed the connection (``Reg.SG_RULE``)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
from collections import Counter

_ZONE = re.compile(r",zone=(\d+)")
_LABELS = re.compile(r",labels=0x([0-9a-f]+)")


def vswitchd_target(rundir: str) -> str:
    """ovs-vswitchd's unixctl socket in ``rundir``: ``ovs-vswitchd.ctl`` when it was started with
    that name (the sandbox), else ``ovs-vswitchd.<pid>.ctl`` as the packaged service names it."""
    run = pathlib.Path(rundir)
    if (run / "ovs-vswitchd.ctl").exists():
        return str(run / "ovs-vswitchd.ctl")
    pid = (run / "ovs-vswitchd.pid").read_text().strip()
    return str(run / f"ovs-vswitchd.{pid}.ctl")


def parse(dump: str) -> Counter[tuple[int, int]]:
    """``ovs-appctl dpctl/dump-conntrack`` lines → connections per (zone, 32-bit label)."""
    counts: Counter[tuple[int, int]] = Counter()
    for line in dump.splitlines():
        zone, labels = _ZONE.search(line), _LABELS.search(line)
        if labels is not None:
            counts[(int(zone.group(1)) if zone else 0, int(labels.group(1), 16) & 0xFFFFFFFF)] += 1
    return counts


def labelled_connections(rundir: str, timeout: float = 10.0) -> Counter[tuple[int, int]]:
    """The switch's labelled connections now, per (zone, label). Raises OSError (with OVS's
    reason) when ovs-vswitchd cannot be asked."""
    try:
        target = vswitchd_target(rundir)
    except FileNotFoundError as exc:
        raise OSError(f"ovs-vswitchd is not running in {rundir}") from exc
    proc = subprocess.run(
        ["ovs-appctl", "-t", target, "dpctl/dump-conntrack"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OVS_RUNDIR": rundir},
    )
    if proc.returncode != 0:
        raise OSError(f"dpctl/dump-conntrack: {proc.stderr.strip()}")
    return parse(proc.stdout)
