"""What a kernel VTEP sends over a virtual link: inner checksums left unfinished
(CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum) and TSO/USO super-frames
left unsegmented.  Recognised, finished (or handed to the TAP with NEEDS_CSUM and GSO), and
never confused with a valid or a corrupt checksum; the C path held equal to the reference,
both checked against scapy."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw, raw

from vxland import offload, wire
from vxland.datapath import NetworkConfig, ReferenceDataPlane
from vxland.native import NativeDataPlane, ffi, lib
from vxland.offload import VirtioNetHdr

ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
PLANES = [ReferenceDataPlane, NativeDataPlane]


def packet(v6=False, proto="tcp", payload=b"hello", vlan=False, **l4):
    l3 = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", flags="DF")
    l4_layer = TCP(**{"sport": 40000, "dport": 5201, "flags": "PA", "seq": 7, **l4}) if proto == "tcp" \
        else UDP(sport=4000, dport=9, **l4)
    eth = Ether(**ETH) / Dot1Q(vlan=5) if vlan else Ether(**ETH)
    return eth / l3 / l4_layer / Raw(payload)


def where(pkt):
    """(offset of the L4 header, offset of its checksum field) in raw(pkt)."""
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    start = len(raw(pkt)) - len(raw(l4))
    return start, 16 if TCP in pkt else 6


def as_kernel_leaves_it(pkt):
    """The packet's bytes with the L4 checksum in the partial form: the folded pseudo-header sum."""
    frame = bytearray(raw(pkt))
    start, at = where(pkt)
    ip = pkt[IPv6] if IPv6 in pkt else pkt[IP]
    addresses = raw(ip)[8:40] if IPv6 in pkt else raw(ip)[12:20]
    proto = 6 if TCP in pkt else 17
    pseudo = offload.checksum(addresses, proto + len(frame) - start)
    frame[start + at:start + at + 2] = pseudo.to_bytes(2, "big")
    return bytes(frame)


def c_inner_offload(frame, mtu=1500, hint=0):
    vh = ffi.new("struct vx_vnet_hdr *")
    partial = lib.vx_inner_offload(frame, len(frame), mtu, hint, vh)
    got = VirtioNetHdr.decode(bytes(ffi.buffer(vh, lib.VX_VNET_HLEN)))
    return got if partial else None


def c_finish(frame, vh):
    buf = bytearray(frame)
    h = ffi.new("struct vx_vnet_hdr *")
    ffi.memmove(h, vh.encode(), lib.VX_VNET_HLEN)
    lib.vx_finish_checksum(ffi.from_buffer(buf), len(buf), h)
    return bytes(buf)


KINDS = [(v6, proto, vlan) for v6 in (False, True) for proto in ("tcp", "udp") for vlan in (False, True)]


@pytest.mark.parametrize("v6,proto,vlan", KINDS)
def test_partial_checksums_are_found_and_finished_as_scapy_computes_them(v6, proto, vlan):
    pkt = packet(v6, proto, vlan=vlan)
    partial = as_kernel_leaves_it(pkt)
    start, at = where(pkt)
    for find, finish in ((offload.inner_offload, offload.finish_checksum), (c_inner_offload, c_finish)):
        vh = find(partial, 1500)
        assert vh == VirtioNetHdr(offload.F_NEEDS_CSUM, offload.GSO_NONE, 0, 0, start, at)
        assert finish(partial, vh) == raw(pkt)          # scapy computed the checksum itself
        # the finished packet, like every valid one, is left alone
        assert find(raw(pkt), 1500) is None


@pytest.mark.parametrize("v6,proto,vlan", KINDS)
def test_a_wrong_checksum_is_never_fixed(v6, proto, vlan):
    good = bytearray(raw(packet(v6, proto, vlan=vlan)))
    start, at = where(packet(v6, proto, vlan=vlan))
    for corrupt in (bytes(good[:-1]) + bytes([good[-1] ^ 1]),                       # payload damaged
                    bytes(good[:start + at]) + b"\x12\x34" + bytes(good[start + at + 2:])):  # field damaged
        assert offload.inner_offload(corrupt, 1500) is None
        assert c_inner_offload(corrupt) is None


