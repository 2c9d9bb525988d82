"""gobgpd, the BGP speaker beside vxland: its configuration, and the process when vxland runs
it (`[evpn] gobgpd = "run"`, the default).

vxland does not speak BGP itself.  gobgpd (Debian's `gobgpd`) holds the sessions and the
tables; vxland adds its routes and watches everyone else's over gobgpd's gRPC API, which
listens on loopback only.  Run by vxland, gobgpd

* reads a configuration made from `[evpn]` from a memory file that vxland hands it (an
  inherited memfd): no file on disk holds its MD5 passwords, none is left behind by a crash,
  and the user vxland runs as (`--user`, systemd's DynamicUser) can always read it;
* lives exactly as long as vxland: it gets SIGTERM when vxland dies, however it dies (the
  parent-death signal), which ends its BGP sessions with a Cease, so that every peer
  withdraws this VTEP's routes at once instead of sending to a host whose data path is gone;
  it is restarted if it dies (counted), and stopped by PID when vxland stops;
* owns its API port: before a start the port must be free.  A gobgpd that a vxland which
  died without that signal (an older vxland, killed -9) left behind -- still announcing the
  dead host's routes -- is found by its marker and stopped; anything else listening there
  makes vxland refuse to start, and is never attached to.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

from ..errors import VxlandError

log = logging.getLogger("vxland.evpn")


@dataclass(frozen=True)
class Neighbor:
    address: str
    asn: int
    route_reflector_client: bool = False   # with iBGP: reflect routes to it (we are its reflector)
    password: str | None = None            # TCP MD5 signature on the session


@dataclass(frozen=True)
class SpeakerConfig:
    asn: int
    router_id: str
    local: str                       # the VTEP address: BGP's source address, and next hop
    neighbors: tuple[Neighbor, ...] = field(default_factory=tuple)
    hold_time: int = 9               # seconds (FRR's datacenter default: keepalive 3, hold 9)
    port: int = 179


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(config: SpeakerConfig) -> str:
    """gobgpd's TOML for `config`: the global table, and one neighbor per peer with the L2VPN
    EVPN family, our VTEP address as the session's source.

    A VTEP is no transit: it announces its own routes (and, as a route reflector, reflects its
    clients'), never passes on what it learned -- gobgpd would, to eBGP neighbors, with itself
    as the next hop, drawing other VTEPs' traffic to this one.  An export policy says so."""
    keepalive = max(1, config.hold_time // 3)
    clients = [n.address for n in config.neighbors if n.route_reflector_client]
    lines = ["[global.config]", f"  as = {config.asn}", f"  router-id = {_toml_string(config.router_id)}",
             f"  port = {config.port}", f"  local-address-list = [{_toml_string(config.local)}]",
             "[global.apply-policy.config]", '  export-policy-list = ["vxland-export"]',
             '  default-export-policy = "reject-route"', ""]
    if clients:
        lines += ["[[defined-sets.neighbor-sets]]", '  neighbor-set-name = "reflector-clients"',
                  f"  neighbor-info-list = [{', '.join(_toml_string(c) for c in clients)}]", ""]
    lines += ["[[policy-definitions]]", '  name = "vxland-export"', "  [[policy-definitions.statements]]",
              '    name = "our-own"', "    [policy-definitions.statements.conditions.bgp-conditions]",
              '      route-type = "local"', "    [policy-definitions.statements.actions]",
              '      route-disposition = "accept-route"']
    if clients:
        lines += ["  [[policy-definitions.statements]]", '    name = "reflected"',
                  "    [policy-definitions.statements.conditions.match-neighbor-set]",
                  '      neighbor-set = "reflector-clients"',
                  "    [policy-definitions.statements.conditions.bgp-conditions]", '      route-type = "internal"',
                  "    [policy-definitions.statements.actions]", '      route-disposition = "accept-route"']
    lines.append("")
    for n in config.neighbors:
        lines += ["[[neighbors]]", "  [neighbors.config]", f"    neighbor-address = {_toml_string(n.address)}",
                  f"    peer-as = {n.asn}",
                  *([f"    auth-password = {_toml_string(n.password)}"] if n.password else []),
                  "  [neighbors.timers.config]", f"    hold-time = {config.hold_time}",
                  f"    keepalive-interval = {keepalive}", "    connect-retry = 5",
                  "  [neighbors.transport.config]", f"    local-address = {_toml_string(config.local)}"]
        if n.route_reflector_client:
            lines += ["  [neighbors.route-reflector.config]", "    route-reflector-client = true",
                      f"    route-reflector-cluster-id = {_toml_string(config.router_id)}"]
        lines += ["  [[neighbors.afi-safis]]", "    [neighbors.afi-safis.config]",
                  '      afi-safi-name = "l2vpn-evpn"', ""]
    return "\n".join(lines)


#: The environment variable that marks a gobgpd as started by vxland (its value: vxland's pid).
MARKER = "VXLAND_GOBGPD_OF"
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl           # resolved now, not in the forked child


def api_address(api: str) -> tuple[str, int]:
    """`127.0.0.1:50051` or `[::1]:50051` -> (host, port)."""
    host, _, port = api.rpartition(":")
    return host.strip("[]"), int(port)


def api_in_use(api: str) -> bool:
    """Does something listen on gobgpd's API address?  (A bind with SO_REUSEADDR fails only
    against a listener, not against connections that linger in TIME_WAIT.)"""
    host, port = api_address(api)
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise VxlandError(f"evpn: api {api}: {e.strerror}") from None
    return False


def _listening(port: int) -> set[str]:
    """The sockets (as /proc/PID/fd shows them) listening on TCP `port` in this namespace."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _holds(pid: int, sockets: set[str]) -> bool:
    """Does process `pid` hold one of `sockets`?  (OSError if its fds cannot be read.)"""
    return any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in os.listdir(f"/proc/{pid}/fd"))


def listeners(port: int) -> list[int]:
    """PIDs of the processes holding a TCP socket that listens on `port` in this network
    namespace (as root: other users' processes are read too)."""
    sockets, pids = _listening(port), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if _holds(int(pid), sockets):
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def _read(pid: int, what: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def describe(pid: int) -> str:
    command = " ".join(_read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").split())
    return f"pid {pid} ({command[:80] or '?'})"                     # one line, whatever it runs


def _is_vxland(pid: int) -> bool:
    words = _read(pid, "cmdline").split(b"\0")
    return any(w.endswith(b"vxland") for w in words) and b"run" in words


def orphaned_gobgpd(pid: int) -> bool:
    """Is `pid` a gobgpd that a vxland started and that outlived it?  Ours carry MARKER in
    their environment (older vxlands gave theirs a config file in a vxland-gobgpd-*
    directory); an orphan's parent is no longer a vxland."""
    words = _read(pid, "cmdline").split(b"\0")
    if not words or not os.path.basename(words[0]).startswith(b"gobgpd"):
        return False
    ours = any(w.startswith(MARKER.encode() + b"=") for w in _read(pid, "environ").split(b"\0")) \
        or any(b"/vxland-gobgpd-" in w for w in words)
    status = _read(pid, "status").decode(errors="replace")
    ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), 0)
    return ours and not _is_vxland(ppid)


def _stop(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM (gobgpd ends its sessions with a Cease), then SIGKILL; by PID."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def claim_api(api: str) -> None:
    """Make sure the gobgpd vxland is about to start can have its API port (at start, before
    the privilege drop, so that other users' processes can be read): a gobgpd orphaned by a
    vxland that died is stopped -- it would keep announcing the dead host's routes --, and
    anything else there is refused with one line.  Never attach to what we did not start."""
    if not api_in_use(api):
        return
    holders = listeners(api_address(api)[1])
    orphans = [pid for pid in holders if orphaned_gobgpd(pid)]
    if orphans and len(orphans) == len(holders):
        for pid in orphans:
            log.warning("evpn: %s, left running by a vxland that died, holds the API address %s and still "
                        "announces that vxland's routes: stopping it", describe(pid), api)
            _stop(pid)
        deadline = time.monotonic() + 5.0
        while api_in_use(api) and time.monotonic() < deadline:
            time.sleep(0.1)
    if api_in_use(api):
        who = ", ".join(describe(p) for p in listeners(api_address(api)[1])) or "another process"
        raise VxlandError(f"evpn: gobgpd's API address {api} is in use by {who}: vxland runs a gobgpd "
                          "of its own there (gobgpd = \"run\"); stop that process, give [evpn] api another "
                          "address, or use it with gobgpd = \"external\"")


class Gobgpd:
    """A gobgpd child process with the configuration `config`, its API on `api`."""

    def __init__(self, config: SpeakerConfig, api: str, binary: str = "gobgpd") -> None:
        path = shutil.which(binary)
        if path is None:
            raise VxlandError("[evpn] needs gobgpd: apt-get install gobgpd (or gobgpd = \"external\" "
                              "with one already running)")
        self.binary, self.api, self.config = path, api, config
        self.process: subprocess.Popen | None = None
        self.starts = 0
        # passed on by pass_fds only; sealed, so that no gobgpd can rewrite what the next one reads
        self._fd = os.memfd_create("vxland-gobgpd.toml", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(self._fd, render(config).encode())
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SEAL)
        try:
            checked = subprocess.run(self._command("-d"), capture_output=True, text=True, pass_fds=(self._fd,))
            if checked.returncode != 0:
                raise VxlandError(f"gobgpd refuses the configuration made from [evpn]: "
                                  f"{(checked.stderr or checked.stdout).strip()[-300:]}")
            claim_api(api)
        except BaseException:
            os.close(self._fd)
            raise

    def _command(self, *options: str) -> list[str]:
        return [self.binary, "-f", f"/proc/self/fd/{self._fd}", "-t", "toml", *options]

    def start(self) -> bool:
        """Start (or restart) it; False, logged, if its API port is held by another process
        (never attached to).  Its log goes to vxland's standard error, plain text."""
        self.reap()
        if api_in_use(self.api):
            log.error("evpn: gobgpd's API address %s is held by a process vxland did not start: not attaching "
                      "to it; gobgpd is started once the address is free", self.api)
            return False
        parent = os.getpid()

        def die_with_vxland() -> None:
            """In the child, before exec: one prctl and one getppid, nothing that takes a lock.
            (setpriv --pdeathsig would spare this, but it always calls capset, which the unit's
            system-call filter refuses: tested.)"""
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:              # vxland died before that took effect
                os._exit(1)

        self.process = subprocess.Popen(
            self._command("--api-hosts", self.api, "--pprof-disable", "--log-plain", "--log-level", "info"),
            stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(self._fd,),
            env={**os.environ, MARKER: str(parent)}, preexec_fn=die_with_vxland)
        self.starts += 1
        log.info("evpn: gobgpd started (pid %d), AS %d, router id %s, API %s, %d neighbors",
                 self.process.pid, self.config.asn, self.config.router_id, self.api, len(self.config.neighbors))
        return True

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def serves_api(self) -> bool:
        """Is what listens on the API port our child?  (Not a process that took the port in the
        moment between our check and gobgpd's own bind.)  Ours is readable by the user we run as."""
        if not self.alive():
            return False
        assert self.process is not None
        try:
            return _holds(self.process.pid, _listening(api_address(self.api)[1]))
        except OSError:
            return False

    def exit_status(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def reap(self) -> None:
        """Collect a child that exited (no zombie stays behind)."""
        if self.process is not None:
            self.process.poll()

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
