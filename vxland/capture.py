"""`vxland capture`: what a port carries, written to a pcap file.

A packet socket (AF_PACKET) on the TAP (inner frames, both directions) or on the
underlay interface (VXLAN datagrams to and from our port).  With PACKET_VNET_HDR
the kernel says which captured packets are GSO super-packets, and they are split
into the segments the wire carries, checksums completed (offload.gso_split), so
the file holds what a tap on the wire would see.  Run it in the daemon's network
namespace.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from . import offload
from .errors import VxlandError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PCAP_ETHERNET = 1
SNAPLEN = 262144


def write_pcap_header(out: BinaryIO) -> None:
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, PCAP_ETHERNET))


def write_pcap_record(out: BinaryIO, frame: bytes, when: float) -> None:
    seconds = int(when)
    out.write(struct.pack("<IIII", seconds, int((when - seconds) * 1e6), len(frame), len(frame)))
    out.write(frame)


def read_pcap(path: str) -> list[bytes]:
    """The frames of a pcap file (Ethernet, either byte order, micro- or nanosecond)."""
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
             b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if order is None or len(data) < 24:
        raise VxlandError(f"{path} is not a pcap file")
    if struct.unpack(order + "I", data[20:24])[0] != PCAP_ETHERNET:
        raise VxlandError(f"{path}: only Ethernet captures are understood")
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(order + "I", data[off + 8:off + 12])[0]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def is_vxlan_of(frame: bytes, port: int) -> bool:
    """An IPv4 or IPv6 UDP datagram to or from `port` (IPv6 without extension headers)."""
    if len(frame) < 14:
        return False
    if frame[12:14] == b"\x08\x00" and len(frame) >= 34 and frame[23] == 17:
        l4 = 14 + (frame[14] & 15) * 4
    elif frame[12:14] == b"\x86\xdd" and len(frame) >= 54 and frame[20] == 17:
        l4 = 54
    else:
        return False
    if l4 < 34 or len(frame) < l4 + 4:
        return False
    sport, dport = struct.unpack("!HH", frame[l4:l4 + 4])
    return port in (sport, dport)


@dataclass
class Capture:
    interface: str
    port: int | None = None          # underlay: keep only UDP to/from this port
    # the bytes as the kernel holds them: GSO super-packets whole, and checksums that a sender
    # left to offload unfinished -- what a userspace VTEP's socket reads, not what a wire carries
    as_received: bool = False

    def frames(self, count: int | None, seconds: float | None) -> Iterator[tuple[float, bytes]]:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise VxlandError("capturing needs root (or CAP_NET_RAW)") from None
        with sock:
            if not self.as_received:
                sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            try:
                sock.bind((self.interface, ETH_P_ALL))
            except OSError as e:
                raise VxlandError(f"cannot capture on {self.interface}: {e.strerror} "
                                  "(run it in the daemon's network namespace)") from None
            deadline = time.monotonic() + seconds if seconds else None
            taken = 0
            while count is None or taken < count:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    sock.settimeout(left)
                try:
                    data = sock.recv(SNAPLEN + offload.VNET_HLEN)
                except socket.timeout:
                    return
                when = time.time()
                if self.as_received:
                    frames = [data]
                else:
                    try:
                        frames = offload.gso_split(offload.VirtioNetHdr.decode(data), data[offload.VNET_HLEN:])
                    except offload.OffloadError:
                        frames = [data[offload.VNET_HLEN:]]
                for frame in frames:
                    if self.port is not None and not is_vxlan_of(frame, self.port):
                        continue
                    yield when, frame
                    taken += 1
                    if count is not None and taken >= count:
                        return

    def write(self, path: str, count: int | None, seconds: float | None) -> int:
        n = 0
        with open(path, "wb", buffering=1 << 20) as out:
            write_pcap_header(out)
            for when, frame in self.frames(count, seconds):
                write_pcap_record(out, frame, when)
                n += 1
        return n
