"""The daemon: the I/O shell around the data path and the forwarding tables.

It opens the underlay sockets and one TAP per VNI, registers their fds with the
event loop (uvloop), and on each wake-up makes one data-path call for a whole
batch: `pump_tap` (TAP -> encap -> underlay) or `pump_underlay` (underlay ->
decap -> TAP).  The sightings each call returns go to that VNI's
ForwardingTable, which writes its decisions back into the data path.  A timer
ages the tables; the control socket reads and changes them; SIGINT/SIGTERM
stop it all cleanly (TAPs go away with their fds unless made persistent).
Once everything is open it drops every privilege but CAP_NET_ADMIN and
CAP_NET_RAW (privileges.py).  A TAP that disappears under it stops it with
exit status 1, so that a supervisor restarts it, rather than leaving it deaf.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import privileges, wire
from .config import DaemonConfig, NetworkSpec
from .control import ControlServer, Verb
from .datapath import DF, NetworkConfig, ReferenceDataPlane, Sighting
from .errors import VxlandError
from .fdb import ForwardingTable
from .tap import Tap, open_tap, underlay_link
from .underlay import Underlay, enable_gro, open_underlay

log = logging.getLogger("vxland")

TUNGETIFF = 0x800454D2
#: TAP errors that mean the device is gone, not that it is busy
TAP_GONE = (errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EIO, errno.EBADF)
TAP_WATCH_INTERVAL = 1.0

#: The control verbs and what each takes.
VERBS = {
    "fdb.show": Verb(optional={"vni": int}),
    "fdb.add": Verb({"mac": str, "vni": int, "vtep": str}),
    "fdb.del": Verb({"mac": str, "vni": int}),
    "peers.show": Verb(optional={"vni": int}),
    "peers.add": Verb({"vni": int, "address": str}),
    "peers.del": Verb({"vni": int, "address": str}),
    "stats": Verb(),
}

#: Drops that the kernel counts on vxland's behalf, reported beside DropReason's.
KERNEL_DROPS = {
    "tap_overflow": "frames not read from the TAP before its queue (txqueuelen) filled",
    "underlay_overflow": "datagrams dropped because the UDP socket's receive buffer was full",
}


def make_dataplane(kind: str):
    if kind == "reference":
        return ReferenceDataPlane()
    from .native import NativeDataPlane
    return NativeDataPlane()


@dataclass
class Network:
    """One VNI at run time: its index in the data path, TAP and table."""
    index: int
    spec: NetworkSpec
    tap: Tap
    table: ForwardingTable


class Daemon:
    def __init__(self, config: DaemonConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.dataplane = make_dataplane(config.datapath)
        self.networks: list[Network] = []
        self.underlay: Underlay | None = None
        self.control = ControlServer(config.control, self.dispatch, VERBS)
        self.started = clock()
        self.internal_errors = 0
        self.gro = False
        self.underlay_interface = ""
        self.exit_status = 0
        self._by_vni: dict[int, Network] = {}
        self._stopping: asyncio.Event | None = None
        self._ageing: asyncio.TimerHandle | None = None
        self._watch: asyncio.TimerHandle | None = None

    # ---- life cycle -------------------------------------------------------------
    # open() runs before the event loop and close() after it: pyroute2 (netlink, for
    # the TAPs) runs an asyncio loop of its own and cannot be called inside ours.
    async def serve(self) -> None:
        """Move frames until SIGINT or SIGTERM; needs open() first."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.control.start()
            if self.config.user is not None:
                self.control.chown(*privileges.user_ids(self.config.user))
            privileges.drop(self.config.user)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stopping.set)
            for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                loop.add_signal_handler(sig, self._ignore_signal, sig)
            self._register(loop)
            log.info("vxland up: %s:%d, %s data path, offloads %s, %s", self.config.local,
                     self.config.port, self.dataplane.name, "on" if self.config.offloads else "off", ", ".join(
                         f"VNI {n.spec.vni} on {n.tap.name}" for n in self.networks))
            await self._stopping.wait()
            log.info("stopping" if not self.exit_status else "stopping with exit status %d", self.exit_status)
        finally:
            self._unregister(loop)
            await self.control.stop()

    def open(self) -> None:
        """Open sockets and TAPs and program the data path; on failure close what was opened."""
        cfg = self.config
        try:
            self.underlay = open_underlay(cfg.local, cfg.port)
            self.underlay_interface, underlay_mtu = underlay_link(cfg.local)
            for group in {spec.group for spec in cfg.networks if spec.group}:
                self.underlay.join(group, self.underlay_interface)
            if cfg.offloads:
                self.gro = all([enable_gro(sock) for sock in self.underlay.receivers])
                self.dataplane.set_gso(True)
            default_mtu = underlay_mtu - (wire.IPV6_OVERHEAD if cfg.family == 6 else wire.IPV4_OVERHEAD)
            for index, spec in enumerate(cfg.networks):
                if spec.mtu and spec.mtu > default_mtu:
                    log.warning("%s: MTU %d is more than the underlay carries (%s MTU %d leaves %d): larger "
                                "frames will be dropped as too_big", spec.tap, spec.mtu, self.underlay_interface,
                                underlay_mtu, default_mtu)
                tap = open_tap(spec.tap, mtu=spec.mtu or default_mtu, bridge=spec.bridge,
                               offloads=cfg.offloads)
                self._add_network(index, spec, tap)
        except BaseException:
            self.close()
            raise

    def _add_network(self, index: int, spec: NetworkSpec, tap: Tap) -> None:
        cfg = self.config
        view = self.dataplane.add_network(index, NetworkConfig(
            vni=spec.vni, local=cfg.local, tap_fd=tap.fd, own_mac=tap.mac, learning=spec.learning,
            dst_port=cfg.port, src_ports=cfg.source_ports, ttl=cfg.ttl, group_ttl=cfg.group_ttl,
            vnet_hdr=tap.vnet_hdr, tap_uso=tap.uso, mtu=tap.mtu,
            tos=0 if cfg.tos == "inherit" else int(cfg.tos), tos_inherit=cfg.tos == "inherit",
            df=DF[cfg.df], drop_reserved=cfg.reserved_bits == "drop", carry_vlan=cfg.inner_vlan == "carry"))
        accept_from, accept_prefixes = cfg.acceptance(spec)
        table = ForwardingTable(spec.vni, view, port=tap.name, ageing=spec.ageing,
                                max_learned=spec.max_learned, family=cfg.family, local=cfg.local,
                                accept_from=accept_from, accept_prefixes=accept_prefixes)
        network = Network(index, spec, tap, table)
        self.networks.append(network)
        self._by_vni[spec.vni] = network
        now = self.clock()
        for peer in spec.peers:
            table.add_remote(peer)
        if spec.group:
            table.set_group(spec.group)
        for entry in spec.static:
            table.add_static(entry.mac, entry.vtep, now)

    def close(self) -> None:
        for network in self.networks:
            network.tap.close()
        self.networks.clear()
        self._by_vni.clear()
        if self.underlay is not None:
            self.underlay.close()
            self.underlay = None

    def _register(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.underlay is not None
        for sock in self.underlay.receivers:
            loop.add_reader(sock.fileno(), self._on_underlay, sock)
        for network in self.networks:
            loop.add_reader(network.tap.fd, self._on_tap, network)
        self._schedule_ageing(loop)
        self._watch = loop.call_later(TAP_WATCH_INTERVAL, self._watch_taps, loop)

    def _unregister(self, loop: asyncio.AbstractEventLoop) -> None:
        """Readers come off before any fd is closed (never close a registered fd)."""
        for timer in (self._ageing, self._watch):
            if timer is not None:
                timer.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            loop.remove_signal_handler(sig)
        if self.underlay is not None:
            for sock in self.underlay.receivers:
                loop.remove_reader(sock.fileno())
        for network in self.networks:
            loop.remove_reader(network.tap.fd)

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
        if self.exit_status:
            return
        log.error("TAP %s of VNI %d is gone (%s; deleted from outside vxland?): stopping, so that a "
                  "supervisor can start vxland again", network.tap.name, network.spec.vni, errno.errorcode.get(err, err))
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
            self.networks[s.net].table.see(s.mac, s.vtep, now)

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
        self._schedule_ageing(loop)

    # ---- control verbs ---------------------------------------------------------------
    def dispatch(self, verb: str, args: dict[str, Any]) -> Any:
        """A control request, its arguments already checked against VERBS."""
        handler = {
            "fdb.show": self._fdb_show, "fdb.add": self._fdb_add, "fdb.del": self._fdb_del,
            "peers.show": self._peers_show, "peers.add": self._peers_add, "peers.del": self._peers_del,
            "stats": self._stats,
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

    def _fdb_show(self, vni: int | None = None) -> list[dict[str, Any]]:
        now = self.clock()
        rows = []
        for network in self._selected(vni):
            for e in network.table.entries():
                row: dict[str, Any] = {"mac": wire.mac_to_str(e.mac), "vni": network.spec.vni}
                if e.local:
                    row["port"] = network.tap.name
                else:
                    row["vtep"] = e.vtep
                row["static"] = e.static
                row["age"] = round(now - e.updated, 1)
                rows.append(row)
        return rows

    def _fdb_add(self, mac: str, vni: int, vtep: str) -> dict[str, Any]:
        network = self._network(vni)
        entry = network.table.add_static(wire.mac_to_bytes(mac), vtep, self.clock())
        return {"mac": wire.mac_to_str(entry.mac), "vni": vni, "vtep": entry.vtep, "static": True}

    def _fdb_del(self, mac: str, vni: int) -> dict[str, Any]:
        network = self._network(vni)
        if not network.table.delete(wire.mac_to_bytes(mac)):
            raise VxlandError(f"no entry for {mac} in VNI {vni}")
        return {"mac": mac, "vni": vni, "deleted": True}

    def _peers_show(self, vni: int | None = None) -> list[dict[str, Any]]:
        return [{"vni": n.spec.vni, "peers": n.table.remotes, "group": n.table.group} for n in self._selected(vni)]

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
                         "drops": drops, "fdb_entries": len(n.table.entries()),
                         "learn_refused": n.table.learn_refused, "csum_completed": c.csum_completed})
        return {"datapath": self.dataplane.name, "uptime": round(self.clock() - self.started, 1),
                "underlay": {"local": self.config.local, "port": self.config.port,
                             "interface": self.underlay_interface},
                "offloads": {"tap": any(n.tap.vnet_hdr for n in self.networks),
                             "udp_gso": self.dataplane.gso_enabled(), "udp_gro": self.gro,
                             "udp_gso_sockets": self.dataplane.gso_sockets()},
                "drops": total, "csum_completed": sum(v["csum_completed"] for v in vnis),
                "vnis": vnis, "internal_errors": self.internal_errors}
