"""TAP devices: where frames enter and leave vxland on the host side.

python-pytun creates the device (IFF_TAP | IFF_NO_PI); links.py sets its MTU,
attaches it to a bridge and brings it up.  The data path reads and writes the
fd directly (non-blocking), never through pytun's read/write.  With queues > 1
the device is a multi-queue TAP (IFF_MULTI_QUEUE): one fd per queue, the same
name opened again for each; the kernel hands each flow to one queue by its hash
(fastpath.md), and the data-path threads serve the queues (native/thread.c).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from dataclasses import dataclass, field

import pytun

from . import links
from .config import check_ifname
from .errors import VxlandError

log = logging.getLogger("vxland.tap")

IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40          # Linux 6.2 and later
#: The TAP device's own MTU: the most a TAP takes (65535 less its Ethernet header).  A bridge
#: drops, silently, a frame larger than its egress port's MTU (br_dev_queue_push_xmit), so with
#: the overlay's MTU on the TAP a container with a larger one black-holes; with this one every
#: frame reaches vxland, which sends what fits the underlay and answers the rest with ICMP
#: (native/answer.c).  What containers should use -- the overlay MTU -- is vxland's to report
#: (`vxland networks show`), not the device's.
TAP_MTU = 65521
MAX_QUEUES = 16              # native/fastpath.h VX_MAX_QUEUES


@dataclass
class Tap:
    name: str
    fd: int
    mac: bytes
    device: pytun.TunTapDevice
    vnet_hdr: bool = False       # every read and write carries a virtio_net_hdr
    uso: bool = False            # the TAP takes UDP GSO writes (Linux 6.2 and later)
    mtu: int = 1500
    more: list[pytun.TunTapDevice] = field(default_factory=list)   # queues 1.. of a multi-queue TAP

    @property
    def queues(self) -> tuple[int, ...]:
        """Every queue's fd (the first is fd); () for a single-queue TAP."""
        return (self.fd, *(d.fileno() for d in self.more)) if self.more else ()

    @property
    def fds(self) -> tuple[int, ...]:
        return self.queues or (self.fd,)

    def close(self) -> None:
        """Closing the last fd removes the device unless it was made persistent."""
        for device in self.more:
            device.close()
        self.more.clear()
        self.device.close()

    def overflow_drops(self) -> int:
        """Frames the kernel dropped because vxland did not read them before the TAP's
        queue (txqueuelen) filled: the device's tx_dropped."""
        try:
            with open(f"/sys/class/net/{self.name}/statistics/tx_dropped") as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0


def underlay_link(local: str) -> tuple[str, int]:
    """The name and MTU of the interface that holds `local`."""
    index = links.link_holding(local)
    if index is None:
        raise VxlandError(f"local address {local} is not configured on any interface of this host")
    try:
        name = socket.if_indextoname(index)
        return name, links.mtu_of(name)
    except OSError as e:
        raise VxlandError(f"cannot read the MTU of the interface holding {local}: {e.strerror or e}") from None


def _bridge_index(bridge: str) -> int:
    index = links.index_of(bridge)
    if index is None:
        raise VxlandError(f"bridge {bridge} does not exist (create it: ip link add {bridge} type bridge)")
    return index


def configure_tap(name: str, *, mtu: int | None = None, bridge: str | None = None, set_bridge: bool = False) -> None:
    """Change a TAP's MTU and/or bridge (None: out of any bridge).  Netlink: not on the loop's thread."""
    index = links.index_of(name)
    if index is None:
        raise VxlandError(f"TAP {name} is gone")
    master = (_bridge_index(bridge) if bridge is not None else 0) if set_bridge else None
    try:
        links.set_link(index, mtu=mtu, master=master)
    except OSError as e:
        raise VxlandError(f"cannot configure TAP {name} (mtu {mtu}, bridge {bridge}): {e.strerror or e}") from None


def enable_offloads(fd: int, name: str) -> int:
    """Ask for checksum offload and TCP and UDP segmentation offload (UDP only where the
    kernel has it, 6.2 and later); the flags granted, 0 if the kernel refuses them all."""
    tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    for flags in (tcp | TUN_F_USO4 | TUN_F_USO6, tcp):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
            return flags
        except OSError as e:
            refusal = e.strerror
    log.warning("%s: the kernel refused TAP offloads (%s); going on without", name, refusal)
    return 0


def _open_queue(name: str, flags: int) -> pytun.TunTapDevice | None:
    """One queue of the TAP; None if a multi-queue open met a single-queue device."""
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as e:
        code = e.args[0] if e.args and isinstance(e.args[0], int) else None
        if code == errno.EPERM or "not permitted" in str(e):
            raise VxlandError(f"cannot create TAP {name}: operation not permitted "
                              "(run as root or with CAP_NET_ADMIN)") from None
        if code == errno.EACCES or "denied" in str(e).lower():
            raise VxlandError(f"cannot create TAP {name}: /dev/net/tun is not open to uid {os.getuid()} "
                              "(Debian's udev makes it 0666; or run vxland with --user root)") from None
        if code == errno.EBUSY or "busy" in str(e).lower():
            raise VxlandError(f"cannot create TAP {name}: the device is in use by another process") from None
        if code == errno.EINVAL and flags & pytun.IFF_MULTI_QUEUE:
            return None
        raise VxlandError(f"cannot create TAP {name}: {e}") from None


def _prepare(fd: int, name: str, offloads: bool) -> int:
    """Non-blocking, close-on-exec, offloads asked for: the flags granted."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    # With the virtio header but no offloads, frames simply arrive whole.
    return enable_offloads(fd, name) if offloads else 0


def open_tap(name: str, *, mtu: int, bridge: str | None = None, offloads: bool = True, queues: int = 1) -> Tap:
    """The TAP `name`, with `queues` queues (more than one: a multi-queue TAP), up, in `bridge`."""
    check_ifname(name)
    if not 1 <= queues <= MAX_QUEUES:
        raise VxlandError(f"{queues} queues for TAP {name}: 1 to {MAX_QUEUES}")
    bridge_index = _bridge_index(bridge) if bridge is not None else None
    flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (IFF_VNET_HDR if offloads else 0) \
        | (pytun.IFF_MULTI_QUEUE if queues > 1 else 0)
    device = _open_queue(name, flags)
    if device is None:
        log.warning("TAP %s exists with one queue (made without multi_queue): its flows share that queue "
                    "(for flow isolation, delete it or make it with `ip tuntap add %s mode tap multi_queue`)",
                    name, name)
        queues, flags = 1, flags & ~pytun.IFF_MULTI_QUEUE
        device = _open_queue(name, flags)
    assert device is not None
    more: list[pytun.TunTapDevice] = []
    try:
        fd = device.fileno()
        granted = _prepare(fd, name, offloads)
        for _ in range(queues - 1):
            queue = _open_queue(name, flags)
            if queue is None:
                raise VxlandError(f"cannot open TAP {name}'s queue {len(more) + 1}: the kernel refused it")
            more.append(queue)
            _prepare(queue.fileno(), name, offloads)
        links.set_link(socket.if_nametoindex(name), mtu=mtu, master=bridge_index, up=True)
        return Tap(name, fd, bytes(device.hwaddr), device, vnet_hdr=offloads,
                   uso=bool(granted & TUN_F_USO4), mtu=mtu, more=more)
    except Exception as e:
        for d in (*more, device):
            d.close()
        if isinstance(e, VxlandError):
            raise
        detail = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise VxlandError(f"cannot configure TAP {name} (mtu {mtu}, bridge {bridge}): {detail}") from None