def test_what_has_no_checksum_to_finish_is_left_alone():
    no_checksum = bytearray(raw(packet(proto="udp")))
    start, at = where(packet(proto="udp"))
    no_checksum[start + at:start + at + 2] = b"\x00\x00"                 # IPv4 UDP without a checksum
    fragment = as_kernel_leaves_it(packet())
    fragment = bytearray(fragment)
    fragment[14 + 6] |= 0x20                                            # more fragments
    icmp = raw(Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2", proto=1) / Raw(bytes(20)))
    for frame in (bytes(no_checksum), bytes(fragment), icmp, b"", raw(Ether(**ETH))):
        assert offload.inner_offload(frame, 1500) is None and c_inner_offload(frame) is None


def test_ethernet_padding_is_not_summed():
    small = packet(payload=b"")                                         # a bare ACK: 54 bytes
    padded = as_kernel_leaves_it(small) + bytes(6)                      # padded to 60 on some wire
    for find, finish in ((offload.inner_offload, offload.finish_checksum), (c_inner_offload, c_finish)):
        vh = find(padded, 1500)
        assert vh is not None and vh.gso_type == offload.GSO_NONE
        assert finish(padded, vh) == raw(small) + bytes(6)


@pytest.mark.parametrize("v6", [False, True])
def test_a_tcp_super_frame_is_cut_to_fit_the_tap(v6):
    pkt = packet(v6, "tcp", payload=bytes(range(256)) * 100)            # 25600 bytes: a kernel's TSO
    frame = as_kernel_leaves_it(pkt)
    start, at = where(pkt)
    for find in (offload.inner_offload, c_inner_offload):
        vh = find(frame, 1450)
        assert vh == VirtioNetHdr(offload.F_NEEDS_CSUM, offload.GSO_TCPV6 if v6 else offload.GSO_TCPV4,
                                  start + 20, 1450 - (start + 20 - 14), start, at)
    # as the TAP without a virtio header gets it: MTU-sized segments, checksums complete
    segments = offload.gso_split(offload.inner_offload(frame, 1450), frame)
    assert all(len(s) - 14 <= 1450 for s in segments) and len(segments) == -(-25600 // (1450 - (start - 14) - 20))
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segments) == bytes(pkt[TCP].payload)
    # one that fits is only a partial checksum; a super-frame with a valid checksum is left alone
    assert offload.inner_offload(frame, 65535).gso_type == offload.GSO_NONE
    assert offload.inner_offload(raw(pkt), 1450) is None and c_inner_offload(raw(pkt), 1450) is None


def test_a_udp_super_frame_needs_the_size_the_gro_read_reported():
    pkt = packet(proto="udp", payload=b"d" * 10000)
    frame = as_kernel_leaves_it(pkt)
    start, at = where(pkt)
    for find in (offload.inner_offload, c_inner_offload):
        assert find(frame, 1450, 1000) == VirtioNetHdr(offload.F_NEEDS_CSUM, offload.GSO_UDP_L4, start + 8, 1000,
                                                       start, at)
        assert find(frame, 1450).gso_type == offload.GSO_NONE           # no size: one datagram
    datagrams = offload.gso_split(offload.inner_offload(frame, 1450, 1000), frame)
    assert [len(Ether(d)[UDP].payload) for d in datagrams] == [1000] * 10
    for d in datagrams:
        assert offload.inner_offload(d, 1450) is None                    # complete and valid


def test_a_gro_read_of_many_datagrams_is_told_from_one_tunnel_super_packet():
    inner = [raw(packet(proto="udp", payload=bytes([i]) * 1000)) for i in range(4)]
    train = b"".join(wire.VxlanHeader(42).encode() + f for f in inner)  # 4 datagrams of 1050
    super_packet = wire.VxlanHeader(42).encode() + as_kernel_leaves_it(packet(proto="udp", payload=b"x" * 4000))
    for read, gso, expected in ((train, 1050, False), (super_packet, 1000, True), (train[:1050], 1050, False),
                                (super_packet, len(super_packet), False), (b"\x08" * 30, 10, False)):
        assert offload.gro_is_one_packet(read, gso) == expected
        assert bool(lib.vx_gro_is_one_packet(read, len(read), gso)) == expected


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
@pytest.mark.parametrize("vnet_hdr", [False, True])
def test_decap_counts_and_finishes_or_leaves_them_for_the_tap(plane, vnet_hdr):
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.2", vnet_hdr=vnet_hdr))
    pkt = packet()
    payload = wire.VxlanHeader(42).encode() + as_kernel_leaves_it(pkt)
    valid = wire.VxlanHeader(42).encode() + raw(packet(payload=b"other"))
    frames, _ = dp.decap([(payload, "192.0.2.1"), (valid, "192.0.2.1")], 0.0)
    assert frames[0] == (0, as_kernel_leaves_it(pkt) if vnet_hdr else raw(pkt))
    assert frames[1] == (0, raw(packet(payload=b"other")))
    assert dp.counters(0).csum_completed == 1


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
def test_partial_segments_coalesce_and_a_lone_one_is_written_with_needs_csum(plane):
    tso = VirtioNetHdr(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 54, 1000, 34, 16)
    pkt = packet(payload=bytes(4000), flags="A")
    segments = [as_kernel_leaves_it(Ether(s)) for s in offload.gso_split(tso, as_kernel_leaves_it(pkt))]
    offloads = [offload.inner_offload(s, 1500) for s in segments]
    assert all(o is not None for o in offloads)
    (merged,) = plane().coalesce([(0, s) for s in segments], offloads)
    net, vh_bytes, frame = merged
    got = VirtioNetHdr.decode(vh_bytes)
    assert got.flags == offload.F_NEEDS_CSUM and got.gso_type == offload.GSO_TCPV4 and got.gso_size == 1000
    assert bytes(Ether(frame)[TCP].payload) == bytes(4000)
    (lone,) = plane().coalesce([(0, segments[0])], offloads[:1])
    assert VirtioNetHdr.decode(lone[1]) == offloads[0] and lone[2] == segments[0]
    # the same segments with neither a valid nor a partial checksum are not merged
    corrupt = [s[:-1] + b"\x01" for s in segments]
    assert len(plane().coalesce([(0, s) for s in corrupt])) == 4


def test_a_super_frame_is_never_grouped_and_udp_only_where_the_tap_takes_it():
    sup = as_kernel_leaves_it(packet(payload=bytes(20000)))
    sup_vh = offload.inner_offload(sup, 1450)
    datagrams = [raw(packet(proto="udp", payload=bytes(100))) for _ in range(3)]
    for plane in PLANES:
        (w,) = plane().coalesce([(0, sup)], [sup_vh])
        assert VirtioNetHdr.decode(w[1]) == sup_vh and w[2] == sup
        assert len(plane().coalesce([(0, d) for d in datagrams], udp=True)) == 1
        assert len(plane().coalesce([(0, d) for d in datagrams], udp=False)) == 3


@st.composite
def received_frames(draw):
    """Well-formed TCP or UDP over IPv4 or IPv6, perhaps tagged, with a valid, partial,
    corrupt or absent checksum, perhaps padded, perhaps a super-frame."""
    v6, proto, vlan = draw(st.sampled_from(KINDS))
    size = draw(st.sampled_from([0, 1, 40, 1400, 3000]))
    pkt = packet(v6, proto, payload=draw(st.binary(min_size=size, max_size=size)), vlan=vlan)
    state = draw(st.sampled_from(["valid", "partial", "partial", "corrupt", "zero"]))
    frame = raw(pkt) if state == "valid" else as_kernel_leaves_it(pkt)
    start, at = where(pkt)
    if state == "corrupt":
        frame = frame[:start + at] + b"\xbe\xef" + frame[start + at + 2:]
    elif state == "zero":
        frame = frame[:start + at] + b"\x00\x00" + frame[start + at + 2:]
    return frame + bytes(draw(st.sampled_from([0, 0, 6])))


@settings(max_examples=300, deadline=None)
@given(frame=received_frames(), mtu=st.sampled_from([68, 576, 1450, 9000]), hint=st.sampled_from([0, 0, 100, 1000]))
def test_inner_offload_c_equals_python(frame, mtu, hint):
    vh = offload.inner_offload(frame, mtu, hint)
    assert c_inner_offload(frame, mtu, hint) == vh
    if vh is not None:
        assert c_finish(frame, vh) == offload.finish_checksum(frame, vh)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(received_frames(), max_size=12), udp=st.booleans())
def test_coalescing_decapsulated_frames_c_equals_python(frames, udp):
    offloads = [offload.inner_offload(f, 1450) for f in frames]
    nets_frames = [(0, f) for f in frames]
    assert ReferenceDataPlane().coalesce(nets_frames, offloads, udp) == \
        NativeDataPlane().coalesce(nets_frames, offloads, udp)

