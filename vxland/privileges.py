"""Dropping privileges once the daemon's devices and sockets are open.

vxland starts as root (or with CAP_NET_ADMIN and CAP_NET_RAW) to create TAPs and
open its raw socket.  Afterwards it keeps only those two capabilities -- in the
permitted and effective sets; the bounding set loses the rest, the inheritable and
ambient sets are emptied -- sets no_new_privs, and, with `--user`, becomes that
user, as tinc's -U and OpenVPN's --user do.  What it still needs them for:

* CAP_NET_ADMIN: create, configure and delete TAPs (on reload), force socket
  buffer sizes past the sysctl limits (SO_SNDBUFFORCE, SO_RCVBUFFORCE);
* CAP_NET_RAW: the raw socket it already holds needs nothing more; kept so that a
  reload can open sockets the same way a start does.

With `[evpn] gobgpd = "run"` it keeps one more, for its child alone: CAP_NET_BIND_SERVICE,
inheritable and ambient, so that the gobgpd it starts (and restarts) can listen on BGP's
port 179.  vxland itself does not use it.

Linux's capability calls have no binding in the standard library: libc via ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pwd

from .errors import VxlandError

log = logging.getLogger("vxland")

CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW = 10, 12, 13
KEEP = (CAP_NET_ADMIN, CAP_NET_RAW)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS, PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 8, 23, 24, 38, 47
PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 2, 4


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _call(what: str, result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _permitted() -> int:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _call("capget", _libc.capget(ctypes.byref(header), data))
    return data[0].permitted | data[1].permitted << 32


def _capset(caps: tuple[int, ...], inheritable: tuple[int, ...] = ()) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for cap in caps:
        data[cap // 32].effective |= 1 << (cap % 32)
        data[cap // 32].permitted |= 1 << (cap % 32)
    for cap in inheritable:
        data[cap // 32].inheritable |= 1 << (cap % 32)
    _call("capset", _libc.capset(ctypes.byref(header), data))


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def user_ids(user: str) -> tuple[int, int]:
    """The uid and gid of `user` (a name or a number); VxlandError if there is none."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise VxlandError(f"--user {user}: no such user") from None
    return entry.pw_uid, entry.pw_gid


def drop(user: str | None, for_children: tuple[int, ...] = ()) -> None:
    """Keep CAP_NET_ADMIN and CAP_NET_RAW and nothing else, for good (and `for_children`, in
    the ambient set, for the programs it starts); then, with `user`, be that user.  Refusals by
    the kernel (not started as root, say) are logged, not fatal: the daemon then keeps what it
    was given."""
    keep_caps = KEEP + tuple(c for c in for_children if c not in KEEP)
    for cap in range(_last_cap() + 1):
        if cap in keep_caps or _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1:
            continue                              # kept, or not in the bounding set anyway
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            log.warning("cannot drop capability %d from the bounding set: %s", cap, os.strerror(ctypes.get_errno()))
            break
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if user is not None:
        uid, gid = user_ids(user)
        try:
            _call("prctl(PR_SET_KEEPCAPS)", _libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            raise VxlandError(f"cannot become user {user}: {e.strerror}") from None
    keep = sum(1 << cap for cap in keep_caps)
    try:
        if _permitted() & ~keep or for_children:  # under systemd's AmbientCapabilities, nothing to drop
            _capset(keep_caps, for_children)
        for cap in for_children:
            _call("prctl(PR_CAP_AMBIENT_RAISE)", _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0))
    except OSError as e:
        log.warning("cannot limit capabilities to %s: %s", _names(keep_caps), e.strerror)
    _call("prctl(PR_SET_NO_NEW_PRIVS)", _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    who = f"user {user}" if user is not None else f"uid {os.getuid()}"
    log.info("running as %s with CAP_NET_ADMIN and CAP_NET_RAW only%s", who,
             f" (and {_names(for_children)} for the programs it starts)" if for_children else "")


def _names(caps: tuple[int, ...]) -> str:
    names = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}
    return " and ".join(names.get(c, str(c)) for c in caps)
