"""TAP offloads in plain Python: the reference for native/offload.c.

With IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6) a TAP hands over TCP
super-frames of up to 64 KiB behind a `struct virtio_net_hdr`, and accepts them
back.  `gso_split` turns one such frame into the MSS-sized segments the wire
carries (what the kernel's tcp_gso_segment does); `coalesce` merges consecutive
in-order segments of one TCP flow into one super-frame for the TAP (the
receive side's GRO), after verifying every checksum; `inner_offload` finds
the inner checksums and super-frames that a kernel VTEP left for a NIC to
finish and a virtual link passed on.  Sans-IO:
bytes in, bytes out.  tests/test_offload.py holds the C path equal to this and both to scapy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

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
    proto: int = 6            # 6 TCP, 17 UDP


def _pseudo_sum(f: bytes, h: _L34, l4_len: int) -> int:
    addresses = f[h.l3 + 8:h.l3 + 40] if h.v6 else f[h.l3 + 12:h.l3 + 20]
    return _sum(addresses) + h.proto + l4_len


def _parse_l4(f: bytes) -> _L34 | None:
    """A plain TCP segment or UDP datagram: IPv4 without options or fragments, IPv6
    without extension headers."""
    if _l3_offset(f) != 14 or len(f) < 42:
        return None
    ethertype, ip = f[12:14], f[14:]
    if (ethertype == b"\x08\x00" and ip[0] == 0x45 and ip[9] in (6, 17)
            and int.from_bytes(ip[6:8], "big") & 0x3FFF == 0 and int.from_bytes(ip[2:4], "big") == len(f) - 14):
        h = _L34(14, 34, 0, False, ip[9])
    elif (ethertype == b"\x86\xdd" and len(f) >= 62 and ip[0] >> 4 == 6 and ip[6] in (6, 17)
          and int.from_bytes(ip[4:6], "big") == len(f) - 54):
        h = _L34(14, 54, 0, True, ip[6])
    else:
        return None
    if h.proto == 17:
        h.hdr_len = h.l4 + 8
        return h if int.from_bytes(f[h.l4 + 4:h.l4 + 6], "big") == len(f) - h.l4 else None
    if h.l4 + 20 > len(f):
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


def _fix_ip(seg: bytearray, h: _L34, l4_len: int, ip_id: int) -> None:
    """One segment's IP header: lengths, IPv4 id and header checksum."""
    if h.v6:
        seg[h.l3 + 4:h.l3 + 6] = (h.l4 - h.l3 - 40 + l4_len).to_bytes(2, "big")
    else:
        seg[h.l3 + 2:h.l3 + 4] = (h.l4 - h.l3 + l4_len).to_bytes(2, "big")
        seg[h.l3 + 4:h.l3 + 6] = (ip_id & 0xFFFF).to_bytes(2, "big")
        seg[h.l3 + 10:h.l3 + 12] = b"\x00\x00"
        seg[h.l3 + 10:h.l3 + 12] = (~checksum(seg[h.l3:h.l4]) & 0xFFFF).to_bytes(2, "big")


