"""The wire format, checked against scapy as the oracle for bytes."""

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw, raw

from vxland import wire


@pytest.mark.parametrize("vni", [0, 1, 42, 4096, wire.VNI_MAX])
def test_header_encodes_as_scapy_does(vni):
    assert wire.VxlanHeader(vni).encode() == raw(VXLAN(flags=0x08, vni=vni))


def test_header_example_bytes_from_the_scapy_suite():
    udp = raw(UDP(sport=1024, dport=4789) / VXLAN(flags=0x08, vni=42))
    assert udp[8:] == wire.VxlanHeader(42).encode()
    assert udp.hex() == "040012b500100000" + "080000000000" + "2a00"


def test_decode_ignores_reserved_fields():
    h = wire.VxlanHeader.decode(bytes.fromhex("08ffffff00002aff"))
    assert (h.flags, h.vni) == (0x08, 42)


def test_decode_rejects_short_payload():
    with pytest.raises(wire.WireError):
        wire.VxlanHeader.decode(b"\x08\x00\x00")


def test_vni_out_of_range_is_refused():
    with pytest.raises(wire.WireError):
        wire.VxlanHeader(1 << 24).encode()


def test_outer_headers_match_scapy():
    frame = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / Raw(b"x" * 10))
    got = wire.outer_headers_v4(local="192.0.2.1", remote="192.0.2.2", vni=7,
                                frame_len=len(frame), sport=50000, ttl=17)
    want = raw(IP(src="192.0.2.1", dst="192.0.2.2", ttl=17, flags="DF", id=0)
               / UDP(sport=50000, dport=4789, chksum=0) / VXLAN(flags=0x08, vni=7) / frame)
    assert got + frame == want


def test_source_port_is_stable_per_flow_and_in_range():
    def frame(sport):
        return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                   / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=80))
    ports = {wire.source_port(frame(p), 49152, 65535) for p in range(1000, 1200)}
    assert all(49152 <= p <= 65535 for p in ports)
    assert len(ports) > 150                   # different flows spread out
    a = frame(1234)
    # the payload and the sequence number are not part of the flow
    later = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, seq=999) / Raw(b"data"))
    assert wire.source_port(a) == wire.source_port(later)


def test_source_port_honours_a_narrow_range():
    f = raw(Ether() / IPv6() / UDP(sport=1, dport=2))
    assert wire.source_port(f, 5000, 5000) == 5000
    assert 6000 <= wire.source_port(f, 6000, 6001) <= 6001


def test_mac_text_round_trips():
    assert wire.mac_to_bytes("02:00:00:00:00:0") == bytes.fromhex("020000000000")
    assert wire.mac_to_str(wire.mac_to_bytes("02-AB-00-00-00-01")) == "02:ab:00:00:00:01"


@pytest.mark.parametrize("text", ["zz:00:00:00:00:00", "1:2:3", "", "02:00:00:00:00:001"])
def test_bad_mac_text_is_refused(text):
    with pytest.raises(ValueError):
        wire.mac_to_bytes(text)


def test_mac_classes():
    assert wire.mac_is_multicast(bytes.fromhex("ffffffffffff"))
    assert wire.mac_is_multicast(bytes.fromhex("01005e000001"))
    assert not wire.mac_is_learnable(bytes(6))
    assert wire.mac_is_learnable(bytes.fromhex("020000000001"))


def test_a_mac_is_hex_digits_and_separators_only():
    """int(' a', 16) and bytes.fromhex('0 0a') take signs and spaces: a MAC from a control request,
    a route or a store key must not."""
    from vxland.wire import mac_to_bytes
    assert mac_to_bytes("AA:bb:0c:dd:ee:0F") == bytes.fromhex("aabb0cddee0f")
    assert mac_to_bytes("2-0-0-0-0-a") == bytes.fromhex("02000000000a")
    for bad in ("02:00:00:00:00: a", "02:00:00:00:00:+a", "0 :00:00:00:00:0a", "02:00:00:00:00:0g",
                "02:00:00:00:00", "02:00:00:00:00:0a:", "", "020000000000"):
        with pytest.raises(ValueError):
            mac_to_bytes(bad)
