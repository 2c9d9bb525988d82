"""The systemd notify protocol (sd_notify(3)), without libsystemd: one datagram of
newline-separated assignments to the socket named by $NOTIFY_SOCKET (a path, or an
abstract name when it starts with '@': those exist per network namespace).  Outside
systemd the variable is unset and notify() does nothing.

The daemon sends READY=1 once its TAPs and sockets are up, RELOADING=1 (with
MONOTONIC_USEC) and READY=1 around a reload, STOPPING=1 when it stops, and a STATUS=
line each time, as Type=notify (and Type=notify-reload) services do.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("vxland")


_socket: socket.socket | None = None


def connect() -> None:
    """Open the socket to the service manager now (at start, while vxland may still reach
    it: after the privilege drop its directory may not be open to the user); it is kept."""
    global _socket
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or _socket is not None:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(address)
    except OSError as e:
        s.close()
        log.warning("cannot reach the service manager at %s: %s", path, e.strerror)
        return
    _socket = s


def notify(*assignments: str) -> bool:
    """Tell the service manager; False if there is none, or it could not be told."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    connect()
    if _socket is None:
        return False
    try:
        _socket.send("\n".join(assignments).encode())
        return True
    except OSError as e:
        log.warning("cannot notify the service manager at %s: %s", path, e.strerror)
        return False