def gso_split(vh: VirtioNetHdr, frame: bytes) -> list[bytes]:
    """One frame read from a VNET_HDR TAP (or a packet socket) -> the frames the wire carries."""
    kind = vh.gso_type & ~GSO_ECN
    f = bytearray(frame)
    if kind == GSO_NONE:
        if vh.flags & F_NEEDS_CSUM:
            _complete_checksum(f, vh.csum_start, vh.csum_offset)
        return [bytes(f)]
    udp = kind == GSO_UDP_L4
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise OffloadError(f"GSO type {vh.gso_type} is neither TCP nor UDP")
    l3, l4 = _l3_offset(frame), vh.csum_start
    ethertype = frame[l3 - 2:l3] if 2 <= l3 <= len(frame) else b""
    v6 = ethertype == b"\x86\xdd" if udp else kind == GSO_TCPV6
    # csum_start is the L4 header: the whole IP header must lie before it
    if (ethertype != (b"\x86\xdd" if v6 else b"\x08\x00") or l4 + (8 if udp else 20) > len(frame)
            or l4 < l3 + (40 if v6 else 20) or vh.csum_offset != (6 if udp else 16) or vh.gso_size == 0):
        raise OffloadError("virtio header does not describe a TCP or UDP frame")
    if (frame[l3] >> 4 != (6 if v6 else 4)) or (not v6 and l4 - l3 != (frame[l3] & 15) * 4):
        raise OffloadError("csum_start is not right after the IP header")
    hdr_len = l4 + 8 if udp else l4 + (frame[l4 + 12] >> 4) * 4
    if hdr_len < l4 + (8 if udp else 20) or hdr_len > len(frame) or hdr_len > SEG_HEAD:
        raise OffloadError("bad transport header length")
    h = _L34(l3, l4, hdr_len, v6, 17 if udp else 6)
    payload, mss = len(frame) - hdr_len, vh.gso_size
    n = -(-payload // mss) if payload else 1
    ip_id = 0 if v6 else int.from_bytes(frame[l3 + 4:l3 + 6], "big")
    seq = 0 if udp else int.from_bytes(frame[l4 + 4:l4 + 8], "big")
    flags = 0 if udp else frame[l4 + 13]
    check_at = l4 + (6 if udp else 16)
    out = []
    for i in range(n):
        data = frame[hdr_len + i * mss:hdr_len + min(payload, (i + 1) * mss)]
        seg = bytearray(frame[:hdr_len])
        l4_len = hdr_len - l4 + len(data)
        _fix_ip(seg, h, l4_len, ip_id + i)
        if udp:
            seg[l4 + 4:l4 + 6] = l4_len.to_bytes(2, "big")
        else:
            seg[l4 + 4:l4 + 8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
            f_ = flags
            if i != n - 1:
                f_ &= ~(TCP_FIN | TCP_PSH)
            if i != 0:
                f_ &= ~TCP_CWR
            seg[l4 + 13] = f_ & 0xFF
        seg[check_at:check_at + 2] = b"\x00\x00"
        if not udp or vh.flags & F_NEEDS_CSUM:
            total = _sum(data, _sum(seg[l4:hdr_len], _pseudo_sum(bytes(seg), h, l4_len)))
            c = ~_fold(total) & 0xFFFF
            seg[check_at:check_at + 2] = (0xFFFF if udp and c == 0 else c).to_bytes(2, "big")
        out.append(bytes(seg) + data)
    return out


# ---- wire -> TAP: checksums a kernel VTEP left unfinished ---------------------------------

def _locate_l4(f: bytes) -> tuple[_L34, int] | None:
    """Where the TCP or UDP header of a received inner frame is, and its length from the IP
    header: after any VLAN tags, IPv4 (any header length, not a fragment) or IPv6 (no
    extension headers)."""
    l3 = _l3_offset(f)
    if l3 > len(f):
        return None
    ethertype, ip = f[l3 - 2:l3], f[l3:]
    if ethertype == b"\x08\x00":
        if len(ip) < 20 or ip[0] >> 4 != 4:
            return None
        ihl, total = (ip[0] & 15) * 4, int.from_bytes(ip[2:4], "big")
        if ihl < 20 or total < ihl or total > len(ip) or int.from_bytes(ip[6:8], "big") & 0x3FFF:
            return None
        h, l4_len = _L34(l3, l3 + ihl, 0, False, ip[9]), total - ihl
    elif ethertype == b"\x86\xdd":
        if len(ip) < 40 or ip[0] >> 4 != 6 or int.from_bytes(ip[4:6], "big") > len(ip) - 40:
            return None
        h, l4_len = _L34(l3, l3 + 40, 0, True, ip[6]), int.from_bytes(ip[4:6], "big")
    else:
        return None
    ok = (h.proto == 6 and l4_len >= 20) or (h.proto == 17 and l4_len >= 8)
    return (h, l4_len) if ok else None


def inner_offload(frame: bytes, mtu: int, gso_hint: int = 0) -> VirtioNetHdr | None:
    """How the TAP write must describe a received inner frame (vx_inner_offload):
    NEEDS_CSUM for a TCP or UDP checksum that holds exactly the folded pseudo-header sum
    and does not verify (a kernel VTEP's CHECKSUM_PARTIAL, handed on by a veth or
    virtio-net), and a GSO type and size when that packet is an unsegmented super-frame
    (TCP longer than `mtu`, cut to fit it; UDP of `gso_hint`-byte datagrams).  None for
    anything else: a valid checksum, a wrong one (never "fixed"), none at all."""
    found = _locate_l4(frame)
    if found is None or found[0].l4 > 0xFFFF:
        return None
    h, l4_len = found
    at = 16 if h.proto == 6 else 6
    field = int.from_bytes(frame[h.l4 + at:h.l4 + at + 2], "big")
    if h.proto == 17 and not h.v6 and field == 0:
        return None                                  # IPv4 UDP sent without a checksum
    pseudo = _pseudo_sum(frame, h, l4_len)
    if field != _fold(pseudo) or checksum(frame[h.l4:h.l4 + l4_len], pseudo) == 0xFFFF:
        return None
    vh = VirtioNetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, h.l4, at)
    l3_len = h.l4 - h.l3 + l4_len
    if h.l3 + l3_len != len(frame):                  # super-frames carry no Ethernet padding
        return vh
    if h.proto == 6 and l3_len > mtu:
        doff = (frame[h.l4 + 12] >> 4) * 4
        headers = h.l4 - h.l3 + doff
        if 20 <= doff <= l4_len and h.l4 + doff <= SEG_HEAD and mtu > headers:
            return VirtioNetHdr(F_NEEDS_CSUM, GSO_TCPV6 if h.v6 else GSO_TCPV4, h.l4 + doff, mtu - headers,
                                h.l4, at)
    elif h.proto == 17 and 0 < gso_hint <= 0xFFFF and l4_len - 8 > gso_hint and h.l4 + 8 <= SEG_HEAD:
        return VirtioNetHdr(F_NEEDS_CSUM, GSO_UDP_L4, h.l4 + 8, gso_hint, h.l4, at)
    return vh


def finish_checksum(frame: bytes, vh: VirtioNetHdr) -> bytes:
    """The frame with the checksum that inner_offload found partial computed."""
    found = _locate_l4(frame)
    if not vh.flags & F_NEEDS_CSUM or found is None or found[0].l4 != vh.csum_start:
        return frame
    h, l4_len = found
    c = ~checksum(frame[h.l4:h.l4 + l4_len]) & 0xFFFF      # the field holds the pseudo-header sum
    if c == 0 and h.proto == 17:
        c = 0xFFFF
    f = bytearray(frame)
    f[h.l4 + vh.csum_offset:h.l4 + vh.csum_offset + 2] = c.to_bytes(2, "big")
    return bytes(f)


def gro_is_one_packet(data: bytes, gso: int) -> bool:
    """Is a UDP_GRO read that the kernel says holds `gso`-byte datagrams instead one VXLAN
    datagram carrying a UDP super-packet of `gso`-byte datagrams (vx_gro_is_one_packet)?"""
    if gso >= len(data) or len(data) < 8 + 14:
        return False
    found = _locate_l4(bytes(data[8:]))
    return found is not None and found[0].proto == 17 and 8 + found[0].l4 + found[1] == len(data)


# ---- wire -> TAP: coalescing ----------------------------------------------------------------

def _checksum_ok(f: bytes, h: _L34, partial: bool = False) -> bool:
    """The IPv4 header checksum verifies, and the TCP/UDP one does too, or is in the partial
    form that the TAP write asks the kernel to finish."""
    if not h.v6 and checksum(f[h.l3:h.l3 + 20]) != 0xFFFF:
        return False
    return partial or checksum(f[h.l4:], _pseudo_sum(f, h, len(f) - h.l4)) == 0xFFFF


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
    if h.proto == 17:
        return ta[:4] == tb[:4]
    return (ta[:4] == tb[:4] and ta[8:13] == tb[8:13] and (ta[13] | TCP_PSH) == (tb[13] | TCP_PSH)
            and ta[20:h.hdr_len - h.l4] == tb[20:h.hdr_len - h.l4])


def _coalescible(f: bytes, vh: VirtioNetHdr | None, udp: bool) -> _L34 | None:
    """A packet a group may start with: a single segment (not a super-frame already) of TCP
    without SYN/FIN/RST/URG/CWR, or (with udp: the TAP takes UDP GSO) UDP with a checksum (a
    zero one would come out of the kernel's segmentation filled in)."""
    h = _parse_l4(f)
    if (vh is not None and vh.gso_type) or h is None or len(f) <= h.hdr_len:
        return None
    if h.proto == 17:
        return h if udp and (h.v6 or f[h.l4 + 6:h.l4 + 8] != b"\x00\x00") else None
    return None if f[h.l4 + 13] & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_CWR) else h


