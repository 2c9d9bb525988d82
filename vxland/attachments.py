"""Containers that the CNI plugin attached, as its state files record them: given back their
static entries when vxland starts again.

The plugin (cni.py) tells a running vxland each container's MAC and address (`fdb.add
--local`) and records the attachment in its data directory (`dataDir`, by default
/var/lib/cni/vxland), one file per container interface, for its own DEL.  vxland keeps its
tables in memory: after a restart -- the unit's restart-on-failure, an upgrade -- its entries
for running containers would be gone until each sent a frame, unannounced with EVPN and
claimable by a remote VTEP meanwhile.  So at start (and for a network a reload adds) vxland
reads those files (`cni_data_dir`) and takes each one that names its own control socket and
one of its VNIs, and whose host-side interface still exists in that VNI's bridge: a container
that is gone (DEL not yet run) is left out.  The files are the plugin's: vxland never writes
or removes them, reads only those that root (or its own user) wrote in a directory nobody else
may write, and reads them as untrusted input (sizes, types and addresses checked).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass

from .neighbours import parse_ip
from .wire import mac_to_bytes

log = logging.getLogger("vxland")

DEFAULT_DIRECTORY = "/var/lib/cni/vxland"
MAX_FILES = 65536              # attachments read at most (a host runs far fewer containers)
MAX_SIZE = 4096                # bytes of one state file


@dataclass(frozen=True)
class Attachment:
    vni: int
    mac: bytes
    ip: str | None             # the address registered with the entry (the first the IPAM gave)
    host: str                  # the host end of the container's veth, in the VNI's bridge


def _parse(text: bytes) -> tuple[Attachment, str] | None:
    """A state file's attachment and the control socket it names; None if it is not one."""
    try:
        record = json.loads(text)
        vni, mac, host, ip, control = record["vni"], record["mac"], record["host"], record.get("ip"), record["control"]
        if not isinstance(vni, int) or isinstance(vni, bool) or not 0 <= vni < 1 << 24 or not isinstance(control, str):
            return None
        if not isinstance(host, str) or not 0 < len(host.encode()) <= 15 or "/" in host:
            return None
        return Attachment(vni, mac_to_bytes(mac), parse_ip(ip) if ip is not None else None, host), control
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _safe(st: os.stat_result) -> bool:
    """Written by root (the plugin) or this user, and by nobody else: a record anyone could
    write would let anyone place static entries."""
    return st.st_uid in (0, os.getuid()) and not st.st_mode & 0o022


def _read(path: str) -> bytes | None:
    """A regular file's first MAX_SIZE + 1 bytes (never a FIFO's wait, never through a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return os.read(fd, MAX_SIZE + 1) if stat.S_ISREG(st.st_mode) and _safe(st) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def recorded(directory: str, control: str) -> list[Attachment]:
    """The attachments the files in `directory` record for the vxland at control socket
    `control`; bad files are skipped with a warning."""
    try:
        if not _safe(os.stat(directory)):
            log.warning("%s is writable by others than root: the CNI plugin's records there are not read", directory)
            return []
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("cannot read the CNI plugin's state in %s: %s", directory, e.strerror)
        return []
    if len(names) > MAX_FILES:
        log.warning("%s holds %d files; the first %d are read", directory, len(names), MAX_FILES)
    found, skipped = [], 0
    ours = os.path.realpath(control)
    for name in names[:MAX_FILES]:
        text = _read(os.path.join(directory, name))
        parsed = _parse(text) if text is not None and len(text) <= MAX_SIZE else None
        if parsed is None:
            skipped += 1
        elif os.path.realpath(parsed[1]) == ours:
            found.append(parsed[0])
    if skipped:
        log.warning("%s: %d files that are not a vxland CNI attachment skipped", directory, skipped)
    return found


def still_attached(attachments: list[Attachment], bridges: dict[int, str]) -> list[Attachment]:
    """Those whose host interface exists and is in the bridge of their VNI (sysfs: before the
    event loop runs, or in an executor thread)."""
    from .links import master_of
    return [a for a in attachments if bridges.get(a.vni) and master_of(a.host) == bridges[a.vni]]
