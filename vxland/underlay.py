"""The underlay sockets: one UDP socket receives VXLAN, one raw socket sends it.

Sending goes through an IPPROTO_RAW socket because the outer headers are built
by the data path: the UDP source port follows the inner flow (RFC 7348 §5),
which a bound UDP socket cannot do.  IPPROTO_RAW is send-only, so received UDP
is not copied to it.  Receiving goes through an ordinary UDP socket bound to
the VXLAN port, which also validates UDP checksums (zero is accepted).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass

from .errors import VxlandError

from .datapath import SOL_UDP, UDP_GRO
RCVBUF = 8 << 20
SNDBUF = 8 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


@dataclass
class Underlay:
    local: str
    port: int
    udp: socket.socket        # receives VXLAN datagrams on local:port
    raw: socket.socket        # sends whole outer IPv4 packets

    def close(self) -> None:
        self.udp.close()
        self.raw.close()

    def overflow_drops(self) -> int:
        """Datagrams the kernel dropped because the receive buffer was full: the
        drops column of /proc/net/udp for our socket."""
        inode = str(os.fstat(self.udp.fileno()).st_ino)
        try:
            with open("/proc/net/udp") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 12 and fields[9] == inode:
                        return int(fields[12])
        except OSError:
            pass
        return 0


def _grow_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)     # past rmem_max, as root
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def enable_gro(sock: socket.socket) -> bool:
    """Let the kernel hand over several datagrams of one flow in one read (the data
    path splits them by the size in the control message).  False if refused."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


UDP_NO_CHECK6_RX = 102       # linux/udp.h


def open_underlay(local: str, port: int) -> Underlay:
    family = socket.AF_INET6 if ipaddress.ip_address(local).version == 6 else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _grow_buffer(udp, SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF)
        udp.bind((local, port))
    except OSError as e:
        udp.close()
        if e.errno == errno.EADDRINUSE:
            raise VxlandError(f"UDP port {port} on {local} is busy (another vxland, or a kernel "
                              "VXLAN device on the same port?)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise VxlandError(f"local address {local} is not an address of this host") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise VxlandError(f"cannot bind UDP port {port}: permission denied (run as root)") from None
        raise VxlandError(f"cannot bind UDP {local}:{port}: {e.strerror}") from None
    udp.setblocking(False)
    if family == socket.AF_INET6:
        udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)   # outer ECN, for RFC 6040
        # accept zero UDP checksums from VTEPs set up for them (RFC 6935/6936, the
        # kernel's udp6zerocsumtx); a wrong non-zero one is still dropped
        udp.setsockopt(SOL_UDP, UDP_NO_CHECK6_RX, 1)
    else:
        udp.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)          # outer ECN, for RFC 6040
    try:
        raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        udp.close()
        raise VxlandError("cannot open a raw socket: operation not permitted "
                          "(run as root or with CAP_NET_RAW)") from None
    _grow_buffer(raw, SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF)
    raw.setblocking(False)
    return Underlay(local, port, udp, raw)