class TapWrite(NamedTuple):
    """One write to a VNET_HDR TAP: a virtio header, a frame, and the received frames it carries."""
    net: int
    vh: VirtioNetHdr
    frame: bytes
    frames: list[bytes]


@dataclass
class _Group:
    net: int
    frames: list[bytes]
    vh: VirtioNetHdr | None = None           # how decap described the first frame, if it did
    h: _L34 | None = None
    mss: int = 0
    payload: int = 0
    next_seq: int = 0
    psh: bool = False
    verified: bool = False

    def finish(self) -> TapWrite:
        if len(self.frames) == 1:            # as decap described it: the kernel finishes the rest
            return TapWrite(self.net, self.vh or VirtioNetHdr(), self.frames[0], self.frames)
        h = self.h
        assert h is not None
        udp = h.proto == 17
        head = bytearray(self.frames[0][:h.hdr_len])
        l4_len = h.hdr_len - h.l4 + self.payload
        _fix_ip(head, h, l4_len, int.from_bytes(head[h.l3 + 4:h.l3 + 6], "big"))
        if udp:
            head[h.l4 + 4:h.l4 + 6] = l4_len.to_bytes(2, "big")
        elif self.psh:
            head[h.l4 + 13] |= TCP_PSH
        # CHECKSUM_PARTIAL: the pseudo-header sum, folded, not inverted
        check_at = h.l4 + (6 if udp else 16)
        head[check_at:check_at + 2] = _fold(_pseudo_sum(bytes(head), h, l4_len)).to_bytes(2, "big")
        kind = GSO_UDP_L4 if udp else GSO_TCPV6 if h.v6 else GSO_TCPV4
        vh = VirtioNetHdr(F_NEEDS_CSUM, kind, h.hdr_len, self.mss, h.l4, 6 if udp else 16)
        return TapWrite(self.net, vh, bytes(head) + b"".join(f[h.hdr_len:] for f in self.frames), self.frames)


