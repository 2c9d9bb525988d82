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


def notify(*assignments: str) -> bool:
    """Tell the service manager; False if there is none, or it could not be told."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(assignments).encode(), address)
        return True
    except OSError as e:
        log.warning("cannot notify the service manager at %s: %s", path, e.strerror)
        return False
