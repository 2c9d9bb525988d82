"""The etcd control plane on vxland's event loop (planes.ControlPlane): the I/O shell
around layout.py, blocks.py and the shared RIB.

While the store answers, one "life" runs: a lease for this host's routes (`ttl`) and one
for its address blocks (`block_ttl`), both renewed every third of the shorter TTL; each
served network's addressing checked against the store's (or written, by the first host)
and its blocks claimed; the routes listed whole and the RIB resynchronised with them --
this host's own keys put where missing or on an old lease, and any other key that names
this VTEP deleted (stale, or forged); then one watch on everything under the prefix, and
our announcements and withdrawals sent as puts and deletes, in order.

When the store stops answering, the life ends and another is tried with backoff (said
once, then once a minute; `stats`: connected, retries).  Nothing is flushed meanwhile: the
tables keep their last state, and the next life's resynchronisation corrects them.  A lost
route lease (the store forgot it: a long partition) means a new one and every route put
again.  A lost block lease means the host says so and hands out no address (`networks
show`: state "lost") until it has claimed a block again -- its old one first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import EtcdConfig, NetworkSpec
from ..errors import VxlandError
from ..evpn import rib as R
from ..evpn.route_types import Route
from ..fdb import ForwardingTable
from ..planes import RouteTables, route_row, sort_key
from . import blocks as B
from .layout import Addressing, Keys, owner_of, parse_endpoint, route_value
from .store import KV, Compacted, Event, Store, StoreError
from .view import RouteView

log = logging.getLogger("vxland.etcd")

RETRY_MIN, RETRY_MAX = 0.5, 10.0     # seconds between attempts while the store does not answer
STILL_DOWN_LOG = 60.0                # "still no etcd" at most this often
RELIST_AFTER_DROP = 30.0             # a route dropped at a cap: the store listed again after this (once
RELIST_MAX = 900.0                   #   there is room), doubling up to this while the drops go on
FLUSH = "flush"                      # in the outbox: carry out the pending releases


@dataclass
class Served:
    """One network served over etcd."""
    spec: NetworkSpec
    keys: Keys
    view: RouteView                        # what the store's route keys say
    local: Addressing | None               # what this host's file says (None: the store's)
    addressing: Addressing | None = None   # what the store says
    held: dict[str, Any] = field(default_factory=dict)   # subnet -> the block this host holds in it
    state: str = "claiming"                # claiming | held | lost | exhausted | none | refused
    ready: bool = False                    # set up in this life
    at_start: bool = True                  # served from the start: a contradiction stops vxland


class EtcdService(RouteTables):
    name = "etcd"

    def __init__(self, config: EtcdConfig, local: str, family: int, fatal: Callable[[str], None] = lambda why: None,
                 clock: Callable[[], float] = time.monotonic, store: Store | None = None) -> None:
        super().__init__(local, log, clock)
        self.config = config
        self.family = family
        self.fatal = fatal
        self.store = store or Store([parse_endpoint(e) for e in config.endpoints], *self._tls_files(config))
        self.served: dict[int, Served] = {}
        self.ignored: Counter[str] = Counter()
        self.connected = False
        self.revision = 0
        self._lease = 0
        self._block_lease = 0
        self._block_renewed: float | None = None    # when the block lease was last known alive
        self._outbox: asyncio.Queue | None = None
        self._changed_networks: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._releases: dict[bytes, int | None] = {}   # keys to delete: route keys (None), blocks (their lease)
        self._ours_cache: dict[bytes, bytes] | None = None
        self._resynced_at = 0.0
        self._relist_wait = RELIST_AFTER_DROP
        self._lost_at: float | None = None
        self._logged_down = 0.0
        self.retries = 0

    @staticmethod
    def _tls_files(config: EtcdConfig) -> tuple[bytes | None, bytes | None, bytes | None]:
        """Read now, while vxland may still read root's files; a clear line if it cannot."""
        out = []
        for what, path in (("ca", config.ca), ("cert", config.cert), ("key", config.key)):
            if path is None:
                out.append(None)
                continue
            try:
                with open(path, "rb") as f:
                    out.append(f.read(1 << 20))
            except OSError as e:
                raise VxlandError(f"etcd: cannot read {what} {path}: {e.strerror}") from None
        return out[0], out[1], out[2]

    # ---- ControlPlane --------------------------------------------------------------
    def serves(self, spec: NetworkSpec) -> bool:
        return spec.etcd

    async def start(self) -> None:
        self._outbox = asyncio.Queue()
        self._changed_networks = asyncio.Event()
        self._task = asyncio.create_task(self._session(), name="etcd session")
        for served in self.served.values():
            served.at_start = True

    async def stop(self) -> None:
        """Our routes withdrawn at once: the route lease revoked takes every key of ours with it
        (the blocks stay, on their own lease, for this host's next start)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._lease and self.connected:
            try:
                await asyncio.wait_for(self.store.revoke(self._lease), 3.0)
            except (StoreError, asyncio.TimeoutError) as e:
                log.warning("etcd: withdrawing at stop: %s (the routes go when their lease runs out, in %d s)",
                            e, self.config.ttl)
        await self.store.close()

    def add_network(self, spec: NetworkSpec, table: ForwardingTable, index: int) -> None:
        keys = Keys(self.config.prefix, spec.vni)
        self.served[spec.vni] = Served(spec, keys, RouteView(keys, self.local, self.family, spec.max_evpn),
                                       Addressing.from_spec(spec), at_start=self._task is None)
        self._serve_table(spec.vni, table)
        if self._changed_networks is not None:
            self._changed_networks.set()
        log.info("etcd: VNI %d served through %s", spec.vni, self.config.prefix)

    def remove_network(self, vni: int) -> None:
        """Our routes for `vni` deleted, and its blocks released (if still ours: a conditional
        delete) -- kept as pending until the store has done it, across outages."""
        served = self.served.get(vni)
        if served is not None:
            for key in self._ours():
                if key.startswith(served.keys.routes):
                    self._releases[key] = None
            for block in served.held.values():
                self._releases[served.keys.block(block)] = self._block_lease
        self._unserve_table(vni)                    # (its withdrawals find no network: the releases say it)
        self.served.pop(vni, None)
        if self._outbox is not None:
            self._outbox.put_nowait(FLUSH)

    def tick(self) -> None:
        self._apply(self.rib.tick(self.clock()))
        dropped = [s.view for s in self.served.values() if s.view.dropped]
        if not dropped:
            self._relist_wait = RELIST_AFTER_DROP
        elif any(v.has_room() for v in dropped) and self.connected and self._changed_networks is not None \
                and time.monotonic() - self._resynced_at >= self._relist_wait:
            self._relist_wait = min(RELIST_MAX, self._relist_wait * 2)    # a forger filling the cap for ever
            self._changed_networks.set()            # routes dropped, and room since: list the store again

    def addresses(self, vni: int) -> dict[str, Any]:
        """What the CNI plugin hands out on this host: the blocks held, or why there are none."""
        served = self.served.get(vni)
        if served is None:
            return {}
        state = served.state
        if state == "held" and (self._block_renewed is None
                                or time.monotonic() - self._block_renewed > self.config.block_ttl - self.config.ttl):
            state = "lost"                              # not renewed for longer than its lease: maybe gone
        rows = []
        if state == "held" and served.addressing is not None:
            for subnet, length in served.addressing.subnets:
                block = served.held.get(str(subnet))
                if block is not None:
                    first, last = B.usable(block, subnet)
                    rows.append({"subnet": str(subnet), "block": str(block), "first": first, "last": last})
        return {"state": state, "blocks": rows}

    # ---- RouteTables: what the RIB wants sent ------------------------------------------
    def _send_action(self, action: R.Announce | R.Withdraw) -> None:
        self._ours_cache = None
        if self._outbox is not None:
            self._outbox.put_nowait(action)

    # ---- the session -------------------------------------------------------------------
    async def _session(self) -> None:
        delay = RETRY_MIN
        while True:
            connections = self.counters["connections"]
            try:
                await self._life()
            except StoreError as e:
                self._disconnected(str(e))
            except Exception:                          # a bug: counted, logged, and tried again
                self.counters["internal_errors"] += 1
                log.exception("etcd: internal error in the session with the store")
                self._disconnected("internal error")
            if self.counters["connections"] != connections:      # it had answered: try again soon
                delay = RETRY_MIN
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)

    def _disconnected(self, why: str) -> None:
        now = time.monotonic()
        self.retries += 1
        if self.connected or self._lost_at is None:
            log.warning("etcd: %s; the tables keep their state, retrying with backoff (up to %.0f s)", why, RETRY_MAX)
            self._lost_at = self._logged_down = now
        elif now - self._logged_down >= STILL_DOWN_LOG:
            log.warning("etcd: still no store after %.0f s (%d attempts): %s", now - self._lost_at, self.retries, why)
            self._logged_down = now
        self.connected = False
        for served in self.served.values():
            served.ready = False

    async def _life(self) -> None:
        assert self._outbox is not None and self._changed_networks is not None
        await self._take_leases()
        self.counters["connections"] += 1
        if self._lost_at is not None:
            log.warning("etcd: the store answers again (%s) after %.1f s; resynchronising", self.store.endpoint,
                        time.monotonic() - self._lost_at)
        self.connected, self._lost_at, self.retries = True, None, 0
        keeper = asyncio.create_task(self._keep_alive(), name="etcd leases")    # for the whole life
        try:
            while True:
                self._changed_networks.clear()
                await self._flush_releases()
                for served in list(self.served.values()):
                    if not served.ready and self.served.get(served.spec.vni) is served:
                        await self._set_up(served)
                await self._resync()
                tasks = [asyncio.create_task(self._watch(), name="etcd watch"),
                         asyncio.create_task(self._send(), name="etcd announcements"),
                         asyncio.create_task(self._changed_networks.wait(), name="etcd networks")]
                try:
                    done, _ = await asyncio.wait(tasks + [keeper], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                for task in done:
                    if task.cancelled():                 # (a call cut short by a fail-over)
                        raise StoreError(f"{task.get_name()} ended")
                    if task.exception() is not None:
                        raise task.exception()           # type: ignore[misc]
                    if task is keeper:
                        raise StoreError("lease renewals ended")
                # a network was added, a block lost, routes dropped: set up, list again, watch
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _take_leases(self) -> None:
        """The route lease and the block lease: still alive, or new ones (said, and counted)."""
        if not self._lease or await self.store.keep_alive(self._lease) <= 0:
            if self._lease:
                self.counters["lease_losses"] += 1
                log.error("etcd: the store lost this host's route lease (cut off longer than %d s?): "
                          "every route is written again", self.config.ttl)
            self._lease = await self.store.grant(self.config.ttl)
        if not self._block_lease or await self.store.keep_alive(self._block_lease) <= 0:
            if self._block_lease:
                self.counters["block_lease_losses"] += 1
                log.error("etcd: the store lost this host's block lease: no addresses are handed out until a "
                          "block is claimed again")
                for served in self.served.values():
                    served.state = "lost"
            self._block_lease = await self.store.grant(self.config.block_ttl)
        self._block_renewed = time.monotonic()

    async def _flush_releases(self) -> None:
        """Delete what is pending: our route keys of removed networks, and their blocks if still
        on our block lease (never a block another host claimed since)."""
        for key, lease in list(self._releases.items()):
            if lease is None:
                await self.store.delete(key)
            elif lease == self._block_lease:
                await self.store.delete_if_lease(key, lease)
            if self._releases.get(key, -1) == lease:    # (a block on an older lease: not ours to delete;
                del self._releases[key]                 # a newer release of the key meanwhile: kept)

    # ---- addressing and blocks -------------------------------------------------------
    async def _set_up(self, served: Served) -> None:
        vni, keys = served.spec.vni, served.keys
        first, served.at_start = served.at_start, False   # only the first set-up may stop vxland
        kv = await self.store.get(keys.config)
        if kv is None and served.local is not None:
            kv = await self.store.create(keys.config, served.local.to_json())
            if kv is None:
                log.info("etcd: VNI %d: the store had no addressing; written: %s", vni, served.local.describe())
                kv = KV(keys.config, served.local.to_json(), 0, 0)
        if kv is None:
            served.addressing, served.state, served.ready = None, "none", True
            log.warning("etcd: VNI %d: no subnets in the store (%s) nor in the file: no address block is "
                        "claimed, so the CNI plugin needs ranges of its own", vni, keys.config.decode())
            return
        try:
            stored = Addressing.from_json(kv.value)
        except ValueError as e:
            served.state, served.ready = "refused", True
            log.error("etcd: VNI %d: %s holds no usable addressing (%s): no address block is claimed",
                      vni, keys.config.decode(), e)
            return
        if served.local is not None and served.local != stored:
            served.state, served.ready = "refused", True
            why = (f"etcd: VNI {vni}: the store says {stored.describe()} ({keys.config.decode()}), this host's "
                   f"configuration says {served.local.describe()}: one network, one addressing -- make the file "
                   "agree, or leave subnets out of it to take the store's")
            if first:
                self.fatal(why)
            else:                                       # a reload's: the daemon runs on, without blocks here
                log.error("%s; no address block is claimed", why)
            return
        served.addressing = stored
        await self._claim(served)
        served.ready = True

    async def _claim(self, served: Served) -> None:
        assert served.addressing is not None
        vni, keys = served.spec.vni, served.keys
        _, listed = await self.store.range(keys.blocks)
        taken: dict[Any, KV] = {}
        owners: dict[Any, str] = {}
        for kv in listed:
            try:
                block = keys.block_of(kv.key)
                taken[block] = kv
                owners[block] = owner_of(kv.value)[0]
            except ValueError:                          # taken all the same, if its key is a block's
                self.ignored["bad block key or value"] += 1
        hint = await self.store.get(keys.hint(self.local))
        previous = list(served.held.values())
        if hint is not None:
            try:
                previous += [B.parse(b) for b in json.loads(hint.value).get("blocks", [])[:4]]
            except (ValueError, AttributeError, TypeError, RecursionError):
                self.ignored["bad hint"] += 1
        value = json.dumps({"vtep": self.local, "host": self.config.host}).encode()
        state = "held"
        for subnet, length in served.addressing.subnets:
            mine = [b for b, vtep in owners.items() if vtep == self.local and b.version == subnet.version
                    and b.prefixlen == length and b.subnet_of(subnet)]
            claimed = None
            for block in mine:                          # ours from before: on the new lease now
                if claimed is None and await self.store.replace(keys.block(block), value, self._block_lease,
                                                                taken[block].mod_revision) is None:
                    claimed = block
                elif claimed is not None:               # a second one in our name: released, if unchanged
                    await self.store.delete_if_lease(keys.block(block), taken[block].lease)
            if claimed is None:
                for block in B.candidates(subnet, length, set(taken), previous):
                    holder = await self.store.create(keys.block(block), value, self._block_lease)
                    if holder is None:
                        claimed = block
                        break
                    self.counters["block_races"] += 1
            if self.served.get(vni) is not served:      # removed meanwhile (a reload): give it back
                if claimed is not None:
                    self._releases[keys.block(claimed)] = self._block_lease
                return
            old = served.held.get(str(subnet))
            if claimed is None:
                state = "exhausted"
                served.held.pop(str(subnet), None)
                log.error("etcd: VNI %d: no free block of /%d left in %s (%d hosts hold one): this host hands "
                          "out no addresses from it", vni, length, subnet, len(taken))
                continue
            served.held[str(subnet)] = claimed
            if old is not None and old != claimed:
                log.error("etcd: VNI %d: the block %s this host held is another host's now (its lease ran out); "
                          "containers here may still have addresses from it; new ones get %s", vni, old, claimed)
            elif old is None:
                first, last = B.usable(claimed, subnet)
                log.info("etcd: VNI %d: this host holds block %s (%s - %s)", vni, claimed, first, last)
        served.state = state
        await self.store.put(keys.hint(self.local),
                             json.dumps({"blocks": [str(b) for b in served.held.values()]}).encode())

    # ---- routes -------------------------------------------------------------------------
    def _ours(self) -> dict[bytes, bytes]:
        """Every key this host should have in the store now, and its value (kept until the RIB
        announces or withdraws something: a forger's keys in our name cost a lookup each)."""
        if self._ours_cache is not None:
            return self._ours_cache
        out = {}
        for route in self.rib.announcements():
            served = self.served.get(route.vni)
            if served is not None:
                out[served.keys.route(route)] = route_value(route, self.config.host or "")
        self._ours_cache = out
        return out

    async def _resync(self) -> None:
        """The RIB made equal to the store's routes; our keys made equal to what we announce."""
        snapshot: dict[bytes, Route] = {}
        stored_ours: dict[bytes, KV] = {}
        revisions = []                                  # the watch starts after the first listing:
        for served in list(self.served.values()):      # what it replays of the later ones is no news
            revision, listed = await self.store.range(served.keys.routes)
            revisions.append(revision)
            used, ours = served.view.snapshot((kv.key, kv.value) for kv in listed)
            snapshot.update(used)
            stored_ours.update((kv.key, kv) for kv in listed if kv.key in ours)
        if not revisions:
            revisions.append(await self.store.revision(self.config.prefix.encode() + b"/vni/"))
        self._apply(self.rib.resync(snapshot, self.clock()))
        while not self._outbox.empty():                 # covered by what follows -- but for withdrawals
            item = self._outbox.get_nowait()            # in a network removed since: released below
            if isinstance(item, R.Withdraw) and item.route.vni not in self.served:
                self._releases[Keys(self.config.prefix, item.route.vni).route(item.route)] = None
        if self._releases:
            self._outbox.put_nowait(FLUSH)
        self._resynced_at = time.monotonic()
        wanted = self._ours()
        for key, value in wanted.items():
            kv = stored_ours.get(key)
            if kv is None or kv.value != value or kv.lease != self._lease:
                await self.store.put(key, value, self._lease)   # (not a revision to watch from: another
                                                                # host's put may come before it)
        for key in stored_ours.keys() - wanted.keys():
            await self.store.delete(key)
            self.counters["stale_deleted"] += 1
            log.warning("etcd: deleted %s: it names this VTEP, which does not announce it (stale, or forged)",
                        key.decode(errors="replace"))
        self.revision = min(revisions)
        self.counters["resyncs"] += 1
        log.info("etcd: synchronised with %s at revision %d: %d routes received, %d announced",
                 self.store.endpoint, self.revision, len(snapshot), len(wanted))

    async def _watch(self) -> None:
        prefix = self.config.prefix.encode() + b"/vni/"
        try:
            async for batch in self.store.watch(prefix, self.revision + 1):
                await self._take(batch)
        except Compacted as e:
            self.counters["compactions"] += 1
            raise StoreError(f"the watch's revision {self.revision + 1} was compacted away ({e}): listing anew") \
                from None

    async def _take(self, batch: list[Event]) -> None:
        now = self.clock()
        vnis = len(self.config.prefix) + len("/vni/")
        for event in batch:
            self.revision = max(self.revision, event.mod_revision)
            try:
                vni = event.key[vnis:].split(b"/", 1)[0]
                served = self.served.get(int(vni)) if vni.isdigit() and len(vni) <= 8 else None
                if served is not None:                  # (looked up per event: a reload may change them)
                    await self._event(served, event, now)
            except StoreError:
                raise
            except Exception:                           # a bug: counted and logged, the next event taken
                self.counters["internal_errors"] += 1
                log.exception("etcd: internal error taking %s", event.key[:200].decode(errors="replace"))

    async def _event(self, served: Served, event: Event, now: float) -> None:
        """One change under a served VNI's keys: a route, or one of our blocks."""
        key = event.key
        if not key.startswith(served.keys.routes):
            if key.startswith(served.keys.blocks):
                await self._block_event(served, event)
            return
        changes, own = served.view.update(key, event.value if event.put else None)
        if own:
            await self._own_key(served, key, event)
        for changed, route in changes:
            if route is not None:
                self.counters["routes_received"] += 1
                self._apply(self.rib.receive(changed, route, now))
            else:
                self.counters["routes_withdrawn"] += 1
                self._apply(self.rib.withdraw(changed, now))

    async def _own_key(self, served: Served, key: bytes, event: Event) -> None:
        """A key naming this VTEP changed: put back if we announce it and it went or changed,
        deleted if we do not (someone else wrote it)."""
        wanted = self._ours().get(key)
        if wanted is None and event.put:
            await self.store.delete(key)
            self.counters["stale_deleted"] += 1
            log.warning("etcd: deleted %s: it names this VTEP, which does not announce it (forged?)",
                        key.decode(errors="replace"))
        elif wanted is not None and (not event.put or event.value != wanted):
            await self.store.put(key, wanted, self._lease)
            self.counters["restored"] += 1

    async def _block_event(self, served: Served, event: Event) -> None:
        try:
            block = served.keys.block_of(event.key)
        except ValueError:
            return
        if block not in served.held.values():
            return
        try:
            ours = event.put and owner_of(event.value)[0] == self.local
        except ValueError:
            ours = False
        if not ours:
            served.state = "lost"
            self.counters["block_losses"] += 1
            log.error("etcd: VNI %d: block %s is no longer this host's (%s): no addresses are handed out until "
                      "one is claimed again", served.spec.vni, block, "deleted" if not event.put else "taken")
            served.ready = False
            assert self._changed_networks is not None
            self._changed_networks.set()

    async def _send(self) -> None:
        assert self._outbox is not None
        while True:
            item = await self._outbox.get()
            if item == FLUSH:                           # a network removed: its keys and blocks
                await self._flush_releases()
                continue
            route = item.route
            served = self.served.get(route.vni)
            if served is None and isinstance(item, R.Announce):
                continue
            key = (served.keys if served else Keys(self.config.prefix, route.vni)).route(route)   # (a withdrawal
            #                                               for a network removed since: its key goes all the same)
            if isinstance(item, R.Announce):
                await self.store.put(key, route_value(route, self.config.host or ""), self._lease)
                self.counters["announced"] += 1
            else:
                await self.store.delete(key)
                self.counters["withdrawn"] += 1

    async def _keep_alive(self) -> None:
        """Both leases renewed every quarter of the route lease's TTL, each renewal given a quarter
        to answer: a member that hangs is left for the next (a fail-over) with half the TTL to go."""
        period = self.config.ttl / 4
        while True:
            await asyncio.sleep(period)
            if await self.store.keep_alive(self._lease, timeout=period) <= 0:
                raise StoreError("the store no longer has this host's route lease")
            if await self.store.keep_alive(self._block_lease, timeout=period) <= 0:
                raise StoreError("the store no longer has this host's block lease")
            self._block_renewed = time.monotonic()

    # ---- reading -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "endpoint": self.store.endpoint, "revision": self.revision,
                "retries": self.retries, "fail_overs": self.store.fail_overs,
                "routes_announced": len(self.rib.announcements()), "routes_in_use": len(self.rib.received()),
                **{k: self.counters[k] for k in ("routes_received", "routes_withdrawn", "announced", "withdrawn",
                                                 "resyncs", "compactions", "connections", "lease_losses",
                                                 "block_lease_losses", "block_losses", "block_races",
                                                 "stale_deleted", "restored", "static_conflicts", "table_refusals",
                                                 "internal_errors")},
                "ignored": dict(sum((s.view.ignored for s in self.served.values()), Counter(self.ignored))),
                "held_back": sum(s.view.held_count for s in self.served.values()),
                "duplicates": self.rib.duplicates,
                "networks": {str(vni): self.addresses(vni) for vni in sorted(self.served)}}

    async def show(self) -> dict[str, Any]:
        received = sorted(self.rib.received().values(), key=sort_key)
        announced = sorted(self.rib.announcements(), key=sort_key)
        return {"endpoints": self.config.endpoints, "prefix": self.config.prefix, "host": self.config.host,
                "ttl": self.config.ttl, "block_ttl": self.config.block_ttl, "pid": os.getpid(),
                "announced": [route_row(r) for r in announced], "received": [route_row(r) for r in received],
                "counters": self.stats()}

