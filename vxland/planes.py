"""Control planes: what fills a network's forwarding table besides learning and the file.

vxland has three ways for a fleet of VTEPs to find each other: static peers (the file and the
control verbs: no plane at all), BGP EVPN through gobgpd (vxland/evpn) and etcd
(vxland/etcd).  The two dynamic ones are peers behind `ControlPlane`, the one interface the
daemon drives -- start and stop with the daemon, a network added or removed (at start and
by a reload), a periodic tick, and what `stats` and their `show` verb print.  A network is
served by at most one of them (the configuration says which: `evpn = true` or
`etcd = true`).

Both speak in EVPN's terms -- a VTEP that takes a VNI's flooded frames (type 3), a MAC with
its addresses behind a VTEP, with a mobility sequence number (type 2) -- and both decide with
the same RIB (vxland/evpn/rib.py).  `RouteTables` is what they share: it feeds the RIB what
the tables hold behind the local TAP (it is each served table's observer), and carries the
RIB's decisions out through the tables' public API (fdb.py: set_evpn_entry,
set_evpn_flood, set_evpn_neighbour, ...), the same API the control verbs use.  What each
plane adds is its transport: how a route is announced and withdrawn, and how others' arrive.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Any, Callable, Protocol

from .config import NetworkSpec
from .evpn import rib as R
from .evpn.route_types import FloodRoute, MacRoute, Route
from .fdb import ForwardingTable
from .wire import mac_to_str

REFUSAL_LOG_INTERVAL = 10.0  # a VNI's refused routes are logged at most this often


class ControlPlane(Protocol):
    """What the daemon calls; everything else is the plane's own business."""
    name: str                                            # its section, verb and stats key: "evpn", "etcd"

    def serves(self, spec: NetworkSpec) -> bool: ...     # does this network use this plane?
    async def start(self) -> None: ...                   # once, on the event loop, before READY
    async def stop(self) -> None: ...                    # once, at shutdown: withdraw what is ours
    def add_network(self, spec: NetworkSpec, table: ForwardingTable, index: int) -> None: ...
    def remove_network(self, vni: int) -> None: ...      # its table keeps nothing of the plane's
    def tick(self) -> None: ...                          # every ageing scan
    def stats(self) -> dict[str, Any]: ...               # in `stats` under its name
    async def show(self) -> Any: ...                     # `vxland <name> show`


class RouteTables:
    """The RIB and the forwarding tables it writes, for a plane that subclasses it and sends
    the RIB's announcements and withdrawals with `_send_action`."""

    name = "plane"

    def __init__(self, local: str, log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.local = local
        self.clock = clock
        self.log = log
        self.rib = R.EvpnRib(local)
        self.tables: dict[int, ForwardingTable] = {}
        self.counters: Counter[str] = Counter()
        self._applying = False
        self._deferred: deque[tuple[ForwardingTable, bytes]] = deque()
        self._draining = False
        self._refusal_logged: dict[int, float] = {}

    def _send_action(self, action: R.Announce | R.Withdraw) -> None:
        raise NotImplementedError

    # ---- networks -----------------------------------------------------------------
    def _serve_table(self, vni: int, table: ForwardingTable) -> None:
        """`table` is `vni`'s: what is behind its TAP is announced from now on."""
        self.tables[vni] = table
        table.observer = self
        self._apply(self.rib.add_network(vni, self.clock()))
        for entry in table.entries():
            if entry.local:
                self.changed(table, entry.mac)

    def _unserve_table(self, vni: int) -> None:
        """Our routes for `vni` withdrawn; its table keeps nothing the plane wrote."""
        table = self.tables.pop(vni, None)
        if table is not None:
            table.observer = None
            table.clear_evpn()
        self._apply(self.rib.remove_network(vni))

    # ---- the tables tell us (TableObserver) ------------------------------------------
    def changed(self, table: ForwardingTable, mac: bytes) -> None:
        if self._applying:                          # a change we are making: looked at after
            self._deferred.append((table, mac))
            return
        entry = table.lookup(mac)
        present = entry is not None and entry.local
        ips = table.neighbours.ips_of(mac) if present else []
        self._apply(self.rib.set_local(table.vni, mac, present, ips, self.clock(),
                                       static=bool(present and entry is not None and entry.static)))

    # ---- carrying actions out ------------------------------------------------------
    def _apply(self, actions: list[R.Action]) -> None:
        outer = not self._applying
        self._applying = True
        try:
            now = self.clock()
            for action in actions:
                self._carry_out(action, now)
        finally:
            if outer:
                self._applying = False
        if outer and not self._draining:            # (one loop drains them: a batch of moves may
            self._draining = True                   # leave hundreds, and recursing for each overflowed)
            try:
                while self._deferred:
                    table, mac = self._deferred.popleft()
                    self.changed(table, mac)
            finally:
                self._draining = False

    def _carry_out(self, action: R.Action, now: float) -> None:
        if isinstance(action, (R.Announce, R.Withdraw)):
            self._send_action(action)
            return
        table = self.tables.get(action.vni)
        if table is None:
            return
        try:
            if isinstance(action, R.InstallMac):
                if not table.set_evpn_entry(action.mac, action.vtep, now):
                    self.counters["static_conflicts"] += 1
                    self.log.warning("%s: vni %d: %s is static here; the route placing it behind %s is not "
                                     "installed", self.name, action.vni, mac_to_str(action.mac), action.vtep)
            elif isinstance(action, R.RemoveMac):
                table.delete_evpn_entry(action.mac)
            elif isinstance(action, R.InstallIp):
                table.set_evpn_neighbour(action.ip, action.mac, now)
            elif isinstance(action, R.RemoveIp):
                table.delete_evpn_neighbour(action.ip)
            elif isinstance(action, R.SetFlood):
                refused = table.flood_refused
                table.set_evpn_flood(list(action.vteps), action.total)
                self.counters["table_refusals"] += table.flood_refused - refused
        except (ValueError, OSError) as e:           # refused (a cap), or the data path's copy is full
            self.counters["table_refusals"] += 1
            self.rib.refused(action)                 # decided again later, when there may be room
            last = self._refusal_logged.get(action.vni)
            if last is None or now - last >= REFUSAL_LOG_INTERVAL:     # a peer may send thousands
                self._refusal_logged[action.vni] = now
                self.log.error("%s: vni %d: %s (counted as table_refusals; logged at most every %.0f s)",
                               self.name, action.vni, e, REFUSAL_LOG_INTERVAL)


def sort_key(route: Route) -> tuple:
    """Routes as `show` lists them: by VNI, flood routes first, then by MAC and VTEP."""
    return (route.vni, 0 if isinstance(route, FloodRoute) else 1, getattr(route, "mac", b""), route.vtep,
            getattr(route, "ip", None) or "")


def route_row(route: Route) -> dict[str, Any]:
    if isinstance(route, FloodRoute):
        return {"type": 3, "vni": route.vni, "vtep": route.vtep}
    assert isinstance(route, MacRoute)
    return {"type": 2, "vni": route.vni, "mac": mac_to_str(route.mac), "ip": route.ip, "vtep": route.vtep,
            "seq": route.seq, "sticky": route.sticky}
