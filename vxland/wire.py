"""The VXLAN wire format (RFC 7348 §5) and the outer headers vxland writes.

Pure functions on bytes: no sockets, no clocks.  The C fast path
(native/encap.c) writes the same bytes; tests hold the two equal and check
both against scapy.

    outer IPv4 (20) | UDP (8) | VXLAN: flags(8) reserved(24) VNI(24) reserved(8) | inner Ethernet frame
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

VXLAN_PORT = 4789                 # IANA; Linux's own default is 8472 (flannel uses that)
VXLAN_HLEN = 8
ETH_HLEN = 14
OUTER_V4_LEN = 20 + 8 + VXLAN_HLEN
#: inner MTU = underlay MTU - this (IPv4 20 / IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14)
IPV4_OVERHEAD = 50
IPV6_OVERHEAD = 70
FLAG_I = 0x08                     # "valid VNI"; the only flag RFC 7348 defines
VNI_MAX = (1 << 24) - 1
SOURCE_PORTS = (49152, 65535)     # RFC 7348 §5: RECOMMENDED ephemeral range
DEFAULT_TTL = 64
DEFAULT_GROUP_TTL = 1             # to a multicast group, as the kernel's VXLAN
IP_DF = 0x4000

_FNV_OFFSET = 2166136261
_FNV_PRIME = 16777619
_FLOW_PROTOCOLS = (6, 17, 132)    # TCP, UDP, SCTP: the ones with ports first


class WireError(ValueError):
    """A datagram or frame that cannot be what it claims to be."""


@dataclass(frozen=True)
class VxlanHeader:
    vni: int
    flags: int = FLAG_I

    def encode(self) -> bytes:
        """Reserved fields are zero on transmit (RFC 7348 §5)."""
        if not 0 <= self.vni <= VNI_MAX:
            raise WireError(f"VNI {self.vni} is outside 0..{VNI_MAX}")
        return struct.pack("!B3xI", self.flags, self.vni << 8)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> "VxlanHeader":
        """Parse the first 8 bytes of a UDP payload.  Reserved fields are ignored."""
        if len(payload) < VXLAN_HLEN:
            raise WireError(f"{len(payload)} bytes is shorter than a VXLAN header")
        flags, word = struct.unpack_from("!B3xI", payload)
        return cls(vni=word >> 8, flags=flags)


# ---- MAC addresses ------------------------------------------------------------

_HEX = frozenset("0123456789abcdefABCDEF")


def mac_to_bytes(mac: str) -> bytes:
    """aa:bb:cc:dd:ee:ff (or with -, or one-digit parts) as 6 bytes; ValueError for anything
    else -- signs and spaces too, which int(..., 16) and bytes.fromhex would let through."""
    digits = mac.replace(":", "") if len(mac) == 17 and mac[2::3] == ":::::" else None
    if digits is not None and _HEX.issuperset(digits):  # the common spelling: every route's
        return bytes.fromhex(digits)
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) and _HEX.issuperset(p) for p in parts):
        raise ValueError(f"{mac!r} is not a MAC address (want aa:bb:cc:dd:ee:ff)")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"{mac!r} is not a MAC address (want aa:bb:cc:dd:ee:ff)") from None


def mac_to_str(mac: bytes) -> str:
    return mac.hex(":")


def mac_is_multicast(mac: bytes) -> bool:
    """Group bit set: broadcast and multicast alike."""
    return bool(mac[0] & 1)


def mac_is_zero(mac: bytes) -> bool:
    return mac == b"\x00" * 6


def mac_is_learnable(mac: bytes) -> bool:
    return not mac_is_multicast(mac) and not mac_is_zero(mac)


# ---- the outer UDP source port --------------------------------------------------

def _fnv(h: int, data: bytes | memoryview) -> int:
    for b in bytes(data):
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def flow_hash(frame: bytes | memoryview) -> int:
    """FNV-1a over the frame's L2 addresses and type, then its IP addresses and
    protocol, then its ports (TCP/UDP/SCTP, not for IPv4 fragments)."""
    f = bytes(frame)
    h = _fnv(_FNV_OFFSET, f[:14])
    ethertype = int.from_bytes(f[12:14], "big")
    l3 = f[14:]
    if ethertype == 0x0800 and len(l3) >= 20 and l3[0] >> 4 == 4:
        ihl = (l3[0] & 15) * 4
        if ihl >= 20 and len(l3) >= ihl:
            h = _fnv(h, l3[12:20])
            h = _fnv(h, l3[9:10])
            fragment = int.from_bytes(l3[6:8], "big") & 0x3FFF
            if not fragment and l3[9] in _FLOW_PROTOCOLS and len(l3) >= ihl + 4:
                h = _fnv(h, l3[ihl:ihl + 4])
    elif ethertype == 0x86DD and len(l3) >= 40:
        h = _fnv(h, l3[8:40])
        h = _fnv(h, l3[6:7])
        if l3[6] in _FLOW_PROTOCOLS and len(l3) >= 44:
            h = _fnv(h, l3[40:44])
    return h


def source_port(frame: bytes | memoryview, lo: int = SOURCE_PORTS[0], hi: int = SOURCE_PORTS[1]) -> int:
    """The outer UDP source port: stable per inner flow, spread over [lo, hi]
    (RFC 7348 §5, like the kernel's udp_flow_src_port)."""
    if len(frame) < ETH_HLEN:
        return lo
    return lo + ((flow_hash(frame) * (hi - lo + 1)) >> 32)


# ---- the outer IPv4 / UDP headers ------------------------------------------------

def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# ---- TOS, ECN and DF between inner and outer headers ------------------------------

def inner_tos(frame: bytes | memoryview) -> tuple[int, bool]:
    """The inner IPv4 TOS or IPv6 traffic class, and whether the inner packet must not be
    fragmented (IPv4 DF; IPv6 is never fragmented on the path).  (0, False) if not IP."""
    f = bytes(frame[:16])
    if f[12:14] == b"\x08\x00" and len(frame) >= 34:
        return f[15], bool(frame[20] & 0x40)
    if f[12:14] == b"\x86\xdd" and len(frame) >= 54:
        return (f[14] & 0x0F) << 4 | f[15] >> 4, True
    return 0, False


def outer_tos(inner: int, tos: int = 0, inherit: bool = False) -> int:
    """DSCP configured or inherited; ECN copied from the inner packet with CE becoming
    ECT(0): RFC 6040's normal mode, as the kernel's INET_ECN_encapsulate."""
    ecn = inner & 3
    return ((inner if inherit else tos) & ~3) | (2 if ecn == 3 else ecn)


def ecn_decapsulate(outer: int, frame: bytes) -> bytes | None:
    """RFC 6040 §4.2, as the kernel: an outer CE marks an ECN-capable inner packet CE and
    drops (None) one that is not; non-IP frames pass as they are."""
    if outer & 3 != 3:
        return frame
    f = bytearray(frame)
    if f[12:14] == b"\x08\x00" and len(f) >= 34:
        if f[15] & 3 == 0:
            return None
        ihl = (f[14] & 15) * 4
        if ihl < 20 or 14 + ihl > len(f):
            return frame                        # no header to mark: passed on untouched
        f[15] |= 3
        f[24:26] = b"\x00\x00"
        f[24:26] = ipv4_checksum(bytes(f[14:14 + ihl])).to_bytes(2, "big")
        return bytes(f)
    if f[12:14] == b"\x86\xdd" and len(f) >= 54:
        if (f[15] >> 4) & 3 == 0:
            return None
        f[15] |= 0x30
        return bytes(f)
    return frame


def outer_headers_v4(*, local: str, remote: str, vni: int, frame_len: int, sport: int,
                     dport: int = VXLAN_PORT, ttl: int = DEFAULT_TTL, tos: int = 0,
                     df: bool = True) -> bytes:
    """IPv4 + UDP + VXLAN headers for one frame.  The UDP checksum is zero, as RFC 7348 §5
    says for IPv4; the IP id is left zero for the kernel to fill in."""
    udp_len = 8 + VXLAN_HLEN + frame_len
    ip = bytearray(struct.pack(
        "!BBHHHBBH4s4s", 0x45, tos, 20 + udp_len, 0, IP_DF if df else 0, ttl, 17, 0,
        ipaddress.IPv4Address(local).packed, ipaddress.IPv4Address(remote).packed))
    struct.pack_into("!H", ip, 10, ipv4_checksum(bytes(ip)))
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0)
    return bytes(ip) + udp + VxlanHeader(vni).encode()


