"""The C DHCP engine through cffi, on scapy-crafted frames: protocol, options, isolation, drops."""

from __future__ import annotations

import ipaddress
import pathlib
import struct

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import mac2str

from agent.dhcp.engine import Engine, EngineError
from agent.dhcp.leases import Settings, profile
from agent.model.resources import KeyValue, ResourceType, Router, RoutingRule, Subnet, SubnetRoutes
from agent.model.state import DesiredState

CORPUS = pathlib.Path(__file__).parents[2] / "native" / "fuzz-corpus"
MAC = "fa:16:3e:00:00:0a"
OTHER_MAC = "fa:16:3e:00:00:0b"
GW = "10.1.0.1"
VNI_A, VNI_B = 100, 200
PORT_A, PORT_B = 5, 6
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)


def tag(ofport: int) -> str:
    return "0a:ca:" + ":".join(f"{b:02x}" for b in ofport.to_bytes(4, "big"))


def frame(
    msg_type: int,
    mac: str = MAC,
    ofport: int = PORT_A,
    options: list = (),  # type: ignore[assignment]
    prl: list[int] | None = None,
    flags: int = 0,
    ciaddr: str = "0.0.0.0",
    xid: int = 0x1234,
    dst: tuple[str, str] = ("ff:ff:ff:ff:ff:ff", "255.255.255.255"),  # (MAC, IP)
) -> bytes:
    opts: list = [("message-type", msg_type), *options]
    if prl is not None:
        opts.append(("param_req_list", prl))
    opts.append("end")
    return bytes(
        Ether(src=tag(ofport), dst=dst[0])
        / IP(src=ciaddr, dst=dst[1])
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac2str(mac), xid=xid, flags=flags, ciaddr=ciaddr)
        / DHCP(options=opts)
    )


def options_of(reply: bytes) -> dict[int, bytes]:
    """Option code → value of a reply, walked by hand (independent of the engine's encoder)."""
    data = reply[14 + 20 + 8 + 240 :]
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, n = data[i], data[i + 1]
        assert code not in out, f"option {code} sent twice"
        out[code] = data[i + 2 : i + 2 + n]
        i += 2 + n
    assert i < len(data), "no END option"
    return out


def msg_type(reply: bytes) -> int:
    return options_of(reply)[53][0]


