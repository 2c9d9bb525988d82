"""BGP EVPN on vxland's event loop: gobgpd, the RIB and the forwarding tables, joined.

The service is the I/O shell around rib.py.  It

* runs gobgpd (gobgpd = "run") or uses one that runs (gobgpd = "external"), and keeps a
  gRPC connection to it: on every (re)connection it adds all our routes again, reads the
  table whole (ListPath) once the watch stream is up, and resynchronises the RIB with it;
  every `RESYNC_INTERVAL` seconds it does that again, and counts what it had to correct;
* turns each path that gobgpd reports into RIB input (routes.decode), and the RIB's
  actions into calls on the forwarding tables' public API and into AddPath / DeletePath;
* is each EVPN network's table observer: a MAC that appears behind the local TAP, gets an
  address, or goes, reaches the RIB as `set_local`.

If gobgpd cannot be reached for longer than the hold time, the routes it gave are removed
(flood lists emptied, EVPN entries deleted) and that is logged as an error: tables are never
silently stale.  A gobgpd that vxland runs and that dies is restarted (counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Callable

from google.protobuf.json_format import MessageToDict

from ..config import EvpnConfig, NetworkSpec
from ..fdb import ForwardingTable
from ..planes import RouteTables, route_row, sort_key
from . import rib as R
from .gobgpd import Gobgpd, Neighbor, SpeakerConfig
from .routes import FloodRoute, Route, decode, encode
from .speaker import Speaker, SpeakerError
from .targets import ImportIndex, RouteTarget

log = logging.getLogger("vxland.evpn")

RESYNC_INTERVAL = 60.0     # seconds between whole-table resynchronisations
FIRST_EVENT_WAIT = 2.0     # how long the watch stream's first event (the table) is waited for
RETRY = 1.0                # seconds between connection attempts


def _ours(route: Route) -> tuple:
    """Our announcement's NLRI: a newer sequence number of a MAC replaces the older path."""
    if isinstance(route, FloodRoute):
        return (3, route.vni)
    return (2, route.vni, route.mac, route.ip)