def outer_headers_v6(*, local: str, remote: str, vni: int, frame: bytes, sport: int,
                     dport: int = VXLAN_PORT, ttl: int = DEFAULT_TTL, tos: int = 0) -> bytes:
    """IPv6 + UDP + VXLAN headers for `frame`.  IPv6 needs a UDP checksum (RFC 8200;
    RFC 6935 allows zero only where both ends are configured for it), so it is computed."""
    udp_len = 8 + VXLAN_HLEN + len(frame)
    src, dst = ipaddress.IPv6Address(local).packed, ipaddress.IPv6Address(remote).packed
    ip = struct.pack("!IHBB16s16s", 6 << 28 | tos << 20, udp_len, 17, ttl, src, dst)
    udp = bytearray(struct.pack("!HHHH", sport, dport, udp_len, 0)) + VxlanHeader(vni).encode()
    data = src + dst + struct.pack("!II", udp_len, 17) + bytes(udp) + bytes(frame)
    if len(data) % 2:
        data += b"\x00"
    check = ipv4_checksum(data)
    struct.pack_into("!H", udp, 6, check or 0xFFFF)
    return ip + bytes(udp)


def outer_headers(*, local: str, remote: str, vni: int, frame: bytes, sport: int,
                  dport: int = VXLAN_PORT, ttl: int = DEFAULT_TTL, tos: int = 0, df: bool = True) -> bytes:
    """The outer headers for `frame` over an IPv4 or IPv6 underlay, by `local`'s family."""
    if ipaddress.ip_address(local).version == 6:
        return outer_headers_v6(local=local, remote=remote, vni=vni, frame=frame, sport=sport,
                                dport=dport, ttl=ttl, tos=tos)
    return outer_headers_v4(local=local, remote=remote, vni=vni, frame_len=len(frame), sport=sport,
                            dport=dport, ttl=ttl, tos=tos, df=df)


