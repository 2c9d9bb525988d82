"""Golden pcaps (tests/golden/, recorded by tests/golden/record.py) replayed through vxland:
decapsulating what the kernel's VXLAN (or a canonical scapy VTEP) sent must give the inner
frames byte for byte; encapsulating those frames must give the same outer headers field for
field, the UDP source port (a per-flow hash in each implementation's own range) aside."""

import os

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from vxland.capture import read_pcap
from vxland.datapath import NetworkConfig, ReferenceDataPlane
from vxland.native import NativeDataPlane

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
SOURCES = ["kernel", "scapy"]
PLANES = [ReferenceDataPlane, NativeDataPlane]


def golden(source):
    taps = read_pcap(os.path.join(GOLDEN, f"{source}-tap.pcap"))
    wires = read_pcap(os.path.join(GOLDEN, f"{source}-underlay.pcap"))
    assert len(taps) == len(wires) >= 9
    return list(zip(taps, wires))


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
@pytest.mark.parametrize("source", SOURCES)
def test_decap_gives_the_inner_frames_byte_for_byte(source, plane):
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.2"))
    for tap, wire in golden(source):
        ip = Ether(wire)[IP]
        frames, _ = dp.decap([(raw(ip[UDP].payload), ip.src, ip.tos)], 0.0)
        assert frames == [(0, tap)]


FIELDS = {IP: ("version", "ihl", "tos", "len", "flags", "frag", "ttl", "proto", "src", "dst"),
          UDP: ("dport", "len", "chksum")}


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
@pytest.mark.parametrize("source", SOURCES)
def test_encap_gives_the_outer_headers_field_for_field(source, plane):
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1"))
    dp.set_flood(0, ["192.0.2.2"])
    for tap, wire in golden(source):
        (datagram,), _ = dp.encap([(0, tap)], 0.0)
        mine, theirs = IP(datagram.header + datagram.frame), Ether(wire)[IP]
        for layer, fields in FIELDS.items():
            for name in fields:
                assert getattr(mine[layer], name) == getattr(theirs[layer], name), (source, layer.__name__, name)
        assert raw(mine[UDP].payload) == raw(theirs[UDP].payload)       # VXLAN header and inner frame
        assert 49152 <= mine[UDP].sport <= 65535
