"""What the outer headers of received datagrams decide, on the wire: the UDP checksum (RFC 7348
§5: zero accepted, correct accepted, wrong dropped) and ECN (RFC 6040 decapsulation).
Datagrams are built by hand and sent from the other host on a raw socket."""

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


def test_outer_ce_on_the_wire_marks_or_drops_the_inner_packet(two_hosts, tmp_path):
    """RFC 6040 decapsulation with real datagrams: CE over ECT(0) arrives marked CE, CE over
    not-ECT is dropped and counted."""
    import subprocess
    from vxland.capture import read_pcap
    h1, h2 = two_hosts.hosts
    two_hosts.start_vxland(h1)
    path = str(tmp_path / "tap.pcap")
    capture = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-m", "vxland", "capture",
                                "--side", "tap", "--control", h1.control, "-w", path, "--seconds", "2"])
    time.sleep(0.5)
    for inner_tos in (0x00, 0x02):                        # not-ECT, then ECT(0)
        inner = (Ether(src="02:00:00:00:00:c3", dst="ff:ff:ff:ff:ff:ff")
                 / IP(src="10.42.0.9", dst="10.42.0.1", tos=inner_tos) / UDP(sport=9, dport=9) / Raw(b"ecn"))
        outer = IP(src="192.0.2.2", dst="192.0.2.1", tos=0x03) / UDP(sport=50000, dport=4789, chksum=0) \
            / VXLAN(flags=8, vni=42) / inner
        send_raw(h2.ns, raw(outer))
    capture.wait(timeout=30)
    stats = h1.vxland_json("stats")
    assert stats["drops"]["ecn_not_ect"] == 1 and stats["vnis"][0]["rx_packets"] == 1
    marked = [IP(f[14:]) for f in read_pcap(path) if f[6:12] == bytes.fromhex("0200000000c3")]
    assert [p.tos for p in marked] == [0x03]              # ECT(0) became CE
