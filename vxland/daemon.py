"""The daemon: the I/O shell around the data path and the forwarding tables.

It opens the underlay sockets and one TAP per VNI and hands their fds to the
data path's own thread (native/thread.c), which waits on them and pumps each
readable one -- `pump_tap` (TAP -> encap -> underlay), `pump_underlay`
(underlay -> decap -> TAP) -- with no Python per packet; the event loop (uvloop)
wakes only when the thread has sightings for it.  (The reference data path, or
`datapath_thread = false`, has the event loop itself wake on each fd and make
the data-path call.)  Sightings go to the VNI's ForwardingTable, which writes
its decisions back into the data path.  A timer
ages the tables; the control socket reads and changes them; SIGINT/SIGTERM
stop it all cleanly (TAPs go away with their fds unless made persistent).
Once everything is open it drops every privilege but CAP_NET_ADMIN and
CAP_NET_RAW (privileges.py).  A TAP that disappears under it stops it with
exit status 1, so that a supervisor restarts it, rather than leaving it deaf.
With [evpn] or [etcd], a control plane (planes.py: vxland/evpn, vxland/etcd) runs on the
same loop and writes the tables of its networks through their public API, as the control
verbs do.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import errno
import fcntl
import logging
import os
import resource
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import attachments, privileges, wire
from .config import DaemonConfig, NetworkSpec
from . import systemd
from .control import ControlServer, Verb
from .datapath import DF, MAX_FLOOD, MAX_NETS, EntryKind, NetworkConfig, ReferenceDataPlane, Sighting
from .errors import VxlandError
from .fdb import ENTRY_VTEPS, FDB_COLUMNS, ForwardingTable, fdb_row
from .metrics import MetricsServer
from .reload import NetworkChange, ReloadPlan, plan_reload
from .tap import TAP_MTU, Tap, configure_tap, open_tap, underlay_link
from .underlay import Underlay, enable_gro, open_underlay

log = logging.getLogger("vxland")

TUNGETIFF = 0x800454D2
#: TAP errors that mean the device is gone, not that it is busy
TAP_GONE = (errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EIO, errno.EBADF)
TAP_WATCH_INTERVAL = 1.0

#: The control verbs and what each takes.
VERBS = {
    "fdb.show": Verb(optional={"vni": int, "compact": bool}),
    "fdb.add": Verb({"mac": str, "vni": int}, {"vtep": str, "local": bool, "ip": str}),
    "fdb.del": Verb({"mac": str, "vni": int}),
    "peers.show": Verb(optional={"vni": int}),
    "peers.add": Verb({"vni": int, "address": str}),
    "peers.del": Verb({"vni": int, "address": str}),
    "stats": Verb(),
    "reload": Verb(),
    "networks.show": Verb(optional={"vni": int}),
    "evpn.show": Verb(),
    "etcd.show": Verb(),
}

#: Drops that the kernel counts on vxland's behalf, reported beside DropReason's.
KERNEL_DROPS = {
    "tap_overflow": "frames not read from the TAP before its queue (txqueuelen) filled",
    "underlay_overflow": "datagrams dropped because the UDP socket's receive buffer was full",
}


def refresh_interval(ageing: float) -> float:
    """How often the data path reports a busy MAC that stays where it is, only to refresh its
    age: a 30th of the ageing time, at least 1 s (300 s: every 10 s).  An entry whose frames
    stop ages out at most that much early; 100k busy MACs are 10k sightings a second, not 100k."""
    return max(1.0, ageing / 30)


def nr_open() -> int:
    """The most fds a process may have (what an unlimited hard limit means)."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20                              # the kernel's default


