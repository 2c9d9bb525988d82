"""Golden pcaps (tests/golden/, recorded by tests/golden/record.py) replayed through vxland:
decapsulating what the kernel's VXLAN (or a canonical scapy VTEP) sent must give the inner
frames byte for byte; encapsulating those frames must give the same outer headers field for
field, the UDP source port (a per-flow hash in each implementation's own range) aside.

The kernel's recording was made on an underlay that keeps a veth's offloads: the frames that
its container's sockets sent cross it with their checksums in the partial form, which
vxland finishes (or has the TAP's kernel finish), as a NIC would have."""

import os

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from vxland import offload
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
        # the VXLAN header and the inner frame, its checksum finished as the kernel's NIC would
        assert raw(mine[UDP].payload) == raw(theirs[UDP].payload)[:8] + tap
        assert 49152 <= mine[UDP].sport <= 65535


def test_the_kernels_recording_holds_partial_checksums():
    """Guard: the recording was made with the underlay's offloads on."""
    partial = [offload.inner_offload(raw(Ether(w)[UDP].payload)[8:], 1500) for _, w in golden("kernel")]
    assert sum(vh is not None for vh in partial) >= 4


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
def test_a_tap_with_a_virtio_header_is_told_to_finish_them(plane):
    """With VNET_HDR the checksum is not computed in userspace: the frame goes to the TAP as the
    kernel sent it, with NEEDS_CSUM where the checksum is; the TAP's kernel finishing it (as
    offload.gso_split does) gives the frame that entered the kernel's VTEP."""
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.2", vnet_hdr=True))
    for tap, wire in golden("kernel"):
        ip = Ether(wire)[IP]
        frames, _ = dp.decap([(raw(ip[UDP].payload), ip.src, ip.tos)], 0.0)
        vh = offload.inner_offload(frames[0][1], 1500)
        (write,) = dp.coalesce(frames, [vh])
        got = offload.VirtioNetHdr.decode(write[1])
        assert got == (vh or offload.VirtioNetHdr())
        assert offload.gso_split(got, write[2]) == [tap]
