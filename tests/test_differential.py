"""The C fast path against the pure-Python reference: same inputs, same everything.

Hypothesis draws small MAC and VTEP pools so that lookups hit, miss, move and
conflict often; datagrams mix valid VXLAN with every kind of malformation.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vxland import offload, wire
from vxland.datapath import DF, EntryKind, NetworkConfig, ReferenceDataPlane
from vxland.native import NativeDataPlane, lib

MACS = [bytes.fromhex(h) for h in (
    "020000000001", "020000000002", "020000000003", "02000000000a",
    "ffffffffffff", "01005e000001", "000000000000", "0200000000ee")]
VTEPS = ["192.0.2.2", "192.0.2.3", "198.51.100.9"]
OWN_MAC = MACS[7]
VNIS = [100, 200]

macs = st.sampled_from(MACS)
vteps = st.sampled_from(VTEPS)
ethertypes = st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"\x81\x00", b"\x88\xa8"])
policies = st.fixed_dictionaries({
    "tos": st.sampled_from([0, 0xB8, 0x03]), "tos_inherit": st.booleans(), "df": st.sampled_from(list(DF)),
    "drop_reserved": st.booleans(), "carry_vlan": st.booleans(), "vnet_hdr": st.booleans(),
    "mtu": st.sampled_from([576, 1500]), "underlay_mtu": st.sampled_from([0, 0, 700]),
    "learn_remote": st.booleans(), "snoop_tap": st.booleans()})


@st.composite
def frames(draw):
    if draw(st.integers(0, 15)) == 0:
        return draw(st.binary(max_size=13))               # a runt
    body = draw(st.binary(min_size=0, max_size=80))
    return draw(macs) + draw(macs) + draw(ethertypes) + body


def ip_frame(src, dst, v6, proto, body, checksum):
    """An IPv4 or IPv6 TCP/UDP frame whose checksum is valid, in a kernel's partial form
    (the pseudo-header sum: see test_partial_checksums.py) or wrong."""
    l4 = (struct.pack("!HHIIBBHHH", 40000, 5201, 7, 0, 0x50, 0x18, 500, 0, 0) if proto == 6
          else struct.pack("!HHHH", 4000, 9, 8 + len(body), 0)) + body
    if v6:
        l3 = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x02"
        pseudo = offload.checksum(l3[8:40], proto + len(l4))
    else:
        l3 = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0,
                                   bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
        l3[10:12] = wire.ipv4_checksum(bytes(l3)).to_bytes(2, "big")
        pseudo = offload.checksum(l3[12:20], proto + len(l4))
    at = 16 if proto == 6 else 6
    field = {"partial": pseudo, "valid": ~offload.checksum(l4, pseudo) & 0xFFFF, "wrong": 0xBEEF}[checksum]
    l4 = l4[:at] + field.to_bytes(2, "big") + l4[at + 2:]
    return dst + src + (b"\x86\xdd" if v6 else b"\x08\x00") + bytes(l3) + l4


@st.composite
def ip_frames(draw):
    return ip_frame(draw(macs), draw(macs), draw(st.booleans()), draw(st.sampled_from([6, 17])),
                    bytes(draw(st.sampled_from([0, 10, 600, 1600]))),
                    draw(st.sampled_from(["partial", "partial", "valid", "wrong"])))


@st.composite
def datagrams(draw):
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=12))               # short or truncated
    flags = draw(st.sampled_from([0x08, 0x08, 0x08, 0x00, 0x88, 0xff, 0x0c]))
    vni = draw(st.sampled_from(VNIS + [300]))
    reserved = draw(st.sampled_from([b"\x00\x00\x00", b"\xff\xff\xff"]))
    header = bytes([flags]) + reserved + vni.to_bytes(3, "big") + draw(st.sampled_from([b"\x00", b"\x7f"]))
    return header + draw(ip_frames() if kind < 4 else frames())


# entries of every kind: learned, static, EVPN (datapath.EntryKind)
table_ops = st.lists(st.tuples(st.integers(0, 1), macs, st.one_of(st.none(), vteps), st.sampled_from(list(EntryKind))),
                     max_size=6)
events = st.lists(st.one_of(
    st.tuples(st.just("encap"), st.integers(0, 1), st.lists(frames() | ip_frames(), max_size=70)),
    st.tuples(st.just("decap"), st.lists(st.tuples(datagrams(), vteps, st.sampled_from([0, 1, 2, 3, 0xB8, 0xBB]),
                                                   st.sampled_from([0, 0, 100])), max_size=70)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.05, 0.1, 0.4, 0.7, 0.99, 1.0, 1.5])),
    st.tuples(st.just("learning"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("trust"), st.integers(0, 1), st.booleans(), st.lists(vteps, max_size=2, unique=True),
              st.sampled_from([[], ["198.51.100.0/24"], ["192.0.2.2/32", "192.0.2.0/31"]])),
), max_size=14)


def build(dp, learning, floods, ops, policy=None):
    for net, vni in enumerate(VNIS):
        dp.add_network(net, NetworkConfig(vni=vni, local="192.0.2.1", own_mac=OWN_MAC,
                                          learning=learning, src_ports=(49152, 65535), ttl=33,
                                          **(policy or {})))
        dp.set_flood(net, floods[net])
    for net, mac, vtep, kind in ops:
        dp.set_entry(net, mac, vtep, kind)


def run(dp, evs):
    """Drive dp; learn every sighting back, as the control plane would."""
    now, trace = 1000.0, []
    for ev in evs:
        if ev[0] in ("encap", "decap"):
            out = dp.encap([(ev[1], f) for f in ev[2]], now) if ev[0] == "encap" else dp.decap(ev[1], now)
            trace.append((out, dp.take_replies()))
            for s in out[1]:
                dp.set_entry(s.net, s.mac, s.vtep, EntryKind.learned)
        elif ev[0] == "tick":
            now += ev[1]
        elif ev[0] == "trust":
            dp.set_trust(*ev[1:])
        else:
            dp.set_full(ev[1], ev[2])
    counters = [dp.counters(n) for n in range(len(VNIS))] + [dp.underlay_counters()]
    return trace, counters


@settings(max_examples=300, deadline=None)
@given(learning=st.booleans(), floods=st.tuples(st.lists(vteps, max_size=3, unique=True),
                                                st.lists(vteps, max_size=3, unique=True)),
       ops=table_ops, evs=events, policy=policies)
def test_native_equals_reference(learning, floods, ops, evs, policy):
    results = []
    for dp in (ReferenceDataPlane(), NativeDataPlane()):
        build(dp, learning, floods, ops, policy)
        results.append(run(dp, evs))
    assert results[0] == results[1]


def test_differential_scenario_covers_every_drop_reason_reachable_in_memory():
    """Guard against a generator that quietly stopped reaching the interesting paths."""
    dp = NativeDataPlane()
    build(dp, True, ([], [VTEPS[0]]), [(1, MACS[0], VTEPS[1], True), (1, MACS[1], None, False)])
    bad = [b"\x08\x00\x00", b"\x00" * 8 + MACS[0] * 2 + b"\x08\x00",
           b"\x08\x00\x00\x00\x00\x01\x2c\x00" + MACS[0] * 2 + b"\x08\x00",
           b"\x08\x00\x00\x00\x00\x00\xc8\x00" + b"\x00" * 5,
           b"\x08\x00\x00\x00\x00\x00\xc8\x00" + MACS[0] + MACS[4] + b"\x08\x00",
           b"\x08\x00\x00\x00\x00\x00\xc8\x00" + MACS[0] + OWN_MAC + b"\x08\x00",
           b"\x08\x00\x00\x00\x00\x00\xc8\x00" + MACS[1] + MACS[0] + b"\x08\x00"]
    dp.decap([(d, VTEPS[0]) for d in bad], 0.0)
    dp.encap([(0, b"\x01"), (0, MACS[2] + MACS[3] + b"\x08\x00"), (1, MACS[1] + MACS[3] + b"\x08\x00")], 0.0)
    drops = [a + b + c for a, b, c in zip(dp.counters(0).drops, dp.counters(1).drops,
                                          dp.underlay_counters().drops)]
    assert all(drops[:10]), drops


@pytest.mark.parametrize("lo,hi", [(49152, 65535), (1, 1), (4000, 4100), (0, 65535)])
@given(frame=frames())
def test_source_port_c_equals_python(lo, hi, frame):
    assert lib.vx_source_port(frame, len(frame), lo, hi) == wire.source_port(frame, lo, hi)


def test_table_survives_growth_and_deletion():
    """The C table grows past its first size and deletes with backward shift."""
    dp = NativeDataPlane()
    dp.add_network(0, NetworkConfig(vni=1, local="192.0.2.1"))
    macs_ = [b"\x02" + i.to_bytes(5, "big") for i in range(5000)]
    for i, m in enumerate(macs_):
        dp.set_entry(0, m, VTEPS[i % 3], False)
    for m in macs_[::2]:
        dp.delete_entry(0, m)
    assert dp.fdb_size() == 2500
    frames_ = [(0, m + MACS[0] + b"\x08\x00") for m in macs_]
    out, _ = dp.encap(frames_, 0.0)
    # deleted MACs flood to an empty flood list (dropped); the rest go to their VTEP
    assert [d.dst for d in out] == [VTEPS[i % 3] for i in range(1, 5000, 2)]


def test_the_generator_reaches_partial_checksums_and_super_frames():
    """Guard: the scenarios above do carry what a kernel VTEP sends over a virtual link."""
    from hypothesis import find
    partial = find(ip_frames(), lambda f: offload.inner_offload(f, 1500) is not None)
    assert offload.inner_offload(partial, 1500).flags == offload.F_NEEDS_CSUM
    find(ip_frames(), lambda f: (offload.inner_offload(f, 576) or offload.VirtioNetHdr()).gso_type != 0)
    dp = NativeDataPlane()
    build(dp, True, ([], []), [], {"vnet_hdr": False, "mtu": 1500})
    dp.decap([(b"\x08\x00\x00\x00\x00\x00\x64\x00" + ip_frame(MACS[1], MACS[0], False, 6, b"x", "partial"),
               VTEPS[0])], 0.0)
    assert dp.counters(0).csum_completed == 1


def test_the_generator_reaches_answers():
    """Guard: frames too big for a 700-byte underlay, answered, occur in the scenarios."""
    from hypothesis import find
    frame = find(ip_frames(), lambda f: wire.too_big_reply(f, 700 - 50) is not None and len(f) + 36 > 700)
    dp = NativeDataPlane()
    build(dp, True, ([VTEPS[0]], [VTEPS[0]]), [], {"underlay_mtu": 700})
    dp.encap([(0, frame)], 1000.0)
    assert len(dp.take_replies()) == 1


# ---- what the data path does with EVPN's entries, and the learning switches EVPN uses -------------

@pytest.mark.parametrize("plane", [ReferenceDataPlane, NativeDataPlane], ids=["reference", "native"])
def test_evpn_entries_in_the_data_path(plane):
    """An EVPN entry seen behind the TAP is reported (the MAC moved here) and its frame goes
    out; seen behind another remote VTEP it is neither reported nor dropped."""
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=100, local="192.0.2.1", own_mac=OWN_MAC))
    dp.set_flood(0, [VTEPS[0]])
    dp.set_entry(0, MACS[0], VTEPS[1], EntryKind.evpn)
    out, sightings = dp.encap([(0, MACS[1] + MACS[0] + b"\x08\x00" + bytes(46))], 10.0)
    assert [d.dst for d in out] == [VTEPS[0]] and sightings == [(0, MACS[0], None, None)]
    datagram = b"\x08\x00\x00\x00\x00\x00\x64\x00" + MACS[1] + MACS[0] + b"\x08\x00" + bytes(46)
    frames, sightings = dp.decap([(datagram, VTEPS[2])], 11.0)
    assert len(frames) == 1 and sightings == [] and not any(dp.counters(0).drops)
    frames, sightings = dp.decap([(datagram, VTEPS[1])], 12.0)     # from where BGP says: silent too
    assert len(frames) == 1 and sightings == []


@pytest.mark.parametrize("plane", [ReferenceDataPlane, NativeDataPlane], ids=["reference", "native"])
def test_learn_remote_off_reports_only_the_tap(plane):
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=100, local="192.0.2.1", own_mac=OWN_MAC, learn_remote=False))
    dp.set_flood(0, [VTEPS[0]])
    datagram = b"\x08\x00\x00\x00\x00\x00\x64\x00" + MACS[1] + MACS[0] + b"\x08\x00" + bytes(46)
    assert dp.decap([(datagram, VTEPS[2])], 1.0)[1] == []
    assert dp.encap([(0, MACS[0] + MACS[2] + b"\x08\x00" + bytes(46))], 1.0)[1] == [(0, MACS[2], None, None)]


@pytest.mark.parametrize("plane", [ReferenceDataPlane, NativeDataPlane], ids=["reference", "native"])
def test_snoop_tap_reports_who_has_which_address_behind_the_tap(plane):
    from scapy.layers.l2 import ARP, Ether
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=100, local="192.0.2.1", own_mac=OWN_MAC, snoop_tap=True))
    dp.set_flood(0, [VTEPS[0]])
    mac = wire.mac_to_str(MACS[2])
    arp = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc="10.0.0.7", pdst="10.0.0.9"))
    out, sightings = dp.encap([(0, arp)], 1.0)
    # one sighting: with the address (learning the MAC from it too, fdb.ForwardingTable.see)
    assert len(out) == 1 and sightings == [(0, MACS[2], None, "10.0.0.7")]
