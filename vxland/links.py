"""The few link operations the daemon needs, over a netlink socket of its own: which
interface holds an address, and a link's MTU, master and state.

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
RTM_NEWLINK, RTM_NEWADDR, RTM_GETADDR = 16, 20, 22
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
    """Send one request; yield the bodies of its answers up to NLMSG_DONE or the ack."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as s:
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
    """Change a link's MTU, master (0: none) and/or bring it up, in one RTM_NEWLINK."""
    attrs = b""
    if mtu is not None:
        attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
    if master is not None:
        attrs += _attr(IFLA_MASTER, struct.pack("=I", master))
    flags = IFF_UP if up else 0
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, flags) + attrs
    for _ in _talk(RTM_NEWLINK, NLM_F_ACK, body):
        pass


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
    """The name of the link's master (a bridge), from sysfs; None if it has none or is gone."""
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{name}/master"))
    except OSError:
        return None


def mtu_of(name: str) -> int:
    with open(f"/sys/class/net/{name}/mtu") as f:
        return int(f.read())
