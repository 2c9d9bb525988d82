"""TAP devices: where frames enter and leave vxland on the host side.

python-pytun creates the device (IFF_TAP | IFF_NO_PI); pyroute2 sets its MTU,
attaches it to a bridge and brings it up.  The data path reads and writes the
fd directly (non-blocking), never through pytun's read/write.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

import pytun
from pyroute2 import IPRoute

from .errors import VxlandError

IFNAMSIZ = 16


@dataclass
class Tap:
    name: str
    fd: int
    mac: bytes
    device: pytun.TunTapDevice

    def close(self) -> None:
        """Closing the last fd removes the device unless it was made persistent."""
        self.device.close()


def underlay_mtu(local: str) -> int:
    """The MTU of the interface that holds `local`."""
    with IPRoute() as ipr:
        for msg in ipr.get_addr(address=local):
            link = ipr.get_links(msg["index"])[0]
            return int(link.get_attr("IFLA_MTU"))
    raise VxlandError(f"local address {local} is not configured on any interface of this host")


def open_tap(name: str, *, mtu: int, bridge: str | None = None) -> Tap:
    if not name or len(name) >= IFNAMSIZ or "/" in name or " " in name:
        raise VxlandError(f"bad TAP name {name!r}: 1 to {IFNAMSIZ - 1} characters, no '/' or spaces")
    with IPRoute() as ipr:
        bridge_index = None
        if bridge is not None:
            found = ipr.link_lookup(ifname=bridge)
            if not found:
                raise VxlandError(f"bridge {bridge} does not exist (create it: ip link add {bridge} type bridge)")
            bridge_index = found[0]
        try:
            device = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except pytun.Error as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else None
            if code == errno.EPERM or "not permitted" in str(e):
                raise VxlandError(f"cannot create TAP {name}: operation not permitted "
                                  "(run as root or with CAP_NET_ADMIN)") from None
            if code == errno.EBUSY or "busy" in str(e).lower():
                raise VxlandError(f"cannot create TAP {name}: the device is in use by another process") from None
            raise VxlandError(f"cannot create TAP {name}: {e}") from None
        try:
            fd = device.fileno()
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, mtu=mtu)
            if bridge_index is not None:
                ipr.link("set", index=index, master=bridge_index)
            ipr.link("set", index=index, state="up")
            return Tap(name, fd, bytes(device.hwaddr), device)
        except Exception as e:
            device.close()
            if isinstance(e, VxlandError):
                raise
            raise VxlandError(f"cannot configure TAP {name} (mtu {mtu}, bridge {bridge}): {e}") from None
