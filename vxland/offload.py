"""TAP offloads in plain Python: the reference for native/offload.c.

With IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6) a TAP hands over TCP
super-frames of up to 64 KiB behind a `struct virtio_net_hdr`, and accepts them
back.  `gso_split` turns one such frame into the MSS-sized segments the wire
carries (what the kernel's tcp_gso_segment does); `coalesce` merges consecutive
in-order segments of one TCP flow into one super-frame for the TAP (the
receive side's GRO), after verifying every checksum.  Sans-IO: bytes in, bytes
out.  tests/test_offload.py holds the C path equal to this and both to scapy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VNET_HLEN = 10
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 4, 5, 0x80
SEG_HEAD = 192            # VX_SEG_HEAD: the most header bytes a TSO segment may have
GSO_MAX_SEGS = 64

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_URG, TCP_CWR = 0x01, 0x02, 0x04, 0x08, 0x20, 0x80


class OffloadError(ValueError):
    """A frame that its virtio header does not describe."""


@dataclass(frozen=True)
class VirtioNetHdr:
    """struct virtio_net_hdr, in host (little-endian) byte order as the TAP uses it."""
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    _format = struct.Struct("<BBHHHH")

    def encode(self) -> bytes:
        return self._format.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                                 self.csum_start, self.csum_offset)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> "VirtioNetHdr":
        if len(data) < VNET_HLEN:
            raise OffloadError(f"{len(data)} bytes is shorter than a virtio_net_hdr")
        return cls(*cls._format.unpack_from(data))


# ---- the Internet checksum --------------------------------------------------------

def _sum(data: bytes | memoryview, initial: int = 0) -> int:
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    return initial + sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes | memoryview, initial: int = 0) -> int:
    """Folded, not inverted (vx_checksum)."""
    return _fold(_sum(data, initial))


# ---- where the headers are ------------------------------------------------------------

def _l3_offset(f: bytes) -> int:
    off = 12
    while off + 2 <= len(f) and f[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    return off + 2


@dataclass
class _L34:
    l3: int
    l4: int
    hdr_len: int
    v6: bool


def _pseudo_sum(f: bytes, h: _L34, tcp_len: int) -> int:
    addresses = f[h.l3 + 8:h.l3 + 40] if h.v6 else f[h.l3 + 12:h.l3 + 20]
    return _sum(addresses) + 6 + tcp_len


def _parse_tcp(f: bytes) -> _L34 | None:
    """A plain TCP segment: IPv4 without options or fragments, IPv6 without extension headers."""
    if _l3_offset(f) != 14 or len(f) < 54:
        return None
    ethertype, ip = f[12:14], f[14:]
    if (ethertype == b"\x08\x00" and ip[0] == 0x45 and ip[9] == 6
            and int.from_bytes(ip[6:8], "big") & 0x3FFF == 0 and int.from_bytes(ip[2:4], "big") == len(f) - 14):
        h = _L34(14, 34, 0, False)
    elif (ethertype == b"\x86\xdd" and ip[0] >> 4 == 6 and ip[6] == 6 and len(f) >= 74
          and int.from_bytes(ip[4:6], "big") == len(f) - 54):
        h = _L34(14, 54, 0, True)
    else:
        return None
    doff = (f[h.l4 + 12] >> 4) * 4
    if doff < 20 or h.l4 + doff > len(f):
        return None
    h.hdr_len = h.l4 + doff
    return h


# ---- TAP -> wire -------------------------------------------------------------------------

def _complete_checksum(f: bytearray, start: int, offset: int) -> None:
    if start + offset + 2 > len(f):
        raise OffloadError("checksum position past the end of the frame")
    c = ~checksum(f[start:]) & 0xFFFF
    l3 = _l3_offset(bytes(f))
    ethertype = bytes(f[l3 - 2:l3])
    udp = (ethertype == b"\x08\x00" and l3 + 10 <= len(f) and f[l3 + 9] == 17) or \
          (ethertype == b"\x86\xdd" and l3 + 7 <= len(f) and f[l3 + 6] == 17)
    if c == 0 and udp:
        c = 0xFFFF
    f[start + offset:start + offset + 2] = c.to_bytes(2, "big")


def gso_split(vh: VirtioNetHdr, frame: bytes) -> list[bytes]:
    """One frame read from a VNET_HDR TAP -> the frames the wire carries."""
    kind = vh.gso_type & ~GSO_ECN
    f = bytearray(frame)
    if kind == GSO_NONE:
        if vh.flags & F_NEEDS_CSUM:
            _complete_checksum(f, vh.csum_start, vh.csum_offset)
        return [bytes(f)]
    if kind not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(f"GSO type {vh.gso_type} is not TCP")
    v6 = kind == GSO_TCPV6
    l3, l4 = _l3_offset(frame), vh.csum_start
    ethertype = frame[l3 - 2:l3] if 2 <= l3 <= len(frame) else b""
    if (ethertype != (b"\x86\xdd" if v6 else b"\x08\x00") or l4 + 20 > len(frame) or l4 <= l3
            or vh.csum_offset != 16 or vh.gso_size == 0):
        raise OffloadError("virtio header does not describe a TCP frame")
    hdr_len = l4 + (frame[l4 + 12] >> 4) * 4
    if hdr_len < l4 + 20 or hdr_len > len(frame) or hdr_len > SEG_HEAD:
        raise OffloadError("bad TCP header length")
    h = _L34(l3, l4, hdr_len, v6)
    payload, mss = len(frame) - hdr_len, vh.gso_size
    n = -(-payload // mss) if payload else 1
    ip_id = 0 if v6 else int.from_bytes(frame[l3 + 4:l3 + 6], "big")
    seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
    flags = frame[l4 + 13]
    out = []
    for i in range(n):
        data = frame[hdr_len + i * mss:hdr_len + min(payload, (i + 1) * mss)]
        seg = bytearray(frame[:hdr_len])
        if v6:
            seg[l3 + 4:l3 + 6] = (hdr_len - l3 - 40 + len(data)).to_bytes(2, "big")
        else:
            seg[l3 + 2:l3 + 4] = (hdr_len - l3 + len(data)).to_bytes(2, "big")
            seg[l3 + 4:l3 + 6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
            seg[l3 + 10:l3 + 12] = b"\x00\x00"
            seg[l3 + 10:l3 + 12] = (~checksum(seg[l3:l4]) & 0xFFFF).to_bytes(2, "big")
        seg[l4 + 4:l4 + 8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
        f_ = flags
        if i != n - 1:
            f_ &= ~(TCP_FIN | TCP_PSH)
        if i != 0:
            f_ &= ~TCP_CWR
        seg[l4 + 13] = f_ & 0xFF
        seg[l4 + 16:l4 + 18] = b"\x00\x00"
        total = _sum(seg[l4:hdr_len], _pseudo_sum(bytes(seg), h, hdr_len - l4 + len(data)))
        total = _sum(data, total)
        seg[l4 + 16:l4 + 18] = (~_fold(total) & 0xFFFF).to_bytes(2, "big")
        out.append(bytes(seg) + data)
    return out


def udp_split(vh: VirtioNetHdr, frame: bytes) -> list[bytes]:
    """A UDP GSO packet (what a UDP_SEGMENT send looks like to a packet socket) -> its
    datagrams, lengths, ids and checksums filled in.  For `vxland capture`."""
    l3, l4 = _l3_offset(frame), vh.csum_start
    v6 = frame[l3 - 2:l3] == b"\x86\xdd"
    if l4 + 8 > len(frame) or vh.gso_size == 0 or (not v6 and frame[l3 - 2:l3] != b"\x08\x00"):
        raise OffloadError("virtio header does not describe a UDP frame")
    h = _L34(l3, l4, l4 + 8, v6)
    ip_id = 0 if v6 else int.from_bytes(frame[l3 + 4:l3 + 6], "big")
    out = []
    for i, start in enumerate(range(h.hdr_len, len(frame), vh.gso_size)):
        data = frame[start:start + vh.gso_size]
        seg = bytearray(frame[:h.hdr_len])
        if v6:
            seg[l3 + 4:l3 + 6] = (l4 - l3 - 40 + 8 + len(data)).to_bytes(2, "big")
        else:
            seg[l3 + 2:l3 + 4] = (l4 - l3 + 8 + len(data)).to_bytes(2, "big")
            seg[l3 + 4:l3 + 6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
            seg[l3 + 10:l3 + 12] = b"\x00\x00"
            seg[l3 + 10:l3 + 12] = (~checksum(seg[l3:l4]) & 0xFFFF).to_bytes(2, "big")
        seg[l4 + 4:l4 + 6] = (8 + len(data)).to_bytes(2, "big")
        seg[l4 + 6:l4 + 8] = b"\x00\x00"
        if vh.flags & F_NEEDS_CSUM:
            pseudo = _sum(seg[l3 + 8:l3 + 40] if v6 else seg[l3 + 12:l3 + 20]) + 17 + 8 + len(data)
            c = ~_fold(_sum(data, _sum(seg[l4:l4 + 8], pseudo))) & 0xFFFF
            seg[l4 + 6:l4 + 8] = (c or 0xFFFF).to_bytes(2, "big")
        out.append(bytes(seg) + data)
    return out


def wire_frames(vh: VirtioNetHdr, frame: bytes) -> list[bytes]:
    """What the wire carries for a frame a packet socket or TAP handed over with `vh`."""
    if vh.gso_type & ~GSO_ECN == GSO_UDP_L4:
        return udp_split(vh, frame)
    return gso_split(vh, frame)


# ---- wire -> TAP ---------------------------------------------------------------------------

def _tcp_checksum_ok(f: bytes, h: _L34) -> bool:
    if not h.v6 and checksum(f[h.l3:h.l3 + 20]) != 0xFFFF:
        return False
    return checksum(f[h.l4:], _pseudo_sum(f, h, len(f) - h.l4)) == 0xFFFF


def _same_flow(a: bytes, b: bytes, h: _L34) -> bool:
    if a[:14] != b[:14]:
        return False
    ia, ib = a[14:], b[14:]
    if h.v6:
        if ia[:4] != ib[:4] or ia[7] != ib[7] or ia[8:40] != ib[8:40]:
            return False
    elif ia[1] != ib[1] or ia[6] != ib[6] or ia[8] != ib[8] or ia[12:20] != ib[12:20]:
        return False
    ta, tb = a[h.l4:], b[h.l4:]
    return (ta[:4] == tb[:4] and ta[8:13] == tb[8:13] and (ta[13] | TCP_PSH) == (tb[13] | TCP_PSH)
            and ta[20:h.hdr_len - h.l4] == tb[20:h.hdr_len - h.l4])


@dataclass
class _Group:
    net: int
    frames: list[bytes]
    h: _L34 | None = None
    mss: int = 0
    payload: int = 0
    next_seq: int = 0
    psh: bool = False
    verified: bool = False

    def finish(self) -> tuple[int, VirtioNetHdr, bytes]:
        if len(self.frames) == 1:
            return self.net, VirtioNetHdr(), self.frames[0]
        h = self.h
        assert h is not None
        head = bytearray(self.frames[0][:h.hdr_len])
        if h.v6:
            head[h.l3 + 4:h.l3 + 6] = (h.hdr_len - h.l3 - 40 + self.payload).to_bytes(2, "big")
        else:
            head[h.l3 + 2:h.l3 + 4] = (h.hdr_len - h.l3 + self.payload).to_bytes(2, "big")
            head[h.l3 + 10:h.l3 + 12] = b"\x00\x00"
            head[h.l3 + 10:h.l3 + 12] = (~checksum(head[h.l3:h.l3 + 20]) & 0xFFFF).to_bytes(2, "big")
        if self.psh:
            head[h.l4 + 13] |= TCP_PSH
        # CHECKSUM_PARTIAL: the pseudo-header sum, folded, not inverted
        pseudo = _fold(_pseudo_sum(bytes(head), h, h.hdr_len - h.l4 + self.payload))
        head[h.l4 + 16:h.l4 + 18] = pseudo.to_bytes(2, "big")
        vh = VirtioNetHdr(F_NEEDS_CSUM, GSO_TCPV6 if h.v6 else GSO_TCPV4, h.hdr_len, self.mss, h.l4, 16)
        return self.net, vh, bytes(head) + b"".join(f[h.hdr_len:] for f in self.frames)


def coalesce(frames: list[tuple[int, bytes]]) -> list[tuple[int, VirtioNetHdr, bytes]]:
    """Frames (network, bytes) in arrival order -> TAP writes (network, virtio header, frame)."""
    out: list[tuple[int, VirtioNetHdr, bytes]] = []
    g: _Group | None = None
    for net, f in frames:
        f = bytes(f)
        h = _parse_tcp(f)
        candidate = h is not None and len(f) > h.hdr_len and \
            not f[h.l4 + 13] & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_CWR)
        if (g is not None and candidate and h is not None and g.h is not None and net == g.net
                and h.v6 == g.h.v6 and h.hdr_len == g.h.hdr_len and not g.psh
                and g.payload % g.mss == 0 and len(f) - h.hdr_len <= g.mss
                and int.from_bytes(f[h.l4 + 4:h.l4 + 8], "big") == g.next_seq
                and len(g.frames) < GSO_MAX_SEGS
                and h.hdr_len - h.l3 + g.payload + len(f) - h.hdr_len <= 65535
                and _same_flow(g.frames[0], f, h)):
            if not g.verified:
                g.verified = _tcp_checksum_ok(g.frames[0], g.h)
            if g.verified and _tcp_checksum_ok(f, h):
                size = len(f) - h.hdr_len
                g.frames.append(f)
                g.payload += size
                g.next_seq = (g.next_seq + size) & 0xFFFFFFFF
                g.psh = bool(f[h.l4 + 13] & TCP_PSH)
                continue
        if g is not None:
            out.append(g.finish())
        g = _Group(net, [f])
        if candidate and h is not None:
            size = len(f) - h.hdr_len
            g.h, g.mss, g.payload = h, size, size
            g.next_seq = (int.from_bytes(f[h.l4 + 4:h.l4 + 8], "big") + size) & 0xFFFFFFFF
            g.psh = bool(f[h.l4 + 13] & TCP_PSH)
        else:
            out.append(g.finish())
            g = None
    if g is not None:
        out.append(g.finish())
    return out