# ---- answering a frame too big for the tunnel (path MTU, RFC 1191 / RFC 8201) -------------

def _ipv4_unanswerable(src: bytes, dst: bytes) -> bool:
    return (dst == b"\xff" * 4 or dst[0] & 0xF0 == 0xE0 or src[0] in (0, 127) or src == b"\xff" * 4
            or src[0] & 0xF0 == 0xE0)


def too_big_reply(frame: bytes, mtu: int) -> bytes | None:
    """The ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" answering a frame too
    big for the tunnel, as the kernel's bridged tunnels build it (see native/answer.c): from
    the frame's destination to its source, quoting as much of it as 576 / 1280 bytes allow.
    None where the kernel would not answer -- except IPv4 without DF, answered too."""
    f = bytes(frame)
    if len(f) < ETH_HLEN + 20:
        return None
    ethertype, ip = f[12:14], f[14:]
    if ethertype == b"\x08\x00" and ip[0] >> 4 == 4:
        ihl = (ip[0] & 15) * 4
        if mtu < 576 or ip[6:8] not in (b"\x40\x00", b"\x00\x00", b"\x20\x00") or ihl < 20 \
                or _ipv4_unanswerable(ip[12:16], ip[16:20]):
            return None                               # DF, none, or a first fragment: answered
        if ip[9] == 1 and (len(ip) <= ihl or ip[ihl] in (3, 4, 5, 11, 12)):
            return None
        quote = ip[:576 - 28]
        icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote)
        icmp[2:4] = ipv4_checksum(bytes(icmp) + b"\x00" * (len(icmp) % 2)).to_bytes(2, "big")
        l3 = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, IP_DF, ip[8], 1, 0, ip[16:20],
                                   ip[12:16]))
        l3[10:12] = ipv4_checksum(bytes(l3)).to_bytes(2, "big")
        return f[6:12] + f[0:6] + ethertype + bytes(l3) + bytes(icmp)
    if ethertype == b"\x86\xdd" and len(ip) >= 40 and ip[0] >> 4 == 6:
        src, dst, next_header = ip[8:24], ip[24:40], ip[6]
        if mtu < 1280 or src in (bytes(16), bytes(15) + b"\x01") or src[0] == 0xFF:
            return None
        if next_header == 58 and (len(ip) <= 40 or ip[40] < 128 or ip[40] == 137):
            return None
        if next_header in (0, 43, 44, 60, 51, 135):          # extension headers: not answered
            return None
        quote = ip[:1280 - 48]
        icmp = bytearray(struct.pack("!BBHI", 2, 0, 0, mtu) + quote)
        pseudo = dst + src + struct.pack("!IxxxB", len(icmp), 58)
        data = pseudo + bytes(icmp)
        icmp[2:4] = ipv4_checksum(data + b"\x00" * (len(data) % 2)).to_bytes(2, "big")
        l3 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, ip[7]) + dst + src
        return f[6:12] + f[0:6] + ethertype + l3 + bytes(icmp)
    return None