def ip4(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


SUBNET_A = Subnet(
    "sub-a", 1, "vpc-a", "10.1.0.0/24", VNI_A, gateway_ip=GW, dhcp_enable=True,
    dns=("10.1.0.2", "8.8.8.8"),
    extra_dhcp_options=(KeyValue("domain-name", "a.example"), KeyValue("ntp-server", "10.1.0.3")),
)  # fmt: skip
SUBNET_B = Subnet("sub-b", 1, "vpc-b", "10.1.0.0/24", VNI_B, gateway_ip="10.1.0.254", dhcp_enable=True)


@pytest.fixture
def engine() -> Engine:
    state = DesiredState()
    state.resources[ResourceType.SUBNET] = {"sub-a": SUBNET_A, "sub-b": SUBNET_B}
    state.resources[ResourceType.ROUTER] = {
        "r1": Router(
            "r1", 1, subnets=(SubnetRoutes("sub-a", (RoutingRule("rt", "192.168.0.0/16", "10.1.0.9"),)),)
        )
    }
    eng = Engine()
    for handle, subnet in ((1, SUBNET_A), (2, SUBNET_B)):
        prof = profile(state, subnet, Settings(mtu=1450, lease_time=3600))
        eng.set_subnet(handle, prof.server_ip, prof.lease_time, prof.options)
    eng.set_lease(VNI_A, MAC, "10.1.0.10", 1, "vm-a")
    eng.set_lease(VNI_B, MAC, "10.1.0.20", 2, "vm-b")
    eng.set_port(PORT_A, VNI_A, [MAC])
    eng.set_port(PORT_B, VNI_B, [])
    eng.set_rate_limit(0, 1)
    yield eng
    eng.close()


def test_direct_replies_carry_a_real_source(engine: Engine) -> None:
    """A port whose device is known gets replies sent straight to it: real source, no tag."""
    engine.set_direct(PORT_A, 7, "fa:16:3e:99:00:01")
    offer = Ether(engine.handle(frame(DISCOVER)))
    assert offer.src == "fa:16:3e:99:00:01" and offer[BOOTP].yiaddr == "10.1.0.10"
    assert offer[IP].src == GW and offer[UDP].dport == 68
    engine.set_port(PORT_A, VNI_A, [MAC])  # re-declared: back through OVS until told again
    assert Ether(engine.handle(frame(DISCOVER))).src == tag(PORT_A)
    with pytest.raises(EngineError):
        engine.set_direct(99, 7, "fa:16:3e:99:00:01")  # not a declared port


def test_dora_gives_the_lease_with_every_option(engine: Engine) -> None:
    offer = engine.handle(frame(DISCOVER))
    assert msg_type(offer) == OFFER
    pkt = Ether(offer)
    assert pkt[BOOTP].yiaddr == "10.1.0.10" and pkt[BOOTP].xid == 0x1234 and pkt[BOOTP].op == 2
    assert pkt.src == tag(PORT_A), "the reply carries the asking port for OVS"
    assert pkt[IP].src == GW and pkt[UDP].sport == 67 and pkt[UDP].dport == 68
    ack = engine.handle(frame(REQUEST, options=[("requested_addr", "10.1.0.10"), ("server_id", GW)]))
    assert msg_type(ack) == ACK
    assert Ether(ack)[BOOTP].yiaddr == "10.1.0.10"
    opts = options_of(ack)
    assert ip4(opts[1]) == "255.255.255.0"
    assert ip4(opts[3]) == GW
    assert opts[6] == ipaddress.IPv4Address("10.1.0.2").packed + ipaddress.IPv4Address("8.8.8.8").packed
    assert opts[12] == b"vm-a"
    assert opts[15] == b"a.example"
    assert struct.unpack("!H", opts[26])[0] == 1450
    assert ip4(opts[28]) == "10.1.0.255"
    assert ip4(opts[42]) == "10.1.0.3"
    assert struct.unpack("!I", opts[51])[0] == 3600
    assert ip4(opts[54]) == GW, "server id is the gateway, never 127.0.0.1"
    assert struct.unpack("!I", opts[58])[0] == 1800
    assert struct.unpack("!I", opts[59])[0] == 3150
    # RFC 3442: 16 192 168 10.1.0.9, then the default route 0 10.1.0.1
    assert opts[121] == bytes([16, 192, 168, 10, 1, 0, 9, 0, 10, 1, 0, 1])
    counters = engine.counters()
    assert counters["rx_discover"] == 1 and counters["tx_offer"] == 1
    assert counters["rx_request"] == 1 and counters["tx_ack"] == 1


def test_checksums_are_valid(engine: Engine) -> None:
    reply = engine.handle(frame(DISCOVER))
    pkt = Ether(reply)
    ip_sum, udp_sum = pkt[IP].chksum, pkt[UDP].chksum
    del pkt[IP].chksum, pkt[UDP].chksum
    again = Ether(bytes(pkt))
    assert (again[IP].chksum, again[UDP].chksum) == (ip_sum, udp_sum)
    assert len(pkt[BOOTP]) >= 300, "BOOTP minimum size for old clients"


def test_request_for_another_address_gets_nak_broadcast(engine: Engine) -> None:
    nak = engine.handle(frame(REQUEST, options=[("requested_addr", "10.1.0.99")]))
    assert msg_type(nak) == NAK
    pkt = Ether(nak)
    assert pkt.dst == "ff:ff:ff:ff:ff:ff" and pkt[IP].dst == "255.255.255.255"
    assert pkt[BOOTP].yiaddr == "0.0.0.0"
    assert 51 not in options_of(nak)
    assert engine.counters()["tx_nak"] == 1


def test_request_for_another_server_is_ignored(engine: Engine) -> None:
    req = frame(REQUEST, options=[("requested_addr", "10.1.0.10"), ("server_id", "10.1.0.77")])
    assert engine.handle(req) == b""
    assert engine.counters()["drop_other_server"] == 1


def test_renewal_with_ciaddr_is_acked_unicast(engine: Engine) -> None:
    ack = engine.handle(frame(REQUEST, ciaddr="10.1.0.10"))
    assert msg_type(ack) == ACK
    pkt = Ether(ack)
    assert pkt.dst == MAC and pkt[IP].dst == "10.1.0.10" and pkt[BOOTP].ciaddr == "10.1.0.10"


def test_unicast_renewal_to_the_server_id_is_acked_unicast(engine: Engine) -> None:
    """A renew at T1 goes to the server id: the gateway's IP and the MAC its ARP answer gave. The
    engine takes it like any request and answers from the server id at ciaddr."""
    ack = engine.handle(frame(REQUEST, ciaddr="10.1.0.10", dst=("02:ac:a0:00:00:43", GW)))
    assert msg_type(ack) == ACK and ip4(options_of(ack)[54]) == GW
    pkt = Ether(ack)
    assert (pkt.dst, pkt[IP].src, pkt[IP].dst) == (MAC, GW, "10.1.0.10")
    assert (pkt[UDP].sport, pkt[UDP].dport, pkt[BOOTP].yiaddr) == (67, 68, "10.1.0.10")


def test_inform_gets_ack_without_lease_times(engine: Engine) -> None:
    ack = engine.handle(frame(INFORM, ciaddr="10.1.0.10"))
    assert msg_type(ack) == ACK
    opts = options_of(ack)
    assert not {51, 58, 59} & set(opts)
    assert ip4(opts[54]) == GW and 1 in opts
    assert Ether(ack)[BOOTP].yiaddr == "0.0.0.0"
    assert engine.counters()["rx_inform"] == 1


def test_release_and_decline_free_nothing(engine: Engine) -> None:
    assert engine.handle(frame(RELEASE, ciaddr="10.1.0.10")) == b""
    assert engine.handle(frame(DECLINE, options=[("requested_addr", "10.1.0.10")])) == b""
    assert Ether(engine.handle(frame(DISCOVER)))[BOOTP].yiaddr == "10.1.0.10"
    counters = engine.counters()
    assert counters["rx_release"] == 1 and counters["rx_decline"] == 1


def test_broadcast_flag_is_honoured(engine: Engine) -> None:
    unicast = Ether(engine.handle(frame(DISCOVER)))
    assert unicast.dst == MAC and unicast[IP].dst == "10.1.0.10"
    bcast = Ether(engine.handle(frame(DISCOVER, flags=0x8000)))
    assert bcast.dst == "ff:ff:ff:ff:ff:ff" and bcast[IP].dst == "255.255.255.255"
    assert bcast[BOOTP].flags == 0x8000


def test_parameter_request_list_is_honoured_in_order(engine: Engine) -> None:
    reply = engine.handle(frame(DISCOVER, prl=[3, 1, 26]))
    opts = options_of(reply)
    assert set(opts) == {53, 54, 51, 58, 59, 3, 1, 26}
    codes = []
    data = reply[14 + 20 + 8 + 240 :]
    i = 0
    while data[i] != 255:
        codes.append(data[i])
        i += 2 + data[i + 1]
    assert [c for c in codes if c in (3, 1, 26)] == [3, 1, 26]


def test_unknown_mac_gets_no_answer(engine: Engine) -> None:
    engine.set_port(PORT_A, VNI_A, [])  # the port may ask for any MAC of its network
    assert engine.handle(frame(DISCOVER, mac=OTHER_MAC)) == b""
    assert engine.counters()["drop_no_lease"] == 1


def test_port_may_only_ask_for_its_own_macs(engine: Engine) -> None:
    engine.set_lease(VNI_A, OTHER_MAC, "10.1.0.11", 1)
    assert engine.handle(frame(DISCOVER, mac=OTHER_MAC)) == b""
    assert engine.counters()["drop_mac_not_allowed"] == 1


def test_same_mac_on_two_networks_gets_each_networks_lease(engine: Engine) -> None:
    a = Ether(engine.handle(frame(DISCOVER, ofport=PORT_A)))
    b = Ether(engine.handle(frame(DISCOVER, ofport=PORT_B)))
    assert (a[BOOTP].yiaddr, a[IP].src) == ("10.1.0.10", GW)
    assert (b[BOOTP].yiaddr, b[IP].src) == ("10.1.0.20", "10.1.0.254")
    assert b.src == tag(PORT_B)
    assert options_of(engine.handle(frame(DISCOVER, ofport=PORT_B)))[12] == b"vm-b"


def test_deleted_lease_and_unknown_port_stop_answers(engine: Engine) -> None:
    engine.del_lease(VNI_A, MAC)
    assert engine.handle(frame(DISCOVER)) == b""
    assert engine.handle(frame(DISCOVER, ofport=99)) == b""
    counters = engine.counters()
    assert counters["drop_no_lease"] == 1 and counters["drop_unknown_port"] == 1
    assert engine.sizes() == {"leases": 1, "ports": 2, "subnets": 2}


def test_rate_limit_is_per_port(engine: Engine) -> None:
    engine.set_rate_limit(10, 3)
    engine.set_port(7, VNI_A, [])  # a new port starts with a full bucket of 3
    engine.set_lease(VNI_A, OTHER_MAC, "10.1.0.11", 1)
    t = 1_000_000_000
    answered = [engine.handle(frame(DISCOVER, mac=OTHER_MAC, ofport=7), now_ns=t) != b"" for _ in range(10)]
    assert answered == [True] * 3 + [False] * 7
    assert engine.counters()["drop_rate_limited"] == 7
    # the other port is not starved, and tokens come back with time (10/s: one per 100 ms)
    engine.set_port(8, VNI_A, [])
    assert engine.handle(frame(DISCOVER, mac=OTHER_MAC, ofport=8), now_ns=t) != b""
    assert engine.handle(frame(DISCOVER, mac=OTHER_MAC, ofport=7), now_ns=t + 150_000_000) != b""


def _dhcp_offset() -> int:
    return 14 + 20 + 8


def _malformed() -> dict[str, tuple[bytes, str]]:
    good = frame(DISCOVER)
    opts_at = _dhcp_offset() + 240
    bad_cookie = bytearray(good)
    bad_cookie[opts_at - 4 : opts_at] = b"\x00\x00\x00\x00"
    no_end = bytes(
        Ether(src=tag(PORT_A)) / IP() / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac2str(MAC)) / DHCP(options=[("message-type", DISCOVER)])
    )  # fmt: skip
    wrong_size = bytearray(good)
    wrong_size[opts_at + 1] = 2  # message type with length 2
    overlong = bytearray(good)
    overlong[opts_at + 1] = 200  # message type claiming 200 bytes, past the end
    short_ip = bytearray(good)
    short_ip[14 + 2 : 14 + 4] = (len(good) + 40).to_bytes(2, "big")  # IP total length past the frame
    bad_udp = bytearray(good)
    bad_udp[14 + 20 + 4 : 14 + 20 + 6] = (3).to_bytes(2, "big")
    huge = bytes(
        Ether(src=tag(PORT_A)) / IP() / UDP(sport=68, dport=67) / BOOTP(chaddr=mac2str(MAC))
        / DHCP(options=[("message-type", DISCOVER)] + [(224, b"x" * 250)] * 6 + ["end"])
    )  # fmt: skip
    no_type = bytes(
        Ether(src=tag(PORT_A)) / IP() / UDP(sport=68, dport=67) / BOOTP(chaddr=mac2str(MAC))
        / DHCP(options=[("hostname", b"x"), "end"])
    )  # fmt: skip
    return {
        "truncated_frame": (good[:100], "drop_truncated"),
        "truncated_ip": (bytes(short_ip), "drop_truncated"),
        "no_end_option": (no_end, "drop_truncated"),
        "wrong_magic_cookie": (bytes(bad_cookie), "drop_bad_cookie"),
        "bad_option_length": (bytes(wrong_size), "drop_bad_option"),
        "overlong_option": (bytes(overlong), "drop_overlong"),
        "overlong_message": (huge, "drop_overlong"),
        "bad_udp_length": (bytes(bad_udp), "drop_bad_length"),
        "no_message_type": (no_type, "drop_bad_msg_type"),
        "offer_from_a_client": (frame(OFFER), "drop_bad_msg_type"),
        "not_dhcp": (
            bytes(Ether(src=tag(PORT_A)) / IP() / UDP(sport=68, dport=53) / (b"x" * 300)),
            "drop_not_dhcp",
        ),
    }


