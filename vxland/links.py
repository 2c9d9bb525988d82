"""The few link operations the daemon needs, over a netlink socket of its own: which
interface holds an address, and a link's MTU, master and state (read and set).

pyroute2 did these, and importing it costs the daemon 22 MiB of its ~40 (it loads all of
its modules at once); the CNI plugin, a short-lived process that also makes veths in other
namespaces, keeps using it.  Messages are built and parsed with `struct`, every length
checked against the bytes received before it is used.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 18, 20, 22
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_MTU, IFLA_MASTER = 4, 10
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1

_NLMSGHDR = struct.Struct("=IHHII")           # length, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")          # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")           # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")                 # length, type


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    body = _RTATTR.pack(_RTATTR.size + len(payload), kind) + payload
    return body + bytes(_align(len(body)) - len(body))


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    """The route attributes in data[offset:], by type; a malformed one ends the walk."""
    found = {}
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            break
        found[kind] = data[offset + _RTATTR.size:offset + length]
        offset += _align(length)
    return found


def _messages(data: bytes):
    """(type, body) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise OSError(errno.EPROTO, "malformed netlink reply")
        yield kind, data[offset + _NLMSGHDR.size:offset + length]
        offset += _align(length)


def _talk(kind: int, flags: int, body: bytes):
    """Send one request; yield the bodies of its answers up to NLMSG_DONE or the ack.  The
    socket is new, in the daemon's own namespace, and joins no group: what it receives is the
    kernel's answer; a kernel that does not answer in 5 s is an error, not a hang."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as s:
        s.settimeout(5.0)
        s.bind((0, 0))
        s.sendall(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST, 1, 0) + body)
        while True:
            for reply, payload in _messages(s.recv(1 << 16)):
                if reply == NLMSG_DONE:
                    return
                if reply == NLMSG_ERROR:
                    if len(payload) < 4:
                        raise OSError(errno.EPROTO, "malformed netlink error")
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return                          # the ack
                yield reply, payload


def index_of(name: str) -> int | None:
    """The link's index, or None if there is no such link."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def set_link(index: int, *, mtu: int | None = None, master: int | None = None, up: bool = False) -> None:
    """Change a link's master (0: none), then its MTU and/or bring it up: a TAP that cannot
    join its bridge is not left up outside it."""
    if master is not None:
        _newlink(index, _attr(IFLA_MASTER, struct.pack("=I", master)), 0)
    if mtu is not None or up:
        _newlink(index, _attr(IFLA_MTU, struct.pack("=I", mtu)) if mtu is not None else b"", IFF_UP if up else 0)


def _newlink(index: int, attrs: bytes, flags: int) -> None:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, flags) + attrs
    for _ in _talk(RTM_NEWLINK, NLM_F_ACK, body):
        pass


def _link(index: int) -> dict[int, bytes]:
    """The link's attributes (RTM_GETLINK: of the daemon's own namespace, which /sys need not
    show when the namespace was entered without remounting it)."""
    for kind, body in _talk(RTM_GETLINK, NLM_F_ACK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)):
        if kind == RTM_NEWLINK and len(body) >= _IFINFOMSG.size:
            return _attrs(body, _IFINFOMSG.size)
    raise OSError(errno.ENODEV, f"no link {index}")


def _u32(attrs: dict[int, bytes], kind: int) -> int | None:
    value = attrs.get(kind)
    return struct.unpack("=I", value)[0] if value is not None and len(value) == 4 else None


def link_holding(address: str) -> int | None:
    """The index of the interface that has `address` configured, or None."""
    wanted = ipaddress.ip_address(address)
    family = socket.AF_INET6 if wanted.version == 6 else socket.AF_INET
    found = None
    for kind, body in _talk(RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(family, 0, 0, 0, 0)):
        if kind != RTM_NEWADDR or found is not None or len(body) < _IFADDRMSG.size:
            continue                                # (read on to the end of the dump)
        got_family, _, _, _, index = _IFADDRMSG.unpack_from(body)
        attrs = _attrs(body, _IFADDRMSG.size)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if got_family == family and raw is not None and raw == wanted.packed:
            found = index
    return found


def master_of(name: str) -> str | None:
    """The name of the link's master (a bridge); None if it has none or is gone."""
    index = index_of(name)
    try:
        master = _u32(_link(index), IFLA_MASTER) if index is not None else None
        return socket.if_indextoname(master) if master else None
    except OSError:
        return None


def mtu_of(name: str) -> int:
    index = index_of(name)
    mtu = _u32(_link(index), IFLA_MTU) if index is not None else None
    if mtu is None:
        raise OSError(errno.ENODEV, f"no MTU for link {name}")
    return mtu