def coalesce(frames: list[tuple[int, bytes]], offloads: list[VirtioNetHdr | None] | None = None,
             udp: bool = True) -> list[TapWrite]:
    """Frames (network, bytes) in arrival order -> TAP writes (network, virtio header, frame).
    `offloads[i]`, if given, is how decapsulation described frame i (inner_offload): a
    checksum left for the kernel to finish, or a super-frame (never grouped).  UDP is grouped
    only with `udp` (the TAPs take UDP GSO)."""
    out: list[TapWrite] = []
    g: _Group | None = None
    for i, (net, f) in enumerate(frames):
        f = bytes(f)
        f_vh = offloads[i] if offloads else None
        f_partial = f_vh is not None and bool(f_vh.flags & F_NEEDS_CSUM)
        h = _coalescible(f, f_vh, udp)
        if (g is not None and h is not None and g.h is not None and net == g.net and h.proto == g.h.proto
                and h.v6 == g.h.v6 and h.hdr_len == g.h.hdr_len and not g.psh
                and g.payload % g.mss == 0 and len(f) - h.hdr_len <= g.mss
                and (h.proto == 17 or int.from_bytes(f[h.l4 + 4:h.l4 + 8], "big") == g.next_seq)
                and len(g.frames) < GSO_MAX_SEGS
                and h.hdr_len - h.l3 + g.payload + len(f) - h.hdr_len <= 65535
                and _same_flow(g.frames[0], f, h)):
            if not g.verified:
                g.verified = _checksum_ok(g.frames[0], g.h, g.vh is not None and bool(g.vh.flags & F_NEEDS_CSUM))
            if g.verified and _checksum_ok(f, h, f_partial):
                size = len(f) - h.hdr_len
                g.frames.append(f)
                g.payload += size
                g.next_seq = (g.next_seq + size) & 0xFFFFFFFF
                g.psh = h.proto == 6 and bool(f[h.l4 + 13] & TCP_PSH)
                continue
        if g is not None:
            out.append(g.finish())
        g = _Group(net, [f], f_vh)
        if h is not None:
            size = len(f) - h.hdr_len
            g.h, g.mss, g.payload = h, size, size
            g.next_seq = (int.from_bytes(f[h.l4 + 4:h.l4 + 8], "big") + size) & 0xFFFFFFFF if h.proto == 6 else 0
            g.psh = h.proto == 6 and bool(f[h.l4 + 13] & TCP_PSH)
        else:
            out.append(g.finish())
            g = None
    if g is not None:
        out.append(g.finish())
    return out
