"""The C route engine through cffi, on scapy-crafted punted frames: the DVR rewrite (checksums
checked by scapy), TTL, malformed frames, the punt queue and hit events, counters, reset."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from agent.routing.engine import Hit, Punt, RouteEngine, Verdict, punted_fields

TAG, OTHER_TAG = 0x12345678, 0x0BADF00D
SRC_VNI, DST_VNI, VLAN = 101, 102, 7
DVR_MAC = "fe:16:11:00:00:01"
GW_MAC = "fa:16:3e:aa:00:02"
DEST = ("10.1.2.20", "fa:16:3e:00:00:0b")


def punted(
    dst: str = DEST[0], ttl: int = 64, tag: int = TAG, vni: int = SRC_VNI, payload: object = None
) -> bytes:
    """A frame as OVS punts it: 0a:cb + router tag as source, 0a:cb:00 + VNI as destination."""
    eth = Ether(
        src="0a:cb:" + ":".join(f"{b:02x}" for b in tag.to_bytes(4, "big")),
        dst="0a:cb:00:" + ":".join(f"{b:02x}" for b in vni.to_bytes(3, "big")),
    )
    return bytes(eth / IP(src="10.1.1.10", dst=dst, ttl=ttl) / (payload or ICMP(id=7, seq=1) / (b"x" * 40)))


@pytest.fixture
def engine() -> RouteEngine:
    eng = RouteEngine(queue_cap=4)
    eng.set_router(TAG, DVR_MAC)
    eng.set_segment(DST_VNI, VLAN)
    eng.set_dest(TAG, DEST[0], DEST[1], DVR_MAC, DST_VNI)
    eng.set_hit_interval(0)
    yield eng
    eng.close()


def test_known_destination_is_rewritten_with_a_valid_checksum(engine: RouteEngine) -> None:
    sent = punted(ttl=64)
    verdict, out = engine.rewrite(sent)
    assert verdict is Verdict.FORWARD
    frame = Ether(out)
    assert (frame.src, frame.dst) == (DVR_MAC, DEST[1])
    assert frame[Dot1Q].vlan == VLAN and frame[Dot1Q].type == 0x0800
    ip = frame[IP]
    assert ip.ttl == 63
    got = ip.chksum
    del ip.chksum
    assert IP(bytes(ip))[IP].chksum == got  # scapy recomputes it from scratch
    assert bytes(frame[IP].payload) == bytes(Ether(sent)[IP].payload)  # the rest untouched
    assert engine.counters()["forwarded"] == 1


@pytest.mark.parametrize("ttl", [2, 17, 255])
def test_incremental_checksum_matches_a_full_recompute_for_any_ttl(engine: RouteEngine, ttl: int) -> None:
    sent = punted(ttl=ttl, payload=TCP(sport=1234, dport=80, flags="S"))
    _verdict, out = engine.rewrite(sent)
    ip = Ether(out)[IP]
    assert ip.ttl == ttl - 1
    recomputed = ip.copy()
    del recomputed.chksum
    assert IP(bytes(recomputed)).chksum == ip.chksum


def test_local_destination_gets_its_gateway_mac_as_source(engine: RouteEngine) -> None:
    engine.set_dest(TAG, "10.1.2.30", "fa:16:3e:00:00:0c", GW_MAC, DST_VNI)
    _verdict, out = engine.rewrite(punted(dst="10.1.2.30"))
    assert (Ether(out).src, Ether(out).dst) == (GW_MAC, "fa:16:3e:00:00:0c")


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_one_or_zero_is_not_forwarded(engine: RouteEngine, ttl: int) -> None:
    assert engine.rewrite(punted(ttl=ttl)) == (Verdict.DROP, b"")
    assert engine.counters()["drop_ttl"] == 1 and engine.counters()["forwarded"] == 0


def test_truncated_frames_are_rejected(engine: RouteEngine) -> None:
    whole = punted()
    for cut in (0, 5, 13, 14, 20, 33):
        assert engine.rewrite(whole[:cut])[0] is Verdict.DROP, cut
    # IP total length beyond the frame; an IHL longer than the total length.
    assert engine.rewrite(whole[: len(whole) - 1])[0] is Verdict.DROP
    options = punted(payload=ICMP())
    bad_ihl = options[:14] + bytes([0x4F]) + options[15:]
    assert engine.rewrite(bad_ihl)[0] is Verdict.DROP
    c = engine.counters()
    assert c["drop_truncated"] == 7 and c["drop_bad_header"] == 1 and c["forwarded"] == 0


def test_non_ipv4_and_bad_headers_are_rejected(engine: RouteEngine) -> None:
    head = punted()[:12]
    arp = head + bytes(Ether(type=0x0806) / ARP())[12:]
    v6 = head + bytes(Ether() / IPv6(dst="fe80::1"))[12:]
    version6_in_v4_type = punted()[:14] + bytes([0x65]) + punted()[15:]
    short_ihl = punted()[:14] + bytes([0x44]) + punted()[15:]
    for frame in (arp, v6, version6_in_v4_type):
        assert engine.rewrite(frame)[0] is Verdict.DROP
    assert engine.rewrite(short_ihl)[0] is Verdict.DROP
    c = engine.counters()
    assert c["drop_not_ipv4"] == 3 and c["drop_bad_header"] == 1


def test_untagged_frames_and_unknown_routers_are_dropped(engine: RouteEngine) -> None:
    plain = bytes(Ether(src="fa:16:3e:00:00:0a", dst=GW_MAC) / IP(dst=DEST[0]) / ICMP())
    assert engine.rewrite(plain)[0] is Verdict.DROP
    assert engine.rewrite(punted(tag=OTHER_TAG))[0] is Verdict.DROP
    c = engine.counters()
    assert c["drop_no_tag"] == 1 and c["drop_unknown_router"] == 1


def test_unknown_destination_is_punted_and_the_queue_is_bounded(engine: RouteEngine) -> None:
    frames = [punted(dst=f"10.1.2.{i}") for i in range(100, 106)]
    assert [engine.rewrite(f)[0] for f in frames] == [Verdict.PUNT] * 4 + [Verdict.DROP] * 2
    assert engine.sizes()["queued"] == 4
    got = [engine.next_event(0.1) for _ in range(4)]
    assert got == [Punt(f) for f in frames[:4]]
    assert punted_fields(frames[0]) == (TAG, SRC_VNI)
    assert engine.next_event(0.01) is None
    c = engine.counters()
    assert c["punted"] == 4 and c["drop_queue_full"] == 2


def test_hits_are_reported_once_per_interval(engine: RouteEngine) -> None:
    engine.set_hit_interval(60)
    for _ in range(3):
        assert engine.rewrite(punted())[0] is Verdict.FORWARD
    assert engine.next_event(0.05) == Hit(TAG, DEST[0])
    assert engine.next_event(0.01) is None
    assert engine.counters()["forwarded"] == 3


def test_missing_segment_index_drops(engine: RouteEngine) -> None:
    engine.del_segment(DST_VNI)
    assert engine.rewrite(punted())[0] is Verdict.DROP
    assert engine.counters()["drop_no_segment"] == 1


def test_deleted_destination_is_punted_again_and_clear_resets_everything(engine: RouteEngine) -> None:
    engine.del_dest(TAG, DEST[0])
    assert engine.rewrite(punted())[0] is Verdict.PUNT
    engine.wake()
    with pytest.raises(EOFError):
        engine.next_event(1)
    engine.clear()
    assert engine.sizes() == {"routers": 0, "segments": 0, "destinations": 0, "queued": 0}
    assert set(engine.counters().values()) == {0}
    assert engine.next_event(0.01) is None  # clear also ends the shutdown state


def test_bench_entry_point_rewrites_in_a_tight_loop(engine: RouteEngine) -> None:
    assert engine.bench(punted(), 10_000) > 0
    assert engine.counters()["forwarded"] == 0  # the benchmark does not count


def test_inject_without_io_reports_the_socket_error(engine: RouteEngine) -> None:
    with pytest.raises(OSError):
        engine.inject(punted())
    assert engine.counters()["tx_errors"] == 1


def test_io_thread_status_before_start_and_after_a_failed_start(engine: RouteEngine) -> None:
    assert engine.io_status() == (0, 0)  # not started: not running, no error
    with pytest.raises(OSError):
        engine.start_io("aca-no-such0")
    assert engine.io_status() == (0, 0)  # a failed start is the caller's error, never the thread's
