"""The underlay sockets: UDP sockets receive VXLAN, one raw socket sends it.

Sending goes through an IPPROTO_RAW socket because the outer headers are built
by the data path: the UDP source port follows the inner flow (RFC 7348 §5),
which a bound UDP socket cannot do.  IPPROTO_RAW is send-only, so received UDP
is not copied to it.  Receiving goes through an ordinary UDP socket bound to
the VXLAN port, which also validates UDP checksums (zero is accepted).  For the data-path
threads there may be several, one per queue pair: a SO_REUSEPORT group, among which the
kernel spreads datagrams by their 4-tuple -- and the outer source port follows the inner
flow, so flows land on different sockets (native/thread.c).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

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
    udp: socket.socket        # receives VXLAN datagrams on local:port (queue 0)
    raw: socket.socket        # sends whole outer packets, headers and all
    groups: dict[str, socket.socket] = field(default_factory=dict)   # receive on group:port
    more: list[socket.socket] = field(default_factory=list)          # queues 1.. of a SO_REUSEPORT group

    @property
    def family(self) -> int:
        return self.udp.family

    @property
    def queues(self) -> list[socket.socket]:
        """The sockets on local:port, queue q at index q."""
        return [self.udp, *self.more]

    @property
    def receivers(self) -> list[socket.socket]:
        return [*self.queues, *self.groups.values()]

    def close(self) -> None:
        for sock in (*self.receivers, self.raw):
            sock.close()
        self.groups.clear()
        self.more.clear()

    def join(self, group: str, interface: str) -> socket.socket:
        """Receive VXLAN sent to a multicast group (RFC 7348 §4.2): a socket bound to group:port,
        a membership on the underlay interface; and send to groups out of that interface."""
        if group in self.groups:
            return self.groups[group]
        index = socket.if_nametoindex(interface)
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((group, self.port))
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                                ipaddress.IPv6Address(group).packed + struct.pack("@I", index))
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, ipaddress.IPv4Address(group).packed
                                + ipaddress.IPv4Address(self.local).packed + struct.pack("@i", index))
        except OSError as e:
            sock.close()
            raise VxlandError(f"cannot join group {group} on {interface}: {e.strerror}") from None
        _configure_receiver(sock)
        # our own floods must not come back to us: loopback off, out of the underlay interface
        if self.family == socket.AF_INET6:
            self.raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            self.raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        else:
            self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                bytes(4) + ipaddress.IPv4Address(self.local).packed + struct.pack("@i", index))
            self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        self.groups[group] = sock
        return sock

    def leave(self, group: str) -> None:
        """Stop receiving from a group (its socket's membership goes with it)."""
        sock = self.groups.pop(group, None)
        if sock is not None:
            sock.close()

    def overflow_drops(self) -> int:
        """Datagrams the kernel dropped because a receive buffer was full: the drops column
        of /proc/net/udp(6) for our receiving sockets."""
        inodes = _inodes(self.receivers)
        return sum(int(fields[12]) for fields in _udp_sockets() if len(fields) > 12 and fields[9] in inodes)


def _udp_sockets():
    """The rows of /proc/net/udp and udp6, split into their fields (the headers too)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                yield from (line.split() for line in f)
        except OSError:
            pass


def _inodes(sockets: list[socket.socket]) -> set[str]:
    return {str(os.fstat(s.fileno()).st_ino) for s in sockets}


def _configure_receiver(sock: socket.socket) -> None:
    """What every receiving socket needs: a deep buffer, non-blocking, the outer ECN bits."""
    _grow_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)   # outer ECN, for RFC 6040
        # accept zero UDP checksums from VTEPs set up for them (RFC 6935/6936, the
        # kernel's udp6zerocsumtx); a wrong non-zero one is still dropped
        sock.setsockopt(SOL_UDP, UDP_NO_CHECK6_RX, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)          # outer ECN, for RFC 6040


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


def _bind_receiver(family: int, local: str, port: int, reuseport: bool) -> socket.socket:
    try:
        udp = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as e:
        raise VxlandError(f"cannot open a UDP socket for {local}:{port}: {e.strerror}") from None
    try:
        if reuseport:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
    _configure_receiver(udp)
    return udp


def _proc_hex(address: str) -> str:
    """An address as /proc/net/udp(6) prints it: 32-bit words in host (little-endian) order."""
    packed = ipaddress.ip_address(address).packed
    return "".join(packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4))


def strangers_on_port(local: str, port: int, ours: list[socket.socket]) -> int:
    """UDP sockets on local:port or the wildcard's that are not among ours: in a SO_REUSEPORT
    group, another process's socket would silently take a share of the datagrams."""
    inodes = _inodes(ours)
    wanted = {f"{_proc_hex(local)}:{port:04X}", f"{'0' * len(_proc_hex(local))}:{port:04X}"}
    return sum(1 for fields in _udp_sockets() if len(fields) > 9 and fields[1] in wanted and fields[9] not in inodes)


def open_underlay(local: str, port: int, queues: int = 1) -> Underlay:
    """The receiving sockets (`queues` of them: more than one make a SO_REUSEPORT group)
    and the raw socket."""
    family = socket.AF_INET6 if ipaddress.ip_address(local).version == 6 else socket.AF_INET
    receivers: list[socket.socket] = []
    try:
        for _ in range(queues):
            receivers.append(_bind_receiver(family, local, port, reuseport=queues > 1))
        # a group is open to any process of the same user that sets SO_REUSEPORT too: a
        # vxland already there would share our port, each of us losing part of the other's
        # traffic -- refused, as a plain bind refuses it
        if queues > 1 and strangers_on_port(local, port, receivers):
            raise VxlandError(f"UDP port {port} on {local} is busy (another vxland, or a kernel "
                              "VXLAN device on the same port?)")
    except BaseException:
        for sock in receivers:
            sock.close()
        raise
    try:
        raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        for sock in receivers:
            sock.close()
        raise VxlandError("cannot open a raw socket: operation not permitted "
                          "(run as root or with CAP_NET_RAW)") from None
    _grow_buffer(raw, SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF)
    raw.setblocking(False)
    return Underlay(local, port, receivers[0], raw, more=receivers[1:])
