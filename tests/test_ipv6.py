"""An IPv6 underlay in memory: outer headers against scapy (the UDP checksum included, as
IPv6 requires one), and the C path held equal to the reference."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw, raw

from vxland.datapath import NetworkConfig, ReferenceDataPlane
from vxland.fdb import parse_vtep
from vxland.native import NativeDataPlane

LOCAL, REMOTES = "2001:db8::1", ["2001:db8::2", "2001:db8::3"]
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
PLANES = [ReferenceDataPlane, NativeDataPlane]


def make(plane, **kw):
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=4242, local=LOCAL, **kw))
    dp.set_flood(0, REMOTES)
    return dp


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
@pytest.mark.parametrize("size", [0, 1, 100, 1351])
def test_outer_ipv6_headers_match_scapy(plane, size):
    inner = raw(Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2", tc=0xB9) / TCP(flags="A")
                / Raw(b"q" * size))
    datagrams, _ = make(plane, ttl=33, tos_inherit=True).encap([(0, inner)], 0.0)
    assert [d.dst for d in datagrams] == REMOTES
    for d in datagrams:
        mine = IPv6(d.header + d.frame)
        assert (mine.src, mine.dst, mine.hlim, mine.tc, mine.nh) == (LOCAL, d.dst, 33, 0xB9, 17)
        assert mine[VXLAN].flags == 0x08 and mine[VXLAN].vni == 4242 and raw(mine[VXLAN].payload) == inner
        checksum = mine[UDP].chksum
        assert checksum != 0
        del mine[UDP].chksum, mine[UDP].len, mine.plen
        assert IPv6(raw(mine))[UDP].chksum == checksum            # scapy agrees on the checksum
        assert raw(IPv6(raw(mine))) == d.header + d.frame


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
def test_decap_learns_ipv6_vteps(plane):
    dp = make(plane)
    payload = raw(VXLAN(flags=8, vni=4242) / Ether(src=A, dst=B) / Raw(bytes(46)))
    frames, sightings = dp.decap([(payload, "2001:db8::3", 0)], 0.0)
    assert frames and [(s.mac, s.vtep) for s in sightings] == [(bytes.fromhex("02000000000a"), "2001:db8::3")]
    dp.set_entry(0, sightings[0].mac, sightings[0].vtep, False)
    out, _ = dp.encap([(0, raw(Ether(src=B, dst=A) / Raw(bytes(46))))], 1.0)
    assert [d.dst for d in out] == ["2001:db8::3"]


def test_addresses_of_the_other_family_are_refused():
    with pytest.raises(ValueError, match="IPv4 address on an IPv6 underlay"):
        parse_vtep("192.0.2.1", 6)
    with pytest.raises(ValueError, match="link-local"):
        parse_vtep("fe80::1", 6)


frames = st.builds(lambda dst, src, body: dst + src + body,
                   st.sampled_from([bytes.fromhex(h) for h in ("02000000000a", "02000000000b", "ffffffffffff")]),
                   st.sampled_from([bytes.fromhex(h) for h in ("02000000000a", "02000000000b", "000000000000")]),
                   st.binary(min_size=2, max_size=90))


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(frames, max_size=20), tos=st.sampled_from([0, 0x28, 3]), inherit=st.booleans(),
       peers=st.lists(st.sampled_from(REMOTES), max_size=20))
def test_ipv6_native_equals_reference(frames, tos, inherit, peers):
    results = []
    for plane in PLANES:
        dp = make(plane, tos=tos, tos_inherit=inherit)
        enc = dp.encap([(0, f) for f in frames], 0.0)
        dec = dp.decap([(bytes([8, 0, 0, 0, 0, 0x10, 0x92, 0]) + f, p, 3) for f, p in zip(frames, peers)], 0.0)
        results.append((enc, dec, dp.counters(0)))
    assert results[0] == results[1]


def fdb(host):
    return {(e["mac"], e.get("vtep") or e.get("port")) for e in host.vxland_json("fdb", "show")}


@pytest.mark.netns
@pytest.mark.parametrize("peer", ["vxland", "kernel"])
def test_containers_talk_over_an_ipv6_underlay(two_hosts_ipv6, peer):
    t = two_hosts_ipv6
    h1, h2 = t.hosts
    t.start_vxland(h1)
    if peer == "kernel":
        t.start_kernel_vxlan(h2)
    else:
        t.start_vxland(h2)
    for src, dst in ((h1, h2), (h2, h1)):
        ping = t.ping(src, dst, count=3)
        assert ping.returncode == 0, ping.stdout + ping.stderr + t.log_of(h1)
    assert (h2.container_mac, "2001:db8::2") in fdb(h1)
    if peer == "kernel":
        assert f"{h1.container_mac} dst 2001:db8::1" in t.kernel_fdb(h2)
    else:
        assert (h1.container_mac, "2001:db8::1") in fdb(h2)
    for src, dst in ((h1, h2), (h2, h1)):
        result = t.iperf3(src, dst, 1)
        assert result["end"]["sum_received"]["bits_per_second"] > 1e7
    drops = {k: v for k, v in h1.vxland_json("stats")["drops"].items() if v}
    assert not {"too_big", "underlay_error", "bad_offload"} & set(drops), drops
