"""Counting conntrack's labelled connections per (zone, label) from ``dpctl/dump-conntrack``."""

from agent.dataplane.conntrack import parse

DUMP = """\
tcp,orig=(src=10.44.0.11,dst=10.44.0.10,sport=40000,dport=8080),reply=(src=10.44.0.10,dst=10.44.0.11,sport=8080,dport=40000),zone=7,labels=0x590a76ac,protoinfo=(state=ESTABLISHED)
tcp,orig=(src=10.44.0.11,dst=10.44.0.10,sport=40001,dport=8080),reply=(src=10.44.0.10,dst=10.44.0.11,sport=8080,dport=40001),zone=7,mark=1,labels=0x590a76ac,protoinfo=(state=ESTABLISHED)
udp,orig=(src=10.44.0.11,dst=10.44.0.10,sport=5000,dport=53),reply=(src=10.44.0.10,dst=10.44.0.11,sport=53,dport=5000),zone=8,labels=0x1
icmp,orig=(src=10.44.0.11,dst=10.44.0.10,id=9,type=8,code=0),reply=(src=10.44.0.10,dst=10.44.0.11,id=9,type=0,code=0),labels=0x2
tcp,orig=(src=10.9.0.1,dst=10.9.0.2,sport=1,dport=2),reply=(src=10.9.0.2,dst=10.9.0.1,sport=2,dport=1),zone=9,protoinfo=(state=SYN_SENT)
"""


def test_connections_are_counted_per_zone_and_label() -> None:
    # Unlabelled connections (not committed by a rule) are not counted; no zone is zone 0.
    assert parse(DUMP) == {(7, 0x590A76AC): 2, (8, 1): 1, (0, 2): 1}
