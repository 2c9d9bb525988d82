"""Outer header policy and receive policy, on both data paths, with scapy as the oracle:
TTL, TOS inherit, ECN on encap and decap (RFC 6040), DF set/unset/inherit, reserved bits,
inner 802.1Q tags (RFC 7348 §6.1), the same MAC in two VNIs."""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw, raw

from vxland.datapath import DF, DropReason, NetworkConfig, ReferenceDataPlane
from vxland.native import NativeDataPlane

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
REMOTE = "192.0.2.2"


@pytest.fixture(params=[ReferenceDataPlane, NativeDataPlane], ids=["reference", "native"])
def plane(request):
    return request.param


def make(plane, **policy):
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1", **policy))
    dp.set_flood(0, [REMOTE])
    return dp


def encap_one(dp, inner):
    (datagram,), _ = dp.encap([(0, raw(inner))], 0.0)
    return IP(datagram.header + datagram.frame)


def inner_ip(tos=0, df=True):
    return Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", tos=tos, flags="DF" if df else 0) / UDP() / Raw(b"x")


@pytest.mark.parametrize("inner_ecn,outer_ecn", [(0, 0), (1, 1), (2, 2), (3, 2)])
def test_ecn_on_encap_follows_rfc_6040(plane, inner_ecn, outer_ecn):
    outer = encap_one(make(plane), inner_ip(tos=0xB8 | inner_ecn))
    assert outer.tos == outer_ecn                       # DSCP not inherited by default


def test_tos_inherit_copies_the_dscp(plane):
    outer = encap_one(make(plane, tos_inherit=True), inner_ip(tos=0xB8 | 3))
    assert outer.tos == 0xB8 | 2
    ipv6 = Ether(src=A, dst=B) / IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x28 | 1) / UDP()
    assert encap_one(make(plane, tos_inherit=True), ipv6).tos == 0x28 | 1
    assert encap_one(make(plane, tos=0x20), inner_ip(tos=0xB8)).tos == 0x20


def test_ttl_is_configurable(plane):
    assert encap_one(make(plane, ttl=100), inner_ip()).ttl == 100


def test_a_multicast_group_gets_its_own_ttl(plane):
    dp = make(plane, ttl=100)
    dp.set_flood(0, [REMOTE, "239.1.1.42"])
    datagrams, _ = dp.encap([(0, raw(inner_ip()))], 0.0)
    assert [(d.dst, IP(d.header).ttl) for d in datagrams] == [(REMOTE, 100), ("239.1.1.42", 1)]


@pytest.mark.parametrize("df,inner,expected", [
    (DF.set, inner_ip(df=False), True), (DF.unset, inner_ip(df=True), False),
    (DF.inherit, inner_ip(df=True), True), (DF.inherit, inner_ip(df=False), False),
    (DF.inherit, Ether(src=A, dst=B) / IPv6() / UDP(), True),
    (DF.inherit, Ether(src=A, dst=B) / ARP(), False),
])
def test_df_set_unset_inherit(plane, df, inner, expected):
    outer = encap_one(make(plane, df=df), inner)
    assert bool(outer.flags.DF) == expected
    assert outer[VXLAN].flags == 0x08 and outer[UDP].chksum == 0


def vxlan(inner, flags=0x08, reserved=0):
    return raw(VXLAN(flags=flags, vni=42, reserved0=reserved) / inner)


def decap_one(dp, payload, outer_tos=0):
    frames, _ = dp.decap([(payload, REMOTE, outer_tos)], 0.0)
    return frames


@pytest.mark.parametrize("inner_ecn", [1, 2, 3])
def test_outer_ce_marks_an_ecn_capable_inner_packet_ce(plane, inner_ecn):
    dp = make(plane)
    ((_, frame),) = decap_one(dp, vxlan(inner_ip(tos=0xB8 | inner_ecn)), outer_tos=3)
    ip = Ether(frame)[IP]
    assert ip.tos == 0xB8 | 3
    checksum = ip.chksum
    del ip.chksum
    assert IP(raw(ip)).chksum == checksum                # header checksum updated
    six = Ether(src=A, dst=B) / IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x28 | 2) / UDP()
    ((_, frame),) = decap_one(dp, vxlan(six), outer_tos=3)
    assert Ether(frame)[IPv6].tc == 0x28 | 3