@pytest.mark.parametrize("case", sorted(_malformed()))
def test_malformed_frames_are_dropped_and_counted(engine: Engine, case: str) -> None:
    data, counter = _malformed()[case]
    assert engine.handle(data) == b""
    counters = engine.counters()
    assert counters[counter] == 1, {k: v for k, v in counters.items() if v}
    assert engine.handle(frame(DISCOVER)) != b"", "valid clients are still answered"


def test_every_prefix_of_a_valid_frame_is_handled(engine: Engine) -> None:
    good = frame(REQUEST, options=[("requested_addr", "10.1.0.10")], prl=list(range(1, 80)))
    for n in range(len(good)):
        assert engine.handle(good[:n]) == b""
    assert engine.handle(good) != b""


def fuzz_input(data: bytes) -> bytes:
    """The frame native/fuzz_dhcp.c makes of an input: an odd first byte forces a port's tag."""
    head, frame_ = data[:1], bytearray(data[1:])
    if head and head[0] & 1 and len(frame_) >= 12:
        frame_[6:12] = bytes([0x0A, 0xCA, 0, 0, 0, 6 if head[0] & 2 else 5])
    return bytes(frame_)


def test_fuzz_regression_corpus_replays_without_crashing(engine: Engine) -> None:
    """Seeds and crash inputs of the fuzzer (native/fuzz-corpus) are handled; a crash kills pytest."""
    inputs = sorted(CORPUS.glob("*"))
    assert inputs, "the regression corpus is missing"
    engine.set_port(PORT_B, VNI_A, [])
    for path in inputs:
        engine.handle(fuzz_input(path.read_bytes()))
    assert engine.counters()["tx_offer"] >= 1, "the seeds include valid requests"
    assert engine.handle(frame(DISCOVER)) != b""


