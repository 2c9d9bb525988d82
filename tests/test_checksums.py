"""The outer UDP checksum on receipt (RFC 7348 §5): zero accepted, correct accepted, wrong
dropped.  Datagrams are built by hand and sent from the other host on a raw socket."""

import sys
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw, raw

from vxland.topology import sh

pytestmark = pytest.mark.netns


def datagram(src_mac, checksum):
    inner = Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff", type=0x88B5) / Raw(bytes(46))
    pkt = IP(src="192.0.2.2", dst="192.0.2.1") / UDP(sport=50000, dport=4789) / VXLAN(flags=8, vni=42) / inner
    pkt = IP(raw(pkt))                                       # scapy computes the real checksum
    if checksum == "zero":
        pkt[UDP].chksum = 0
    elif checksum == "wrong":
        pkt[UDP].chksum ^= 0x5555
    return raw(pkt)


def send_raw(ns, packet):
    script = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
              f"s.sendto({packet!r}, ('192.0.2.1', 0))\n")
    sh(sys.executable, "-c", script, ns=ns)


def udp_snmp(ns):
    lines = [line.split() for line in sh("cat", "/proc/net/snmp", ns=ns).stdout.splitlines() if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def test_zero_and_correct_checksums_are_accepted_a_wrong_one_dropped(two_hosts):
    h1, h2 = two_hosts.hosts
    two_hosts.start_vxland(h1)
    before = udp_snmp(h1.ns)["InCsumErrors"]
    for mac, checksum in (("02:00:00:00:00:c0", "zero"), ("02:00:00:00:00:c1", "correct"),
                          ("02:00:00:00:00:c2", "wrong")):
        send_raw(h2.ns, datagram(mac, checksum))
    time.sleep(0.5)
    learned = {r["mac"] for r in h1.vxland_json("fdb", "show")}
    assert {"02:00:00:00:00:c0", "02:00:00:00:00:c1"} <= learned
    assert "02:00:00:00:00:c2" not in learned
    assert h1.vxland_json("stats")["vnis"][0]["rx_packets"] == 2
    assert udp_snmp(h1.ns)["InCsumErrors"] == before + 1