class EvpnService(RouteTables):
    """The EVPN control plane (planes.ControlPlane), its routes carried by gobgpd."""
    name = "evpn"

    def __init__(self, config: EvpnConfig, local: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(local, log, clock)
        self.config = config
        self.imports: dict[int, list[RouteTarget]] = {}
        self._import_index = ImportIndex({})         # of self.imports: what decode looks routes up in
        self.exports: dict[int, RouteTarget | None] = {}
        self.rd_index: dict[int, int] = {}
        self.ignored: Counter[str] = Counter()
        self.connected = False
        self.gobgpd: Gobgpd | None = None
        if config.gobgpd == "run":
            assert config.router_id is not None
            self.gobgpd = Gobgpd(SpeakerConfig(
                asn=config.asn, router_id=config.router_id, local=local, hold_time=config.hold_time,
                neighbors=tuple(Neighbor(n.address, n.asn, n.route_reflector_client, n.password)
                                for n in config.neighbors)),
                config.api)
        self.speaker: Speaker | None = None
        self._uuids: dict[tuple, tuple[Route, bytes]] = {}
        self._outbox: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._lost_at: float | None = None
        self._cleared = False
        self._peers: list[dict[str, Any]] = []     # the sessions, as last asked (stats, metrics)
        self._poll: asyncio.Task | None = None

    # ---- life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        self._outbox = asyncio.Queue()
        self.speaker = Speaker(self.config.api)
        self._tasks = [asyncio.create_task(self._session(), name="evpn session"),
                       asyncio.create_task(self._send(), name="evpn announcements")]

    async def stop(self) -> None:
        """Withdraw what we announced: a gobgpd we run is stopped (its peers drop our routes at
        once on its Cease); from one that runs on, our paths are deleted."""
        for task in self._tasks + ([self._poll] if self._poll else []):
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._poll] if self._poll else []), return_exceptions=True)
        self._tasks = []
        if self.gobgpd is not None:
            self.gobgpd.stop()
        elif self.speaker is not None and self.connected:
            for _, uuid in list(self._uuids.values()):
                try:
                    await self.speaker.delete(uuid)
                except SpeakerError as e:
                    log.warning("evpn: withdrawing at stop: %s", e)
                    break
        self._uuids.clear()
        if self.speaker is not None:
            await self.speaker.close()

    # ---- networks -----------------------------------------------------------------
    def serves(self, spec: NetworkSpec) -> bool:
        return spec.evpn

    def add_network(self, spec: NetworkSpec, table: ForwardingTable, index: int) -> None:
        """Serve `spec`'s VNI over EVPN: announce it, and what its table holds behind the TAP."""
        vni = spec.vni
        target = RouteTarget.parse(spec.route_target) if spec.route_target else None
        self.exports[vni] = target
        self.imports[vni] = [target] if target else []
        self._import_index = ImportIndex(self.imports)
        self.rd_index[vni] = index + 1
        self._serve_table(vni, table)
        log.info("evpn: VNI %d announced (route target %s)", vni,
                 target or f"{self.config.asn & 0xFFFF}:{vni}, imported from any AS")

    def remove_network(self, vni: int) -> None:
        """Stop serving `vni` over EVPN: withdraw our routes; its table keeps nothing of EVPN's."""
        self._unserve_table(vni)
        for mapping in (self.imports, self.exports, self.rd_index):
            mapping.pop(vni, None)
        self._import_index = ImportIndex(self.imports)

    # ---- carrying actions out ------------------------------------------------------
    def _send_action(self, action: R.Announce | R.Withdraw) -> None:
        assert self._outbox is not None or not self._tasks
        if self._outbox is not None:
            self._outbox.put_nowait(action)

    async def _send(self) -> None:
        """Our announcements and withdrawals, in order, to gobgpd."""
        assert self._outbox is not None and self.speaker is not None
        while True:
            action = await self._outbox.get()
            route = action.route
            key = _ours(route)
            try:
                if isinstance(action, R.Announce):
                    path = encode(route, asn=self.config.asn, router_id=self.config.router_id or self.local,
                                  rd_index=self.rd_index.get(route.vni, 1), export=self.exports.get(route.vni))
                    self._uuids[key] = (route, await self.speaker.add(path))
                    self.counters["announced"] += 1
                    log.debug("evpn: announced %s", route)
                elif key in self._uuids and self._uuids[key][0] == route:
                    await self.speaker.delete(self._uuids.pop(key)[1])
                    self.counters["withdrawn"] += 1
                    log.debug("evpn: withdrew %s", route)
            except SpeakerError as e:
                # the session task reconnects and adds every announcement again
                log.debug("evpn: %s (added again once gobgpd answers)", e)
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("evpn: internal error announcing %s", route)

    # ---- the session with gobgpd ---------------------------------------------------
    async def _session(self) -> None:
        first = True
        while True:
            if self.gobgpd is not None and not self.gobgpd.alive():
                if self.gobgpd.process is not None:
                    log.error("evpn: gobgpd exited (status %s); starting it again", self.gobgpd.exit_status())
                try:
                    started = self.gobgpd.start()
                except Exception as e:              # fork refused (a process limit), the port's check
                    log.error("evpn: cannot start gobgpd: %s", e)
                    started = False
                if not started:
                    self._disconnected("gobgpd is not running")
                    first = False
                    await asyncio.sleep(RETRY)
                    continue
                if self.gobgpd.starts > 1:
                    self.counters["gobgpd_restarts"] += 1
            try:
                await self._connected_life(first)
            except SpeakerError as e:
                self._disconnected(str(e))
            except Exception:                       # a bug: logged, counted, and the session goes on
                self.counters["internal_errors"] += 1
                log.exception("evpn: internal error in the session with gobgpd")
                self._disconnected("internal error")
            first = False
            await asyncio.sleep(RETRY)

    async def _connected_life(self, first: bool) -> None:
        assert self.speaker is not None and self._outbox is not None
        deadline = time.monotonic() + (10.0 if first else 0.0)
        while True:                                  # gobgpd takes a moment to open its API
            try:
                asn, router_id = await self.speaker.identity()
                break
            except SpeakerError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        if self.gobgpd is not None and not self.gobgpd.serves_api():
            raise SpeakerError(f"what answers at {self.config.api} is not the gobgpd vxland started "
                               f"(exit status {self.gobgpd.exit_status()}): not attached to")
        if asn != self.config.asn:
            log.error("evpn: gobgpd at %s is AS %d, not %d as [evpn] says", self.config.api, asn, self.config.asn)
        self.connected = True
        if self._lost_at is not None:
            log.warning("evpn: gobgpd answers again after %.1f s", time.monotonic() - self._lost_at)
        self._lost_at = None
        self.counters["connections"] += 1
        self._uuids.clear()                          # a gobgpd that restarted has none of ours
        for route in self.rib.announcements():
            self._outbox.put_nowait(R.Announce(route))
        events: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(self._read(events), name="evpn watch")
        try:
            try:
                batch = await asyncio.wait_for(events.get(), FIRST_EVENT_WAIT)
            except asyncio.TimeoutError:
                batch = []
            await self._resync("connected" if first and not self._cleared else "reconnected")
            while True:
                if isinstance(batch, Exception):
                    raise batch
                self._take(batch)
                try:
                    batch = await asyncio.wait_for(events.get(), RESYNC_INTERVAL)
                except asyncio.TimeoutError:
                    await self._resync("periodic")
                    batch = []
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, events: asyncio.Queue) -> None:
        assert self.speaker is not None
        try:
            async for batch in self.speaker.watch():
                events.put_nowait(batch)
        except SpeakerError as e:
            events.put_nowait(e)

    async def _resync(self, why: str) -> None:
        """The RIB made equal to gobgpd's table as a whole."""
        assert self.speaker is not None
        snapshot: dict[tuple, Route] = {}
        for path in await self.speaker.table():
            d = decode(path, self._import_index, self.local)
            if d.route is not None:
                snapshot[d.key] = d.route
        actions = self.rib.resync(snapshot, self.clock())
        self._apply(actions)
        self._cleared = False
        self.counters["resyncs"] += 1
        changes = [a for a in actions if not isinstance(a, (R.Announce, R.Withdraw))]
        if why == "periodic" and changes:
            self.counters["resync_corrections"] += len(changes)
            log.warning("evpn: periodic resynchronisation corrected %d table changes", len(changes))
        elif why != "periodic":
            log.info("evpn: %s to gobgpd, table synchronised: %d routes received", why, len(snapshot))

    def _take(self, paths: list) -> None:
        """One watch event's paths, each decided and carried out in turn -- but the flood
        lists, set once at the end (a table dump is thousands of type-3 routes)."""
        now = self.clock()
        floods: dict[int, R.SetFlood] = {}
        try:
            for path in paths:
                d = decode(path, self._import_index, self.local)
                if d.ignored == "our own":
                    continue
                if d.ignored is not None:
                    self.ignored[d.ignored] += 1
                    log.debug("evpn: ignored a route from %s: %s", d.peer or "?", d.ignored)
                    actions = self.rib.withdraw(d.key, now)     # whatever it said before no longer holds
                elif d.withdrawn:
                    self.counters["routes_withdrawn"] += 1
                    actions = self.rib.withdraw(d.key, now)
                else:
                    assert d.route is not None
                    self.counters["routes_received"] += 1
                    actions = self.rib.receive(d.key, d.route, now)
                self._apply(R.without_floods(actions, floods))
        finally:
            self._apply(list(floods.values()))

    def _disconnected(self, why: str) -> None:
        now = time.monotonic()
        if self.connected or self._lost_at is None:
            log.warning("evpn: %s; retrying every %.0f s", why, RETRY)
            self._lost_at = now
        self.connected = False
        if not self._cleared and now - self._lost_at > self.config.hold_time:
            self._apply(self.rib.clear_received(self.clock()))
            self._cleared = True
            self.counters["tables_cleared"] += 1
            log.error("evpn: no gobgpd for %.0f s (the hold time): the routes it gave are removed", now - self._lost_at)

    def tick(self) -> None:
        """Periodic: duplicate MACs whose freeze ran out are decided again; the hold timer; the
        sessions asked again (for stats and metrics)."""
        self._apply(self.rib.tick(self.clock()))
        if self._tasks and (self._poll is None or self._poll.done()):
            self._poll = asyncio.get_running_loop().create_task(self.sessions())
        if not self.connected and self._lost_at is not None and not self._cleared:
            self._disconnected("gobgpd does not answer")

    # ---- reading ----------------------------------------------------------------------
    async def sessions(self) -> list[dict[str, Any]]:
        """Each BGP session: neighbor, AS, state, up since, EVPN routes received and accepted."""
        peers: list[dict[str, Any]] = []
        if self.speaker is not None and self.connected:
            try:
                for peer in await self.speaker.peers():
                    state = MessageToDict(peer.state, preserving_proto_field_name=True)
                    timers = MessageToDict(peer.timers.state, preserving_proto_field_name=True)
                    families = [MessageToDict(a.state, preserving_proto_field_name=True) for a in peer.afi_safis]
                    evpn = next((f for f in families if f.get("family", {}).get("afi") == "AFI_L2VPN"), {})
                    peers.append({"address": state.get("neighbor_address", ""), "asn": int(state.get("peer_asn", 0)),
                                  "state": state.get("session_state", "UNKNOWN").lower(),
                                  "uptime": timers.get("uptime"), "received": int(evpn.get("received", 0)),
                                  "accepted": int(evpn.get("accepted", 0))})
            except SpeakerError as e:
                peers.append({"error": str(e)})
        self._peers = peers
        return peers

    async def show(self) -> dict[str, Any]:
        """What `vxland evpn show` prints: the speaker, its sessions, the routes both ways."""
        peers = await self.sessions()
        received = sorted(self.rib.received().values(), key=sort_key)
        announced = sorted((route for route, _ in self._uuids.values()), key=sort_key)
        return {"asn": self.config.asn, "router_id": self.config.router_id, "gobgpd": self.config.gobgpd,
                "api": self.config.api, "connected": self.connected,
                "pid": self.gobgpd.process.pid if self.gobgpd is not None and self.gobgpd.process else None,
                "peers": peers, "announced": [route_row(r) for r in announced],
                "received": [route_row(r) for r in received], "counters": self.stats()}

    def stats(self) -> dict[str, Any]:
        return {"sessions": dict(Counter(p["state"] for p in self._peers if "state" in p)),
                "routes_announced": len(self._uuids), "routes_in_use": len(self.rib.received()),
                **{k: self.counters[k] for k in ("routes_received", "routes_withdrawn", "announced", "withdrawn",
                                                 "resyncs", "resync_corrections", "connections", "gobgpd_restarts",
                                                 "tables_cleared", "static_conflicts", "table_refusals",
                                                 "internal_errors")},
                "ignored": dict(self.ignored), "duplicates": self.rib.duplicates,
                "frozen": len(self.rib.frozen()), "connected": self.connected}