def test_profile_rejects_malformed_tlvs() -> None:
    eng = Engine()
    with pytest.raises(Exception, match="options rejected"):
        eng.set_subnet(1, GW, 60, bytes([1, 10, 0]))
    eng.close()


def test_relay_agent_port_with_many_pair_macs_is_answered_at_its_giaddr(engine: Engine) -> None:
    """A VM relaying for 200 clients (their MACs are its allowed address pairs): the reply goes to
    giaddr:67 and to the port's own MAC, as perfdhcp (bench/dhcp_rate.py) needs."""
    clients = [f"fa:16:3e:c0:00:{i:02x}" for i in range(200)]
    for i, mac in enumerate(clients):
        engine.set_lease(VNI_A, mac, f"10.1.0.{50 + i}", 1)
    engine.set_port(PORT_A, VNI_A, [MAC, *clients])
    relayed = bytes(
        Ether(src=tag(PORT_A), dst="ff:ff:ff:ff:ff:ff")
        / IP(src="10.1.0.10", dst=GW)
        / UDP(sport=67, dport=67)
        / BOOTP(chaddr=mac2str(clients[-1]), xid=9, giaddr="10.1.0.10", hops=1)
        / DHCP(options=[("message-type", DISCOVER), "end"])
    )
    reply = Ether(engine.handle(relayed))
    assert (reply.dst, reply[IP].dst, reply[UDP].dport) == (MAC, "10.1.0.10", 67)
    assert (reply[BOOTP].yiaddr, reply[BOOTP].giaddr) == ("10.1.0.249", "10.1.0.10")
    assert msg_type(bytes(reply)) == OFFER
    with pytest.raises(Exception, match="rejected"):
        engine.set_port(PORT_A, VNI_A, [MAC] * 1025)


def test_io_thread_status_before_start_and_after_a_failed_start(engine: Engine) -> None:
    assert engine.io_status() == (0, 0)  # not started: not running, no error
    with pytest.raises(OSError):
        engine.start_io("aca-no-such0")
    assert engine.io_status() == (0, 0)  # a failed start is the caller's error, never the thread's