def raise_fd_limit() -> None:
    """Up to the hard limit: each network holds a TAP fd per queue (16 queues of 256 networks
    is 4096), beside the underlay's sockets and the GSO pool; the soft limit of 1024 that a
    shell or systemd gives is for programs that still use select(), which vxland does not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("the open-file limit stays at %d (%s): many networks or queues may not fit", soft, e)


M_MMAP_THRESHOLD = -3                               # mallopt's parameter (glibc's malloc.h)


def return_freed_memory() -> None:
    """Blocks of 128 KiB and more (the C table, a dict of 100k MACs, an `fdb show` reply) in
    mappings of their own, given back to the system when freed.  Left alone, glibc raises that
    threshold after the first such block is freed and puts later ones in the heap, which it
    seldom shrinks: 100k learned MACs then cost 9 MiB more RSS (bench/scale.py, macs).  Setting
    it fixes the threshold.  Nothing happens where malloc is not glibc's."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, as a cgroup's cpuset narrows it)."""
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return os.cpu_count() or 1


def make_evpn(config: DaemonConfig):
    """The EVPN service for [evpn]; a clear error when what it needs is not installed."""
    try:
        from .evpn.service import EvpnService
    except ImportError as e:
        raise VxlandError(f"[evpn] needs gRPC and gobgpd's API stubs ({e.name or e}): "
                          "bash scripts/install.sh --evpn") from None
    assert config.evpn is not None
    return EvpnService(config.evpn, config.local)


def make_etcd(config: DaemonConfig, fatal: Callable[[str], None]):
    """The etcd control plane for [etcd]; a clear error when what it needs is not installed."""
    try:
        from .etcd.service import EtcdService
    except ImportError as e:
        raise VxlandError(f"[etcd] needs gRPC and etcd's API stubs ({e.name or e}): "
                          "bash scripts/install.sh --etcd") from None
    assert config.etcd is not None
    return EtcdService(config.etcd, config.local, config.family, fatal)


def make_dataplane(kind: str):
    if kind == "reference":
        return ReferenceDataPlane()
    from .native import NativeDataPlane
    return NativeDataPlane()


@dataclass
class Network:
    """One VNI at run time: its index in the data path, TAP and table, and the overlay MTU --
    what its containers should use, and what a received super-frame is cut to (the TAP
    device's own MTU is TAP_MTU)."""
    index: int
    spec: NetworkSpec
    tap: Tap
    table: ForwardingTable
    mtu: int


class Daemon:
    def __init__(self, config: DaemonConfig, clock: Callable[[], float] = time.monotonic,
                 reread: Callable[[], DaemonConfig] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.reread = reread              # the configuration anew, for a reload (None: started from flags)
        self.dataplane = make_dataplane(config.datapath)
        self.networks: list[Network] = []
        self.underlay: Underlay | None = None
        self.control = ControlServer(config.control, self.dispatch, VERBS)
        self.started = clock()
        self.started_unix = time.time()
        self.metrics: MetricsServer | None = None
        self.evpn = None                  # the EVPN service (vxland/evpn/service.py), with [evpn]
        self.etcd = None                  # the etcd service (vxland/etcd/service.py), with [etcd]
        self.internal_errors = 0
        self.gro = False
        self.underlay_interface = ""
        self.underlay_mtu = 1500
        self.exit_status = 0
        self.user: str | None = None      # who the daemon becomes once open (privileges.run_as)
        self.reloads = {"done": 0, "refused": 0}
        self._reloading = asyncio.Lock()
        self._by_vni: dict[int, Network] = {}
        self._by_index: dict[int, Network] = {}       # by data-path index: what sightings name
        self._stopping: asyncio.Event | None = None
        self._ageing: asyncio.TimerHandle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._events_fd: int | None = None          # the data-path thread's, while it runs
        # the native data path's own threads, and the queues they serve (the event loop: one queue)
        self.threaded = config.datapath_thread and getattr(self.dataplane, "threaded", False)
        self.queues, self.datapath_threads = config.queue_plan(usable_cpus()) if self.threaded else (1, 0)

    # ---- life cycle -------------------------------------------------------------
    # open() runs before the event loop and close() after it; netlink (links.py) blocks, so
    # a reload calls it in an executor thread, never on the loop.
    async def serve(self) -> None:
        """Move frames until SIGINT or SIGTERM; needs open() first."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.control.start()
            await self._start_metrics()
            if self.user is not None:
                self.control.chown(*privileges.user_ids(self.user))
            privileges.drop(self.user, for_children=self._children_need(), required=self.config.user is not None)
            self._check_reread()
            for plane in self.planes:
                await plane.start()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stopping.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_on_signal()))
            for sig in (signal.SIGUSR1, signal.SIGUSR2):
                loop.add_signal_handler(sig, self._ignore_signal, sig)
            self._register(loop)
            log.info("vxland up: %s:%d, %s data path%s, offloads %s, %s", self.config.local,
                     self.config.port, self.dataplane.name,
                     f" ({self.datapath_threads} threads, {self.queues} queues)" if self.threaded else "",
                     "on" if self.config.offloads else "off", ", ".join(
                         f"VNI {n.spec.vni} on {n.tap.name}" for n in self.networks))
            systemd.notify("READY=1", f"STATUS={self._status()}", f"MAINPID={os.getpid()}")
            await self._stopping.wait()
            if self.exit_status:
                log.info("stopping with exit status %d", self.exit_status)
            else:
                log.info("stopping")
        finally:
            systemd.notify("STOPPING=1", "STATUS=stopping")
            self._unregister(loop)
            for plane in self.planes:
                await plane.stop()
            await self.control.stop()
            if self.metrics is not None:
                await self.metrics.stop()

    async def _start_metrics(self) -> None:
        if self.config.metrics is not None:
            self.metrics = MetricsServer(self.config.metrics, self._stats, self.started_unix,
                                         allow=self.config.metrics_allow)
            await self.metrics.start()

    def open(self) -> None:
        """Open sockets and TAPs and program the data path; on failure close what was opened."""
        cfg = self.config
        self.user = privileges.run_as(cfg.user)    # who it becomes once open: refused now, not half-way
        systemd.connect()                         # while its socket can be reached: before the drop
        raise_fd_limit()
        return_freed_memory()
        try:
            self.underlay = open_underlay(cfg.local, cfg.port, self.queues)
            self.underlay_interface, self.underlay_mtu = underlay_link(cfg.local)
            for group in {spec.group for spec in cfg.networks if spec.group}:
                self.underlay.join(group, self.underlay_interface)
            if cfg.offloads:
                self.gro = all([enable_gro(sock) for sock in self.underlay.receivers])
                self.dataplane.set_gso(True)
            if cfg.evpn is not None:
                self.evpn = make_evpn(cfg)
            if cfg.etcd is not None:
                self.etcd = make_etcd(cfg, self._stop_with_error)
            for index, spec in enumerate(cfg.networks):
                self._add_network(index, spec, self._open_tap(spec))
            self._restore(self._attached(cfg.networks, cfg.cni_data_dir))
        except BaseException:
            self.close()
            raise

    def _check_reread(self) -> None:
        """Can the file be read again, by the user it now runs as?  Said now, not at the reload."""
        if self.reread is None:
            return
        try:
            self.reread()
        except VxlandError as e:
            log.warning("the configuration cannot be read again as uid %d (%s): reloads will be refused until it "
                        "can (keep the file readable to that user)", os.getuid(), e)

    def _children_need(self) -> tuple[int, ...]:
        """Capabilities a child must be able to use after the drop: gobgpd binds port 179."""
        evpn = self.config.evpn
        return (privileges.CAP_NET_BIND_SERVICE,) if evpn is not None and evpn.gobgpd == "run" else ()

    @property
    def planes(self) -> list:
        """The control planes (planes.ControlPlane) this daemon runs."""
        return [p for p in (self.evpn, self.etcd) if p is not None]

    def _plane(self, spec: NetworkSpec):
        """The control plane that serves `spec`, or None (static peers only)."""
        return next((p for p in self.planes if p.serves(spec)), None)

    @property
    def default_mtu(self) -> int:
        """A TAP's MTU unless configured: what the underlay carries after the outer headers."""
        return self.underlay_mtu - (wire.IPV6_OVERHEAD if self.config.family == 6 else wire.IPV4_OVERHEAD)

    def _open_tap(self, spec: NetworkSpec) -> Tap:
        """Netlink: before the loop runs, or in an executor thread (see reload)."""
        self._check_mtu(spec)
        return open_tap(spec.tap, mtu=TAP_MTU, bridge=spec.bridge, offloads=self.config.offloads, queues=self.queues)

    def _check_mtu(self, spec: NetworkSpec) -> None:
        if spec.mtu and spec.mtu > self.default_mtu:
            log.warning("%s: MTU %d is more than the underlay carries (%s MTU %d leaves %d): larger "
                        "frames will be dropped as too_big and answered with ICMP", spec.tap, spec.mtu,
                        self.underlay_interface, self.underlay_mtu, self.default_mtu)

    def _network_config(self, spec: NetworkSpec, tap: Tap, cfg: DaemonConfig | None = None) -> NetworkConfig:
        cfg = cfg or self.config
        return NetworkConfig(
            vni=spec.vni, local=cfg.local, tap_fd=tap.fd, tap_queues=tap.queues, own_mac=tap.mac,
            learning=spec.learning,
            dst_port=cfg.port, src_ports=cfg.source_ports, ttl=cfg.ttl, group_ttl=cfg.group_ttl,
            vnet_hdr=tap.vnet_hdr, tap_uso=tap.uso, mtu=spec.mtu or self.default_mtu, underlay_mtu=self.underlay_mtu,
            neigh_suppress=spec.neigh_suppress, learn_remote=spec.learns_remote, snoop_tap=spec.evpn or spec.etcd,
            tos=0 if cfg.tos == "inherit" else int(cfg.tos), tos_inherit=cfg.tos == "inherit",
            df=DF[cfg.df], drop_reserved=cfg.reserved_bits == "drop", carry_vlan=cfg.inner_vlan == "carry",
            refresh=refresh_interval(spec.ageing))

    def _add_network(self, index: int, spec: NetworkSpec, tap: Tap, announce: bool = True) -> Network:
        """The network in the data path and the tables; with `announce`, in EVPN too (a reload
        announces it only once its TAP is watched: see _carry_out)."""
        cfg = self.config
        view = self.dataplane.add_network(index, self._network_config(spec, tap))
        accept_from, accept_prefixes = cfg.acceptance(spec)
        table = ForwardingTable(spec.vni, view, port=tap.name, ageing=spec.ageing,
                                max_learned=spec.max_learned, family=cfg.family, local=cfg.local,
                                accept_from=accept_from, accept_prefixes=accept_prefixes, max_evpn=spec.max_evpn)
        network = Network(index, spec, tap, table, spec.mtu or self.default_mtu)
        self.networks.append(network)
        self._by_vni[spec.vni] = network
        self._by_index[index] = network
        now = self.clock()
        for peer in spec.peers:
            table.add_remote(peer)
        if spec.group:
            table.set_group(spec.group)
        for entry in spec.static:
            table.add_static(entry.mac, entry.vtep, now, entry.ip)
        if announce:
            self._announce(network)
        return network

    def _announce(self, network: Network) -> None:
        plane = self._plane(network.spec)
        if plane is not None:
            plane.add_network(network.spec, network.table, network.index)

    def _attached(self, specs: list[NetworkSpec], directory: str) -> list[attachments.Attachment]:
        """Containers the CNI plugin attached to these networks, and still attached (netlink:
        before the loop runs, or in an executor thread)."""
        bridges = {s.vni: s.bridge for s in specs if s.bridge}
        found = [a for a in attachments.recorded(directory, self.config.control) if a.vni in bridges]
        return attachments.still_attached(found, bridges) if found else []

    def _restore(self, found: list[attachments.Attachment]) -> None:
        """Their static entries back, as the plugin's ADD gave them (and, with EVPN, announced)."""
        now = self.clock()
        for a in found:
            network = self._by_vni.get(a.vni)
            try:
                if network is not None:
                    network.table.add_static(a.mac, None, now, a.ip)
            except ValueError as e:
                log.warning("VNI %d: the CNI plugin's container %s not restored: %s", a.vni, a.host, e)
        if found:
            log.info("%d containers that the CNI plugin attached have their entries back", len(found))

    def close(self) -> None:
        for network in self.networks:
            network.tap.close()
        self.networks.clear()
        self._by_vni.clear()
        self._by_index.clear()
        if self.underlay is not None:
            self.underlay.close()
            self.underlay = None

    def _register(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.underlay is not None
        if self.threaded:
            self._events_fd = self.dataplane.start_thread(self.underlay.raw, self.datapath_threads)
            loop.add_reader(self._events_fd, self._on_events)
        for queue, sock in enumerate(self.underlay.queues):
            self._watch_socket(loop, sock, queue)
        for sock in self.underlay.groups.values():
            self._watch_socket(loop, sock)
        for network in self.networks:
            self._watch_tap(loop, network)
        self._schedule_ageing(loop)
        self._watch = loop.call_later(TAP_WATCH_INTERVAL, self._watch_taps, loop)

    def _unregister(self, loop: asyncio.AbstractEventLoop) -> None:
        """Readers come off, and the thread stops, before any fd is closed (never close a
        watched fd)."""
        for timer in (self._ageing, self._watch):
            if timer is not None:
                timer.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            loop.remove_signal_handler(sig)
        if self._events_fd is not None:
            loop.remove_reader(self._events_fd)
            self.dataplane.stop_thread()
            self._events_fd = None
            return
        if self.underlay is not None:
            for sock in self.underlay.receivers:
                loop.remove_reader(sock.fileno())
        for network in self.networks:
            loop.remove_reader(network.tap.fd)

    # Who waits on the fds: the data-path thread, or the event loop.
    def _watch_tap(self, loop: asyncio.AbstractEventLoop, network: "Network") -> None:
        if self._events_fd is not None:
            self.dataplane.watch_tap(network.index)
        else:
            loop.add_reader(network.tap.fd, self._on_tap, network)

    def _watch_socket(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, queue: int = 0) -> None:
        if self._events_fd is not None:
            self.dataplane.watch_underlay(sock, queue)
        else:
            loop.add_reader(sock.fileno(), self._on_underlay, sock)

    def _unwatch(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        if self._events_fd is not None:
            self.dataplane.unwatch(fd)
        else:
            loop.remove_reader(fd)

    def _on_events(self) -> int:
        """The thread has sightings (or a TAP that failed, or it ended): learn them, a slice at
        a time (the event fd stays readable while more wait).  Returns how many it took."""
        sightings: list[Sighting] = []
        try:
            sightings, failed = self.dataplane.take_events()
            self._learn(sightings, self.clock())
            for net, err in failed:
                if net in self._by_index:
                    self._tap_gone(self._by_index[net], err)
            err = self.dataplane.thread_failed()
            if err:
                self._stop_with_error(f"the data-path thread ended ({errno.errorcode.get(err, err)}: "
                                      f"{os.strerror(err)}): nothing is forwarded; stopping, so that a "
                                      "supervisor can start vxland again")
        except Exception:
            self._internal_error("data-path thread's events")
        return len(sightings)

    # ---- the data path's wake-ups ---------------------------------------------------
    def _on_tap(self, network: Network) -> None:
        assert self.underlay is not None
        try:
            now = self.clock()
            result = self.dataplane.pump_tap(network.index, self.underlay.raw, now)
            self._learn(result.sightings, now)
            if result.error in TAP_GONE:
                self._tap_gone(network, result.error)
            elif result.error:
                log.debug("%s: read error %d", network.tap.name, result.error)
        except Exception:
            self._internal_error("TAP pump")

    def _watch_taps(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once a second: is every TAP still there?  The event loop may stop polling one that
        reports an error, so the pump alone would not notice a deleted device."""
        for network in self.networks:
            try:
                fcntl.ioctl(network.tap.fd, TUNGETIFF, bytes(40))
            except OSError as e:
                self._tap_gone(network, e.errno or errno.EBADFD)
                return
        self._watch = loop.call_later(TAP_WATCH_INTERVAL, self._watch_taps, loop)

    def _tap_gone(self, network: Network, err: int) -> None:
        self._stop_with_error(f"TAP {network.tap.name} of VNI {network.spec.vni} is gone "
                              f"({errno.errorcode.get(err, err)}; deleted from outside vxland?): stopping, so "
                              "that a supervisor can start vxland again")

    def _stop_with_error(self, why: str) -> None:
        """One error line, exit status 1: a daemon that cannot forward must not look alive."""
        if self.exit_status:
            return
        log.error("%s", why)
        self.exit_status = 1
        if self._stopping is not None:
            self._stopping.set()

    def _ignore_signal(self, sig: int) -> None:
        log.warning("%s ignored (vxland stops on SIGTERM or SIGINT)", signal.Signals(sig).name)

    def _on_underlay(self, sock: socket.socket) -> None:
        try:
            now = self.clock()
            result = self.dataplane.pump_underlay(sock, now)
            self._learn(result.sightings, now)
            if result.error:
                log.debug("underlay: receive error %d", result.error)
        except Exception:
            self._internal_error("underlay pump")

    def _learn(self, sightings: list[Sighting], now: float) -> None:
        for s in sightings:
            network = self._by_index.get(s.net)
            if network is not None:                 # None: a network removed since (see _remove_network)
                network.table.see(s.mac, s.vtep, now, s.ip)

    def _internal_error(self, where: str) -> None:
        self.internal_errors += 1
        log.exception("internal error in the %s; the daemon goes on", where)

    def _schedule_ageing(self, loop: asyncio.AbstractEventLoop) -> None:
        # The kernel scans every 10 s; short ageing times are scanned proportionally faster.
        shortest = min((n.spec.ageing for n in self.networks), default=300.0)
        interval = min(10.0, max(0.2, shortest / 10))
        self._ageing = loop.call_later(interval, self._age, loop)

    def _age(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.clock()
        for network in self.networks:
            network.table.expire(now)
        for plane in self.planes:
            plane.tick()
        self._schedule_ageing(loop)

    # ---- reload ------------------------------------------------------------------------
    async def _reload_on_signal(self) -> None:
        """SIGHUP (systemctl reload): a refusal is its one logged line, never a traceback."""
        try:
            await self.reload("SIGHUP")
        except VxlandError:
            pass                                    # said by reload()
        except Exception:
            self._internal_error("reload on SIGHUP")

    async def reload(self, why: str = "request") -> dict[str, Any]:
        """Read the configuration again and apply the difference live (reload.py says what).
        Refused whole, with one line and the running configuration kept, when it cannot be."""
        async with self._reloading:
            systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                           "STATUS=reloading the configuration")
            try:
                if self.reread is None:
                    raise VxlandError("vxland was started without --config: there is no file to reload")
                new = self.reread()
                plan = plan_reload(self.config, new)
                if plan.refused:
                    raise VxlandError(plan.refused)
                not_added = await self._carry_out(plan, new)
            except VxlandError as e:
                self.reloads["refused"] += 1
                log.error("reload (%s) refused: %s; the running configuration is kept", why, e)
                raise
            except Exception as e:                  # a bug: counted, one line, the daemon goes on
                self.reloads["refused"] += 1
                self._internal_error(f"reload ({why})")
                raise VxlandError(f"reload failed with an internal error ({e.__class__.__name__}); "
                                  "see the daemon's log") from None
            finally:
                systemd.notify("READY=1", f"STATUS={self._status()}")
            self.reloads["done"] += 1
            changes = [line for line in plan.describe() if line not in not_added] + list(not_added.values())
            log.info("reload (%s): %s", why, "; ".join(changes))
            return {"changes": changes}

    async def _carry_out(self, plan: ReloadPlan, new: DaemonConfig) -> dict[str, str]:
        """First what can fail (new TAPs, group joins, room in flood lists), undone if anything
        does; then the rest, which cannot.  Returns the networks that could not be added after
        all, as {their plan line: why}: the only step past the point of no return that the
        machine's limits can refuse (epoll's, when their TAPs are watched)."""
        assert self.underlay is not None
        loop = asyncio.get_running_loop()
        opened: list[tuple[NetworkSpec, Tap]] = []
        joined: list[str] = []
        new_metrics = self.metrics
        if plan.metrics:                           # the old server first: the new one may want its port
            if self.metrics is not None:
                await self.metrics.stop()
            new_metrics = MetricsServer(new.metrics, self._stats, self.started_unix,
                                        allow=new.metrics_allow) if new.metrics else None
        try:
            if new_metrics is not None and plan.metrics:
                await new_metrics.start()
            for change in plan.changed:
                self._check_room(change)
            groups_now = {n.spec.group for n in self.networks if n.spec.group}
            for group in sorted({n.group for n in new.networks if n.group} - groups_now):
                self.underlay.join(group, self.underlay_interface)
                joined.append(group)
            for spec in plan.added:
                opened.append((spec, await loop.run_in_executor(None, self._open_tap, spec)))
            attached = await loop.run_in_executor(None, self._attached, plan.added, new.cni_data_dir) \
                if plan.added else []
        except BaseException:
            for _, tap in opened:
                tap.close()
            for group in joined:
                self.underlay.leave(group)
            if plan.metrics:
                if new_metrics is not None:
                    await new_metrics.stop()
                if self.metrics is not None:
                    try:
                        await self.metrics.start()
                    except VxlandError as e:        # its port taken meanwhile: said, not fatal
                        log.error("reload: the running metrics server cannot start again: %s", e)
                        self.metrics = None
            raise
        # The point of no return: what follows cannot be refused; a step that fails all the same
        # (a bug) is logged and counted, and every other step still happens.
        if plan.metrics:
            self.metrics = new_metrics
        old_groups = {n.spec.group for n in self.networks if n.spec.group}
        for spec in plan.removed:
            self._after_commit(f"removing VNI {spec.vni}", lambda: self._remove_network(self._by_vni[spec.vni], loop))
        self.config = new
        not_added: dict[str, str] = {}
        for spec, tap in opened:
            def add(spec: NetworkSpec = spec, tap: Tap = tap) -> None:
                network = self._add_network(self._free_index(), spec, tap, announce=False)
                try:
                    self._watch_tap(loop, network)
                except OSError as e:               # live but never read is worse than absent
                    why = f"VNI {spec.vni} not added: its TAP {spec.tap} cannot be watched ({e})"
                    log.error("reload: %s", why)
                    not_added[f"+VNI {spec.vni} on {spec.tap}"] = why
                    self.config = dataclasses.replace(self.config, networks=[
                        n for n in self.config.networks if n.vni != spec.vni])   # the next reload tries again
                    self._remove_network(network, loop)
                    return
                self._announce(network)
            self._after_commit(f"adding VNI {spec.vni}", add)
        attached = [a for a in attached if a.vni in self._by_vni]
        self._after_commit("restoring CNI containers", lambda: self._restore(attached))
        for change in plan.changed:
            try:
                await self._change_network(self._by_vni[change.new.vni], change, loop)
            except Exception:
                self._internal_error(f"reload (changing VNI {change.new.vni})")
        for network in self.networks:
            if plan.outer:
                self._after_commit("outer headers", lambda n=network: self.dataplane.update_network(
                    n.index, self._network_config(n.spec, n.tap)))
            if plan.acceptance:
                self._after_commit("acceptance", lambda n=network: n.table.set_acceptance(*new.acceptance(n.spec)))
        for group in joined:
            self._after_commit(f"group {group}", lambda g=group: self._watch_socket(loop, self.underlay.groups[g]))
        for group in old_groups - {n.spec.group for n in self.networks if n.spec.group}:
            def leave(group: str = group) -> None:
                assert self.underlay is not None
                self._unwatch(loop, self.underlay.groups[group].fileno())
                self.underlay.leave(group)
            self._after_commit(f"leaving group {group}", leave)
        if self._ageing is not None:
            self._ageing.cancel()
            self._schedule_ageing(loop)
        return not_added

    def _after_commit(self, what: str, step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception:
            self._internal_error(f"reload ({what})")

    def _check_room(self, change: NetworkChange) -> None:
        """Would the configured flood list (with what the control socket added) still fit?  EVPN's
        remotes come after it and give way (fdb.set_evpn_flood): they never make a reload fail
        half-way.  So would the static entries' VTEPs?"""
        table = self._by_vni[change.new.vni].table
        remotes = [r for r in table.remotes if r not in change.peers_removed]
        remotes += [p for p in change.peers_added if p not in remotes]
        if len(remotes) + (1 if change.new.group else 0) > MAX_FLOOD:
            raise VxlandError(f"VNI {change.new.vni}: the flood list would hold {len(remotes)} remotes; "
                              f"at most {MAX_FLOOD}, the group included")
        named = table.entry_vteps()
        if len(named | {s.vtep for s in change.static_set if s.vtep}) > ENTRY_VTEPS:
            raise VxlandError(f"VNI {change.new.vni}: static and EVPN entries would name more than "
                              f"{ENTRY_VTEPS} VTEPs")

    async def _change_network(self, network: Network, change: NetworkChange, loop: asyncio.AbstractEventLoop) -> None:
        table, new = network.table, change.new
        network.spec = new
        now = self.clock()
        for peer in change.peers_removed:
            if peer in table.remotes:
                table.remove_remote(peer)
        for peer in change.peers_added:
            table.add_remote(peer)
        for entry in change.static_removed:
            current = table.lookup(entry.mac)
            if current is not None and current.static and current.vtep == entry.vtep:
                table.delete(entry.mac)                  # as the old file had it: the file's to remove
        for entry in change.static_set:
            table.add_static(entry.mac, entry.vtep, now, entry.ip)
        if change.group:
            table.set_group(new.group)
        if change.limits:
            table.set_limits(new.ageing, new.max_learned, new.max_evpn)
        if change.acceptance:
            table.set_acceptance(*self.config.acceptance(new))
        if change.mtu:
            self._check_mtu(new)
            network.mtu = new.mtu or self.default_mtu
        if change.bridge:
            try:
                await loop.run_in_executor(None, lambda: configure_tap(network.tap.name, bridge=new.bridge,
                                                                       set_bridge=True))
            except VxlandError as e:
                log.error("reload: %s", e)
        if change.data_path or (change.limits and change.old.ageing != new.ageing):   # (the refresh interval)
            self.dataplane.update_network(network.index, self._network_config(new, network.tap))
        if change.plane:
            old_plane, new_plane = self._plane(change.old), self._plane(new)
            if old_plane is not None:
                old_plane.remove_network(new.vni)
            if new_plane is not None:
                new_plane.add_network(new, table, network.index)

    def _remove_network(self, network: Network, loop: asyncio.AbstractEventLoop) -> None:
        """In this order: nothing watches the TAP; the data path forgets the network (under its
        lock: no frame of it is pumped, no sighting of it made, afterwards); the sightings of
        it still queued are taken and dropped, before its index can name another network; only
        then is the TAP's fd closed, so that its number, reused, never receives its frames."""
        plane = self._plane(network.spec)
        if plane is not None:
            plane.remove_network(network.spec.vni)
        for fd in network.tap.fds:
            self._unwatch(loop, fd)                 # never close a watched fd
        self.dataplane.remove_network(network.index)
        self.networks.remove(network)
        del self._by_vni[network.spec.vni]
        del self._by_index[network.index]
        if self._events_fd is not None:            # every sighting queued so far (FIFO: a ring's worth
            for _ in range(self.dataplane.event_slices):   # of slices at most): the others' learned,
                if not self._on_events():           # its own dropped -- the data path makes no more
                    break                           # of it once remove_network returns
        network.tap.close()

    def _free_index(self) -> int:
        used = {n.index for n in self.networks}
        return next(i for i in range(MAX_NETS) if i not in used)

    def _status(self) -> str:
        return f"{len(self.networks)} networks, {sum(n.table.size() for n in self.networks)} FDB entries"

    # ---- control verbs ---------------------------------------------------------------
    def dispatch(self, verb: str, args: dict[str, Any]) -> Any:
        """A control request, its arguments already checked against VERBS."""
        handler = {
            "fdb.show": self._fdb_show, "fdb.add": self._fdb_add, "fdb.del": self._fdb_del,
            "peers.show": self._peers_show, "peers.add": self._peers_add, "peers.del": self._peers_del,
            "stats": self._stats, "reload": lambda: self.reload("vxland reload"),
            "networks.show": self._networks_show, "evpn.show": lambda: self._plane_show("evpn"),
            "etcd.show": lambda: self._plane_show("etcd"),
        }.get(verb)
        if handler is None:
            raise VxlandError(f"unknown verb {verb!r}")
        return handler(**args)

    def _network(self, vni: Any) -> Network:
        if not isinstance(vni, int) or vni not in self._by_vni:
            known = ", ".join(str(v) for v in sorted(self._by_vni))
            raise VxlandError(f"no network with VNI {vni} (configured: {known})")
        return self._by_vni[vni]

    def _selected(self, vni: int | None) -> list[Network]:
        return self.networks if vni is None else [self._network(vni)]

    def _fdb_show(self, vni: int | None = None, compact: bool = False) -> Any:
        """Every entry, in MAC order per network, as rows of FDB_COLUMNS (compact) or as objects:
        about 1 µs a row (100k rows in a tenth of a second), because the event loop waits while
        it is built."""
        now = self.clock()
        rows = []
        static, names = EntryKind.static, {kind: kind.name for kind in EntryKind}
        for network in self._selected(vni):
            ips_of, vni_, port = network.table.neighbours.ips_of, network.spec.vni, network.tap.name
            for e in network.table.entries():
                rows.append([e.mac.hex(":"), vni_, e.vtep, None if e.vtep else port, e.kind is static,
                             names[e.kind], int((now - e.updated) * 10), ips_of(e.mac) or None])
        return {"columns": FDB_COLUMNS, "rows": rows} if compact else [fdb_row(r) for r in rows]

    def _fdb_add(self, mac: str, vni: int, vtep: str | None = None, local: bool = False,
                 ip: str | None = None) -> dict[str, Any]:
        if (vtep is None) == (not local):
            raise VxlandError("fdb.add takes a remote vtep, or local: one of them")
        network = self._network(vni)
        entry = network.table.add_static(wire.mac_to_bytes(mac), None if local else vtep, self.clock(), ip)
        where = {"port": network.tap.name} if entry.local else {"vtep": entry.vtep}
        return {"mac": wire.mac_to_str(entry.mac), "vni": vni, **where, "static": True,
                **({"ips": network.table.neighbours.ips_of(entry.mac)} if ip else {})}

    def _networks_show(self, vni: int | None = None) -> list[dict[str, Any]]:
        """What joins a network: its TAP, the bridge containers go on, the MTU they should use."""
        return [{"vni": n.spec.vni, "tap": n.tap.name, "bridge": n.spec.bridge, "mtu": n.mtu,
                 "learning": n.spec.learning, "neigh_suppress": n.spec.neigh_suppress,
                 "accept_from": n.table.accept_from,
                 **({"addresses": self.etcd.addresses(n.spec.vni)} if n.spec.etcd and self.etcd is not None else {})}
                for n in self._selected(vni)]

    def _plane_show(self, name: str) -> Any:
        plane = next((p for p in self.planes if p.name == name), None)
        if plane is None:
            raise VxlandError(f"{name} is not configured (no [{name}] section)")
        return plane.show()

    def _fdb_del(self, mac: str, vni: int) -> dict[str, Any]:
        network = self._network(vni)
        if not network.table.delete(wire.mac_to_bytes(mac)):
            raise VxlandError(f"no entry for {mac} in VNI {vni}")
        return {"mac": mac, "vni": vni, "deleted": True}

    def _peers_show(self, vni: int | None = None) -> list[dict[str, Any]]:
        return [{"vni": n.spec.vni, "peers": n.table.remotes, "group": n.table.group,
                 **({f"{'evpn' if n.spec.evpn else 'etcd'}_peers": n.table.evpn_remotes}
                    if n.spec.evpn or n.spec.etcd else {})} for n in self._selected(vni)]

    def _peers_add(self, vni: int, address: str) -> dict[str, Any]:
        network = self._network(vni)
        added = network.table.add_remote(address)
        return {"vni": vni, "peers": network.table.remotes, "group": network.table.group, "changed": added}

    def _peers_del(self, vni: int, address: str) -> dict[str, Any]:
        network = self._network(vni)
        if not network.table.remove_remote(address):
            raise VxlandError(f"{address} is not in the flood list of VNI {vni}")
        return {"vni": vni, "peers": network.table.remotes, "group": network.table.group, "changed": True}

    def _stats(self) -> dict[str, Any]:
        total = self.dataplane.underlay_counters().drops_by_name()
        # counted by the kernel, not the data path: see KERNEL_DROPS
        total["underlay_overflow"] = self.underlay.overflow_drops() if self.underlay else 0
        total["tap_overflow"] = 0
        vnis = []
        for n in self.networks:
            c = self.dataplane.counters(n.index)
            drops = c.drops_by_name()
            drops["tap_overflow"] = n.tap.overflow_drops()
            for reason, count in drops.items():
                total[reason] += count
            vnis.append({"vni": n.spec.vni, "tap": n.tap.name,
                         "rx_packets": c.rx_packets, "rx_bytes": c.rx_bytes,
                         "tx_packets": c.tx_packets, "tx_bytes": c.tx_bytes,
                         "drops": drops, "fdb_entries": n.table.size(), "fdb_learned": n.table.learned_count(),
                         "fdb_evpn": n.table.evpn_count(),
                         "flood_list": len(n.table.flood_list()) + (1 if n.table.group else 0),
                         "learn_refused": n.table.learn_refused + c.learn_refused,
                         "csum_completed": c.csum_completed,
                         "too_big_replies": c.too_big_replies, "suppressed": c.suppressed,
                         "neighbours": len(n.table.neighbours),
                         "neigh_refused": n.table.neighbours.refused + c.neigh_refused,
                         "neigh_conflicts": n.table.neighbours.conflicts,
                         "neigh_contested": n.table.neighbours.contested(),
                         "evpn_refused": n.table.evpn_refused + n.table.neighbours.evpn_refused,
                         "flood_refused": n.table.flood_refused})
        threaded = self._events_fd is not None
        return {"datapath": self.dataplane.name, "datapath_thread": threaded,
                "datapath_threads": self.datapath_threads if threaded else 0, "queues": self.queues,
                "queue_packets": self.dataplane.queue_packets() if threaded else {},
                "sightings_dropped": self.dataplane.dropped_events(),
                "uptime": round(self.clock() - self.started, 1),
                "underlay": {"local": self.config.local, "port": self.config.port,
                             "interface": self.underlay_interface},
                "offloads": {"tap": any(n.tap.vnet_hdr for n in self.networks),
                             "udp_gso": self.dataplane.gso_enabled(), "udp_gro": self.gro,
                             "udp_gso_sockets": self.dataplane.gso_sockets()},
                "drops": total, "csum_completed": sum(v["csum_completed"] for v in vnis),
                "vnis": vnis, "internal_errors": self.internal_errors, "reloads": dict(self.reloads),
                **{plane.name: plane.stats() for plane in self.planes}}