# ---- ARP and ND: who has which address, and answering for it (neighbour suppression) ------

@dataclass(frozen=True)
class NeighbourFrame:
    """An ARP request or reply, or an IPv6 neighbour solicitation or advertisement."""
    kind: str                 # "arp-request", "arp-reply", "solicitation", "advertisement"
    target: str               # the address asked for, or advertised
    sender: str               # the sender's address ("0.0.0.0" / "::" if it has none yet)
    sender_mac: bytes | None  # the MAC the frame says the sender address has


def _nd_option(opt: bytes, kind: int) -> bytes | None:
    while len(opt) >= 8:
        size = opt[1] * 8
        if not size or size > len(opt):
            return None
        if opt[0] == kind and size == 8:
            return opt[2:8]
        opt = opt[size:]
    return None


def neighbour_frame(frame: bytes) -> NeighbourFrame | None:
    f = bytes(frame)
    if len(f) < ETH_HLEN:
        return None
    if f[12:14] == b"\x08\x06":
        a = f[14:]
        if len(a) < 28 or a[:6] != b"\x00\x01\x08\x00\x06\x04" or a[6:8] not in (b"\x00\x01", b"\x00\x02"):
            return None
        return NeighbourFrame("arp-request" if a[7] == 1 else "arp-reply", str(ipaddress.IPv4Address(a[24:28])),
                              str(ipaddress.IPv4Address(a[14:18])), a[8:14])
    if f[12:14] == b"\x86\xdd":
        ip = f[14:]
        if len(ip) < 40 + 24 or ip[0] >> 4 != 6 or ip[6] != 58 or ip[7] != 255:
            return None
        size = int.from_bytes(ip[4:6], "big")
        icmp = ip[40:40 + size]
        if size < 24 or size > len(ip) - 40 or icmp[1] != 0 or icmp[0] not in (135, 136) or icmp[8] == 0xFF:
            return None
        target = str(ipaddress.IPv6Address(icmp[8:24]))
        if icmp[0] == 135:
            return NeighbourFrame("solicitation", target, str(ipaddress.IPv6Address(ip[8:24])), _nd_option(icmp[24:], 1))
        return NeighbourFrame("advertisement", target, target, _nd_option(icmp[24:], 2))
    return None


def is_host_address(address: str) -> bool:
    """Unicast and specified: an address worth knowing a MAC for."""
    ip = ipaddress.ip_address(address)
    return not (ip.is_unspecified or ip.is_multicast or address == "255.255.255.255")


def neighbour_reply(frame: bytes, mac: bytes) -> bytes | None:
    """The ARP reply or neighbour advertisement from `mac` that answers an ARP request or a
    neighbour solicitation (native/neigh.c); None for anything else, and for probes,
    gratuitous ARP and duplicate address detection."""
    n = neighbour_frame(frame)
    if n is None or n.kind not in ("arp-request", "solicitation") or not is_host_address(n.sender) \
            or n.sender == n.target:
        return None
    f = bytes(frame)
    if n.kind == "arp-request":
        arp = f[14:20] + b"\x00\x02" + mac + ipaddress.IPv4Address(n.target).packed + f[22:28] + \
            ipaddress.IPv4Address(n.sender).packed
        return f[6:12] + mac + b"\x08\x06" + arp
    target, dst = ipaddress.IPv6Address(n.target).packed, ipaddress.IPv6Address(n.sender).packed
    icmp = bytearray(struct.pack("!BBHI", 136, 0, 0, 0x60000000) + target + b"\x02\x01" + mac)
    pseudo = target + dst + struct.pack("!IxxxB", len(icmp), 58)
    icmp[2:4] = ipv4_checksum(pseudo + bytes(icmp)).to_bytes(2, "big")
    l3 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + target + dst
    return f[6:12] + mac + b"\x86\xdd" + l3 + bytes(icmp)
