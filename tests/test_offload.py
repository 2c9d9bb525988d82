"""TSO splitting and GRO-style coalescing: the C path against the Python reference, both against scapy."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from vxland import offload
from vxland.datapath import ReferenceDataPlane
from vxland.native import NativeDataPlane
from vxland.offload import VirtioNetHdr

PLANES = [ReferenceDataPlane(), NativeDataPlane()]
ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def partial(pkt, l4_offset, proto_len):
    """The frame as a TAP with checksum offload hands it over: pseudo-header sum in the L4 field."""
    frame = bytearray(raw(pkt))
    ip = pkt.getlayer(1)
    if ip.version == 4:
        addresses = raw(ip)[12:20]
    else:
        addresses = raw(ip)[8:40]
    pseudo = offload.checksum(addresses, (6 if TCP in pkt else 17) + proto_len)
    where = l4_offset + (16 if TCP in pkt else 6)
    frame[where:where + 2] = pseudo.to_bytes(2, "big")
    return bytes(frame)


def super_frame(v6=False, payload=5000, flags="PA", mss=1000, seq=1000, options=(), sport=40000):
    l3 = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=7, flags="DF")
    tcp = TCP(sport=sport, dport=5201, seq=seq, ack=77, flags=flags, window=500, options=list(options))
    pkt = Ether(**ETH) / l3 / tcp / Raw(bytes(range(256)) * (payload // 256) + b"z" * (payload % 256))
    l4 = 14 + (40 if v6 else 20)
    frame = partial(pkt, l4, len(raw(pkt)) - l4)
    hdr_len = l4 + len(raw(tcp)) - len(raw(tcp.payload))
    vh = VirtioNetHdr(offload.F_NEEDS_CSUM, offload.GSO_TCPV6 if v6 else offload.GSO_TCPV4, hdr_len, mss, l4, 16)
    return vh, frame, pkt


def scapy_checks(segment):
    """scapy recomputes every checksum and length: the bytes must not change."""
    p = Ether(segment)
    ip = p.getlayer(1)
    if ip.version == 4:
        del ip.chksum, ip.len
    else:
        del ip.plen
    if TCP in p:
        del p[TCP].chksum
    else:
        del p[UDP].chksum, p[UDP].len
    assert raw(p) == segment


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("payload,mss", [(5000, 1000), (4500, 1000), (999, 1000), (1448 * 44, 1448), (0, 1000)])
def test_split_matches_scapy_and_both_paths_agree(v6, payload, mss):
    vh, frame, pkt = super_frame(v6=v6, payload=payload, mss=mss, flags="FPA")
    segments = [plane.gso_split(vh.encode(), frame) for plane in PLANES]
    assert segments[0] == segments[1]
    segs = segments[0]
    assert len(segs) == max(1, -(-payload // mss))
    data = b""
    for i, s in enumerate(segs):
        scapy_checks(s)
        p = Ether(s)
        assert p[TCP].seq == 1000 + i * mss
        last = i == len(segs) - 1
        assert bool(p[TCP].flags.F) == last and bool(p[TCP].flags.P) == last and p[TCP].flags.A
        if not v6:
            assert p[IP].id == 7 + i and p[IP].flags.DF
        data += bytes(p[TCP].payload)
    assert data == bytes(pkt[TCP].payload)


def test_split_keeps_cwr_on_the_first_segment_only():
    vh, frame, _ = super_frame(flags="CA")
    segs = PLANES[1].gso_split(vh.encode(), frame)
    assert [bool(Ether(s)[TCP].flags.C) for s in segs] == [True] + [False] * (len(segs) - 1)
    assert segs == PLANES[0].gso_split(vh.encode(), frame)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_needs_csum_without_gso_completes_the_checksum(v6, proto):
    l3 = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    l4 = UDP(sport=1, dport=2) if proto == "udp" else TCP(sport=1, dport=2, flags="A")
    pkt = Ether(**ETH) / l3 / l4 / Raw(b"hello, world")
    off = 14 + (40 if v6 else 20)
    frame = partial(pkt, off, len(raw(pkt)) - off)
    vh = VirtioNetHdr(offload.F_NEEDS_CSUM, offload.GSO_NONE, 0, 0, off, 16 if proto == "tcp" else 6)
    for plane in PLANES:
        (out,) = plane.gso_split(vh.encode(), frame)
        assert out == raw(pkt)                       # scapy computed the checksum itself


@pytest.mark.parametrize("bad", [
    VirtioNetHdr(0, 3, 0, 1000, 34, 6),              # UFO: not offered, not accepted
    VirtioNetHdr(1, offload.GSO_TCPV4, 0, 0, 34, 16),       # gso_size 0
    VirtioNetHdr(1, offload.GSO_TCPV4, 0, 1000, 34, 6),     # checksum not at TCP's offset
    VirtioNetHdr(1, offload.GSO_TCPV6, 0, 1000, 54, 16),    # says IPv6, is IPv4
    VirtioNetHdr(1, offload.GSO_TCPV4, 0, 1000, 9000, 16),  # L4 past the end
    VirtioNetHdr(1, offload.GSO_NONE, 0, 0, 9000, 16),      # checksum past the end
    VirtioNetHdr(1, offload.GSO_TCPV4, 0, 1000, 15, 16),    # csum_start inside the IPv4 header
    VirtioNetHdr(1, offload.GSO_TCPV4, 0, 1000, 38, 16),    # ... or past it: not where the IHL says
    VirtioNetHdr(1, offload.GSO_UDP_L4, 0, 1000, 33, 6),    # UDP: inside the IPv4 header
])
def test_malformed_virtio_headers_are_refused_by_both(bad):
    _, frame, _ = super_frame()
    for plane in PLANES:
        with pytest.raises(offload.OffloadError):
            plane.gso_split(bad.encode(), frame)


@pytest.mark.parametrize("v6", [False, True])
def test_coalescing_a_split_gives_back_the_super_frame(v6):
    vh, frame, pkt = super_frame(v6=v6, payload=1448 * 30 + 100, mss=1448,
                                 options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
    segs = PLANES[1].gso_split(vh.encode(), frame)
    for plane in PLANES:
        (merged,) = plane.coalesce([(3, s) for s in segs])
        net, vh_bytes, big = merged
        got = VirtioNetHdr.decode(vh_bytes)
        assert net == 3 and got.gso_type == vh.gso_type and got.gso_size == 1448
        assert got.flags == offload.F_NEEDS_CSUM and got.csum_start == vh.csum_start and got.csum_offset == 16
        assert got.hdr_len == vh.hdr_len
        assert bytes(Ether(big)[TCP].payload) == bytes(pkt[TCP].payload)
        # and splitting the coalesced frame again gives the very same wire segments
        assert plane.gso_split(vh_bytes, big) == segs


def segments(n=4, mss=1000, **kw):
    vh, frame, _ = super_frame(payload=mss * n, mss=mss, **kw)
    return PLANES[1].gso_split(vh.encode(), frame)


def corrupt(segment):
    b = bytearray(segment)
    b[-1] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("case,expected_counts", [
    ("in order", [4]),
    ("reordered", [1, 1, 2]),
    ("corrupt second", [1, 1, 2]),
    ("corrupt first", [1, 3]),
    ("two flows interleaved", [1] * 8),
    ("other network", [2, 2]),
    ("psh in the middle", [2, 2]),
])
def test_coalescing_rules(case, expected_counts):
    segs = segments()
    frames = [(0, s) for s in segs]
    if case == "reordered":
        frames = [frames[1], frames[0], frames[2], frames[3]]
    elif case == "corrupt second":
        frames[1] = (0, corrupt(segs[1]))
    elif case == "corrupt first":
        frames[0] = (0, corrupt(segs[0]))
    elif case == "two flows interleaved":
        other = [(0, s) for s in segments(seq=5, sport=40001)]
        frames = [f for pair in zip(frames, other) for f in pair]
    elif case == "other network":
        frames = frames[:2] + [(1, s) for _, s in frames[2:]]
    elif case == "psh in the middle":
        frames = [(0, s) for s in segments(n=2)] + [(0, s) for s in segments(n=2, seq=3000)]
    results = [plane.coalesce(frames) for plane in PLANES]
    assert results[0] == results[1]
    counts = [len(Ether(f)[TCP].payload) // 1000 if VirtioNetHdr.decode(vh).gso_type else 1
              for _, vh, f in results[1]]
    assert counts == expected_counts


def udp_datagrams(**kw):
    vh, frame, _ = udp_super_frame(**kw)
    return PLANES[1].gso_split(vh.encode(), frame)


@st.composite
def segment_streams(draw):
    flows = [segments(n=draw(st.integers(1, 6)), mss=draw(st.sampled_from([100, 536, 1000])),
                      v6=draw(st.booleans()), seq=draw(st.integers(0, 2**32 - 1)),
                      flags=draw(st.sampled_from(["A", "PA", "FA", "SA", "CA"])))
             if draw(st.booleans()) else
             udp_datagrams(v6=draw(st.booleans()), size=draw(st.sampled_from([20, 64, 700])),
                           count=draw(st.integers(1, 6)), sport=draw(st.sampled_from([7000, 7001])))
             for _ in range(draw(st.integers(1, 3)))]
    stream = [(draw(st.integers(0, 1)), s) for flow in flows for s in flow]
    if draw(st.booleans()):
        stream = draw(st.permutations(stream))
    if stream and draw(st.booleans()):
        i = draw(st.integers(0, len(stream) - 1))
        stream[i] = (stream[i][0], corrupt(stream[i][1]))
    if draw(st.booleans()):
        stream.append((0, draw(st.binary(max_size=80))))
    return stream


@settings(max_examples=150, deadline=None)
@given(stream=segment_streams())
def test_coalesce_native_equals_reference(stream):
    assert PLANES[0].coalesce(stream) == PLANES[1].coalesce(stream)


@settings(max_examples=100, deadline=None)
@given(payload=st.integers(0, 20000), mss=st.integers(1, 3000), v6=st.booleans(),
       flags=st.sampled_from(["A", "PA", "FPA", "CA"]), seq=st.integers(0, 2**32 - 1))
def test_split_native_equals_reference(payload, mss, v6, flags, seq):
    vh, frame, _ = super_frame(v6=v6, payload=payload, mss=mss, flags=flags, seq=seq)
    if -(-payload // mss) > 4096:
        return
    assert PLANES[0].gso_split(vh.encode(), frame) == PLANES[1].gso_split(vh.encode(), frame)


# ---- UDP segmentation offload (USO) ---------------------------------------------------------

def udp_super_frame(v6=False, size=100, count=5, sport=7000):
    l3 = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=50)
    data = bytes(range(256)) * (size * count // 256 + 1)
    pkt = Ether(**ETH) / l3 / UDP(sport=sport, dport=5201) / Raw(data[:size * count])
    l4 = 14 + (40 if v6 else 20)
    frame = partial(pkt, l4, len(raw(pkt)) - l4)
    vh = VirtioNetHdr(offload.F_NEEDS_CSUM, offload.GSO_UDP_L4, l4 + 8, size, l4, 6)
    return vh, frame, pkt


@pytest.mark.parametrize("v6", [False, True])
def test_uso_split_matches_scapy_and_both_paths_agree(v6):
    vh, frame, pkt = udp_super_frame(v6=v6, size=100, count=7)
    segments = [plane.gso_split(vh.encode(), frame) for plane in PLANES]
    assert segments[0] == segments[1] and len(segments[0]) == 7
    for i, s in enumerate(segments[0]):
        scapy_checks(s)
        assert bytes(Ether(s)[UDP].payload) == bytes(pkt[UDP].payload)[i * 100:(i + 1) * 100]
        if not v6:
            assert Ether(s)[IP].id == 50 + i


@pytest.mark.parametrize("v6", [False, True])
def test_udp_datagrams_coalesce_into_one_uso_write_and_split_back(v6):
    vh, frame, _ = udp_super_frame(v6=v6, size=64, count=40)
    datagrams = PLANES[1].gso_split(vh.encode(), frame)
    for plane in PLANES:
        (merged,) = plane.coalesce([(0, d) for d in datagrams])
        _, vh_bytes, big = merged
        got = VirtioNetHdr.decode(vh_bytes)
        assert (got.gso_type, got.gso_size, got.csum_offset) == (offload.GSO_UDP_L4, 64, 6)
        assert plane.gso_split(vh_bytes, big) == datagrams


def merged_counts(writes):
    """How many wire datagrams each TAP write carries."""
    return [len(offload.gso_split(VirtioNetHdr.decode(vh), f)) if VirtioNetHdr.decode(vh).gso_type else 1
            for _, vh, f in writes]


def test_udp_is_coalesced_only_when_safe():
    vh, frame, _ = udp_super_frame(size=64, count=4)
    datagrams = PLANES[1].gso_split(vh.encode(), frame)
    other_vh, other_frame, _ = udp_super_frame(size=64, count=2, sport=7001)
    other_flow = PLANES[1].gso_split(other_vh.encode(), other_frame)
    no_checksum = [d[:40] + b"\x00\x00" + d[42:] for d in datagrams]          # IPv4 UDP, checksum 0
    short_vh, short_frame, _ = udp_super_frame(size=40, count=1)
    (short,) = PLANES[1].gso_split(short_vh.encode(), short_frame)
    cases = [
        (datagrams, [4]),
        (no_checksum, [1, 1, 1, 1]),                                            # nothing to verify
        ([datagrams[0], corrupt(datagrams[1]), datagrams[2], datagrams[3]], [1, 1, 2]),
        ([datagrams[0], other_flow[0], datagrams[1], other_flow[1]], [1, 1, 1, 1]),
        ([short, datagrams[0]], [1, 1]),                                        # a short one ends a run
        ([datagrams[0], short], [2]),                                           # ... as the last one
    ]
    for stream, expected in cases:
        results = [plane.coalesce([(0, d) for d in stream]) for plane in PLANES]
        assert results[0] == results[1]
        assert merged_counts(results[1]) == expected
