"""Dropping privileges once the daemon's devices and sockets are open.

vxland starts as root (or with CAP_NET_ADMIN and CAP_NET_RAW) to create TAPs and
open its raw socket.  Afterwards it keeps only those two capabilities -- in the
permitted and effective sets; the bounding set loses the rest, the inheritable and
ambient sets hold nothing else -- sets no_new_privs, and becomes an unprivileged user,
as dnsmasq and chrony do: `--user USER` (`user =`), by default `vxland` (made by
scripts/install.sh; without it vxland refuses to start rather than share `nobody` with
whatever else runs as that).  A capability is not all
that root has: uid 0 still owns /etc, the units and cron, so a daemon that kept uid 0
could get every capability back through them.  `--user root` keeps uid 0 all the same,
for whoever needs that; a daemon started without root (systemd's DynamicUser, setpriv)
already is the user it runs as.  What it still needs the two for:

* CAP_NET_ADMIN: create, configure and delete TAPs (on reload), force socket
  buffer sizes past the sysctl limits (SO_SNDBUFFORCE, SO_RCVBUFFORCE);
* CAP_NET_RAW: the raw socket it already holds needs nothing more; kept so that a
  reload can open sockets the same way a start does.

With `[evpn] gobgpd = "run"` it keeps one more, for its child alone: CAP_NET_BIND_SERVICE,
inheritable and ambient, so that the gobgpd it starts (and restarts) can listen on BGP's
port 179.  vxland itself does not use it.

Each step is taken on its own, and only when it changes something: under systemd's
AmbientCapabilities= the sets are already what they should be, and its system-call filter
(~@privileged) refuses capset -- which must not cost gobgpd its capability.

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

CAP_SETGID, CAP_SETUID, CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW = 6, 7, 10, 12, 13
KEEP = (CAP_NET_ADMIN, CAP_NET_RAW)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS, PR_CAPBSET_READ, PR_CAPBSET_DROP = 8, 23, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 38, 47
PR_CAP_AMBIENT_IS_SET, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_LOWER = 1, 2, 3
DEFAULT_USER = "vxland"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _call(what: str, result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _capget() -> tuple[int, int, int]:
    """The effective, permitted and inheritable capability sets, as bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _call("capget", _libc.capget(ctypes.byref(header), data))
    return tuple(getattr(data[0], name) | getattr(data[1], name) << 32  # type: ignore[return-value]
                 for name in ("effective", "permitted", "inheritable"))


def _sets() -> tuple[int, int]:
    """The permitted and inheritable capability sets."""
    return _capget()[1:]  # type: ignore[return-value]


def _can_change_user() -> bool:
    return all(_capget()[0] >> cap & 1 for cap in (CAP_SETUID, CAP_SETGID))


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


def run_as(configured: str | None) -> str | None:
    """The user to become once everything is open, or None to stay who we are: `configured`
    (`--user`; one with uid 0 keeps root, as asked), else -- started as root -- `vxland`;
    VxlandError if there is no such user (its own user, not `nobody`: whatever else runs as
    `nobody` would own the daemon's control socket and could signal it)."""
    if configured is not None:
        return None if user_ids(configured)[0] == 0 else configured
    if os.geteuid() != 0 or not _can_change_user():
        return None                                 # started as who it runs as (systemd, setpriv)
    try:
        pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        raise VxlandError(f"there is no user {DEFAULT_USER} to run as once started: create it (scripts/install.sh "
                          f"does: useradd --system {DEFAULT_USER}), or say --user USER (--user root keeps "
                          "uid 0)") from None
    return DEFAULT_USER


def drop(user: str | None, for_children: tuple[int, ...] = (), required: bool = True) -> None:
    """Keep CAP_NET_ADMIN and CAP_NET_RAW and nothing else, for good (and `for_children`, in
    the ambient set, for the programs it starts); then, with `user`, be that user -- VxlandError
    if it cannot and that user was asked for (`required`); the default user's refusal is logged.
    Refusals of the capability steps (not started as root, a system-call filter) are logged,
    each on its own, not fatal: the daemon then keeps what it was given."""
    keep_caps = KEEP + tuple(c for c in for_children if c not in KEEP)
    for cap in range(_last_cap() + 1):
        if cap in keep_caps or _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1:
            continue                              # kept, or not in the bounding set anyway
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            log.warning("cannot drop capability %d from the bounding set: %s", cap, os.strerror(ctypes.get_errno()))
            break
    if user is not None:
        uid, gid = user_ids(user)
        try:
            _call("prctl(PR_SET_KEEPCAPS)", _libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            if required:
                raise VxlandError(f"cannot become user {user}: {e.strerror}") from None
            log.warning("cannot become user %s (%s: a system-call filter?): running as uid %d", user, e.strerror,
                        os.getuid())
            user = None
    keep = _mask(keep_caps)
    try:
        permitted, inheritable = _sets()
        if permitted & ~keep or _mask(for_children) & permitted & ~inheritable:
            _capset(tuple(c for c in keep_caps if permitted >> c & 1), tuple(c for c in for_children
                                                                             if permitted >> c & 1))
    except OSError as e:
        log.warning("cannot limit capabilities to %s: %s", _names(keep_caps), e.strerror)
    for cap in range(_last_cap() + 1):
        is_set = _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1
        if cap in for_children and not is_set:
            if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
                log.warning("cannot hand %s to the programs vxland starts (%s): gobgpd cannot listen on BGP's "
                            "port 179; under systemd, add it to AmbientCapabilities= and CapabilityBoundingSet=",
                            _names((cap,)), os.strerror(ctypes.get_errno()))
        elif cap not in for_children and is_set:
            _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, cap, 0, 0)
    _call("prctl(PR_SET_NO_NEW_PRIVS)", _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    permitted, _ = _sets()
    held = tuple(c for c in range(_last_cap() + 1) if permitted >> c & 1 and c not in for_children)
    who = f"user {user}" if user is not None else f"uid {os.getuid()}" + (" (root: it owns the system's files)"
                                                                          if os.getuid() == 0 else "")
    ambient = tuple(c for c in for_children if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
    log.info("running as %s with %s%s", who, _names(held) or "no capabilities",
             f" (and {_names(ambient)} for the programs it starts)" if ambient else "")


def _mask(caps: tuple[int, ...]) -> int:
    return sum(1 << cap for cap in caps)


def _names(caps: tuple[int, ...]) -> str:
    names = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}
    listed = [names.get(c, str(c)) for c in caps]
    return ", ".join(listed[:-1]) + " and " + listed[-1] if len(listed) > 1 else "".join(listed)