def test_outer_ce_over_not_ect_is_dropped_and_counted(plane):
    dp = make(plane)
    assert decap_one(dp, vxlan(inner_ip(tos=0xB8)), outer_tos=3) == []
    assert dp.counters(0).drops[DropReason.ecn_not_ect] == 1
    # other outer codepoints leave the inner packet alone; non-IP passes even under CE
    for outer in (0, 1, 2):
        ((_, frame),) = decap_one(dp, vxlan(inner_ip(tos=0xB8)), outer_tos=outer)
        assert Ether(frame)[IP].tos == 0xB8
    assert len(decap_one(dp, vxlan(Ether(src=A, dst=B) / ARP()), outer_tos=3)) == 1


def test_outer_ce_over_an_inner_header_that_is_not_one_leaves_it_untouched(plane):
    """An IPv4 header whose IHL says fewer than 20 bytes (or more than the frame holds) cannot
    be marked and re-checksummed: the frame passes as it came, not half-written."""
    for ihl in (2, 15):
        frame = bytearray(raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", tos=0xB9) / Raw(b"x" * 10)))
        frame[14] = 0x40 | ihl
        frame = bytes(frame[:14 + 24])
        ((_, out),) = decap_one(make(plane), bytes.fromhex('0800000000002a00') + frame, outer_tos=3)
        assert out == frame


def test_reserved_bits_are_ignored_by_default_and_dropped_on_request(plane):
    payload = vxlan(inner_ip(), flags=0x88, reserved=0x123)
    assert len(decap_one(make(plane), payload)) == 1                      # RFC 7348 §5
    strict = make(plane, drop_reserved=True)                               # the kernel's way
    assert decap_one(strict, payload) == []
    assert strict.counters(0).drops[DropReason.reserved_bits] == 1
    assert len(decap_one(strict, vxlan(inner_ip()))) == 1


def test_inner_vlan_tags_are_discarded_unless_carried(plane):
    tagged = Ether(src=A, dst=B) / Dot1Q(vlan=10) / IP() / UDP()
    dp = make(plane)
    assert decap_one(dp, vxlan(tagged)) == []
    assert dp.encap([(0, raw(tagged))], 0.0)[0] == []
    assert dp.counters(0).drops[DropReason.inner_vlan] == 2
    carrying = make(plane, carry_vlan=True)                                # like Linux (q_in_vni.sh)
    ((_, frame),) = decap_one(carrying, vxlan(tagged))
    assert frame == raw(tagged)
    assert Ether(encap_one(carrying, tagged)[VXLAN].payload.original)[Dot1Q].vlan == 10


def test_the_same_mac_in_two_vnis_is_kept_apart(plane):
    dp = plane()
    for net, vni in enumerate((100, 200)):
        dp.add_network(net, NetworkConfig(vni=vni, local="192.0.2.1"))
    frame = Ether(src=A, dst=B) / IP() / UDP()
    frames, sightings = dp.decap([(raw(VXLAN(flags=8, vni=100) / frame), "192.0.2.2"),
                                  (raw(VXLAN(flags=8, vni=200) / frame), "192.0.2.3")], 0.0)
    assert [n for n, _ in frames] == [0, 1]
    assert [(s.net, s.vtep) for s in sightings] == [(0, "192.0.2.2"), (1, "192.0.2.3")]
    for s in sightings:
        dp.set_entry(s.net, s.mac, s.vtep, False)
    to_a = raw(Ether(src=B, dst=A) / IP() / UDP())
    out, _ = dp.encap([(0, to_a), (1, to_a)], 1.0)
    assert [(d.net, d.dst) for d in out] == [(0, "192.0.2.2"), (1, "192.0.2.3")]
    assert dp.counters(0).rx_packets == dp.counters(1).rx_packets == 1
