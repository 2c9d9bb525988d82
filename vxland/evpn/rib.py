"""What BGP says and what this VTEP announces, and the decisions between them (sans-IO).

`EvpnRib` takes the routes that gobgpd reports (`receive`, `withdraw`, `resync`) and the MACs
that the forwarding tables hold behind the local TAP (`set_local`), and answers with
`Action`s for the I/O shell (service.py) to carry out: forwarding entries and neighbours to
install or remove, flood lists to set, routes to announce or withdraw.  Per VNI and MAC:

* the remote claims are one per VTEP (its MAC-only and MAC+IP routes together), ordered by
  MAC-mobility sequence number, highest first, then by VTEP address, lowest first (every
  VTEP's route has an RD of its own, so gobgpd reports each as a separate best path);
* a MAC behind the local TAP is announced -- a MAC-only route and one MAC+IP route per
  address -- with sequence number 0 if nobody else claims it, else the highest claimed + 1
  (it moved here: RFC 7432 §15);
* a remote claim that beats ours (a higher sequence: the MAC moved away; or an equal one
  from a lower VTEP address) makes us withdraw ours and install the remote entry;
* a static local MAC (configured, or a container that the CNI plugin attached) is announced
  *sticky* (RFC 7432 §15.2): it does not move, whatever others claim; a sticky remote claim
  is not taken over by a MAC merely seen behind the TAP;
* sequence numbers are 32 bits and do not wrap: one claimed at 0xFFFFFFFF cannot be
  outbid, so a MAC that appears here is announced at that number too and the tie goes to
  the lowest VTEP address, as for any tie (RFC 7432 §15 defines no wrap-around; FRR's
  increment would wrap to 0 and lose; a wrapped 0 would flap for ever);
* a MAC that moves here more than `dup_moves` times within `dup_window` seconds is a
  duplicate (two hosts claiming it, RFC 7432 §15.1): it is frozen -- no longer announced by
  us -- until it has been quiet for a window, and logged;
* the flood list of a VNI is every VTEP with a type-3 route for it.

Time is passed in as `now`; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import logging
from collections import deque
from dataclasses import dataclass, field

from ..datapath import MAX_FLOOD
from ..wire import mac_to_str
from .route_types import FloodRoute, MacRoute, Route

log = logging.getLogger("vxland.evpn")

MAX_SEQ = 0xFFFFFFFF         # the MAC mobility extended community's 32 bits
RETRY_BATCH = 1024           # refused installs decided again per tick, at most


def _next_seq(seq: int) -> int:
    """One above a claimed sequence number, saturating (see the module's docstring)."""
    return min(seq + 1, MAX_SEQ)


# ---- actions ------------------------------------------------------------------------
@dataclass(frozen=True)
class Announce:
    route: Route


@dataclass(frozen=True)
class Withdraw:
    route: Route


@dataclass(frozen=True)
class InstallMac:
    vni: int
    mac: bytes
    vtep: str


@dataclass(frozen=True)
class RemoveMac:
    vni: int
    mac: bytes


@dataclass(frozen=True)
class InstallIp:
    vni: int
    ip: str
    mac: bytes


@dataclass(frozen=True)
class RemoveIp:
    vni: int
    ip: str


@dataclass(frozen=True)
class SetFlood:
    """The VTEPs that type-3 routes name for `vni`, in address order: all of them, or when
    there are more than FLOOD_SHOWN, the first FLOOD_SHOWN and their number in `total` (the
    flood list holds MAX_FLOOD at most: the rest could never be in it, and sending them with
    every route made each route cost the size of the fabric)."""
    vni: int
    vteps: tuple[str, ...]
    total: int | None = None


Action = Announce | Withdraw | InstallMac | RemoveMac | InstallIp | RemoveIp | SetFlood


def without_floods(actions: list[Action], floods: dict[int, SetFlood]) -> list[Action]:
    """`actions` but their SetFloods, which go into `floods` (the last per VNI): a batch of
    routes sets each flood list once, at its end, not once for every type-3 route in it."""
    for action in actions:
        if isinstance(action, SetFlood):
            floods[action.vni] = action
    return [a for a in actions if not isinstance(a, SetFlood)] if floods else actions


FLOOD_SHOWN = 2 * MAX_FLOOD     # VTEPs a SetFlood names at most: enough to fill the flood list
                                # whatever the configured remotes take (at most MAX_FLOOD of them),
# as long as every VTEP a route names here is one the tables can use: both planes leave out,
# before the RIB, our own address and any the underlay cannot reach (decode, etcd's view).


@functools.lru_cache(maxsize=4096)
def _order(vtep: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(vtep)
    return ip.version, ip.packed


@dataclass
class _Local:
    seq: int
    ips: tuple[str, ...]
    sticky: bool = False


@dataclass(frozen=True)
class _Claim:
    vtep: str
    seq: int
    ips: tuple[str, ...]
    sticky: bool


@dataclass
class _Mac:
    """Everything about one (VNI, MAC)."""
    claims: dict[tuple, MacRoute] = field(default_factory=dict)   # received routes by NLRI key
    local: _Local | None = None                                   # behind our TAP
    announced: dict[str | None, MacRoute] = field(default_factory=dict)  # ours, by IP (None: MAC-only)
    installed: str | None = None                                  # the remote VTEP of our FDB entry
    installed_ips: tuple[str, ...] = ()
    moves: deque = field(default_factory=deque)                   # when it moved here lately
    frozen_until: float | None = None

    def empty(self) -> bool:
        return not (self.claims or self.local or self.announced or self.installed or self.installed_ips
                    or self.moves or self.frozen_until is not None)


class EvpnRib:
    def __init__(self, local: str, dup_moves: int = 5, dup_window: float = 180.0) -> None:
        self.local = local
        self.dup_moves, self.dup_window = dup_moves, dup_window
        self._received: dict[tuple, Route] = {}                  # NLRI key -> what it says now
        self._macs: dict[tuple[int, bytes], _Mac] = {}
        self._flood_keys: dict[int, dict[tuple, str]] = {}       # VNI -> {NLRI key: VTEP}
        self._flood_vteps: dict[int, dict[str, int]] = {}        # VNI -> {VTEP: keys naming it}
        self._flood_order: dict[int, tuple[list, list[str]]] = {}   # VNI -> its VTEPs' sort keys, and them: sorted
        self._flood_set: dict[int, SetFlood] = {}                # what SetFlood last said
        self._vnis: set[int] = set()
        self._retry: set[tuple[int, bytes]] = set()              # installs the tables refused
        self.duplicates = 0                                      # MACs frozen as duplicates

    # ---- networks ---------------------------------------------------------------------
    def add_network(self, vni: int, now: float = 0.0) -> list[Action]:
        """Serve `vni` over EVPN: announce that we take its flooded frames (type 3), and use what
        BGP already says of it."""
        self._vnis.add(vni)
        actions: list[Action] = [Announce(FloodRoute(vni, self.local))]
        actions += self._flood(vni)
        for v, mac in [k for k in self._macs if k[0] == vni]:
            actions += self._decide(v, mac, now)
        return actions

    def remove_network(self, vni: int) -> list[Action]:
        """Stop serving `vni`: withdraw all we announced for it; forget what we installed (its
        table goes with the network)."""
        self._vnis.discard(vni)
        actions: list[Action] = [Withdraw(FloodRoute(vni, self.local))]
        for (v, mac), state in list(self._macs.items()):
            if v == vni:
                actions += [Withdraw(r) for r in state.announced.values()]
                state.announced.clear()
                state.local, state.installed, state.installed_ips = None, None, ()
        self._flood_set.pop(vni, None)
        return actions

    @property
    def vnis(self) -> set[int]:
        return set(self._vnis)

    # ---- what BGP says ----------------------------------------------------------------
    def receive(self, key: tuple, route: Route, now: float) -> list[Action]:
        """The best path for NLRI `key` now says `route` (new, or replacing what it said)."""
        old = self._received.get(key)
        if old == route:
            return []
        actions = self._forget(key, now) if old is not None else []
        self._received[key] = route
        if isinstance(route, FloodRoute):
            self._flood_keys.setdefault(route.vni, {})[key] = route.vtep
            return actions + self._flood(route.vni) if self._flood_add(route.vni, route.vtep) else actions
        self._state(route.vni, route.mac).claims[key] = route
        return actions + self._decide(route.vni, route.mac, now)

    def withdraw(self, key: tuple, now: float) -> list[Action]:
        return self._forget(key, now) if key in self._received else []

    def resync(self, snapshot: dict[tuple, Route], now: float) -> list[Action]:
        """gobgpd's table as a whole (ListPath after a reconnection): withdraw what is gone,
        receive what is new or changed."""
        actions: list[Action] = []
        floods: dict[int, SetFlood] = {}
        for key in [k for k in self._received if k not in snapshot]:
            actions += without_floods(self.withdraw(key, now), floods)
        for key, route in snapshot.items():
            actions += without_floods(self.receive(key, route, now), floods)
        return actions + list(floods.values())

    def clear_received(self, now: float) -> list[Action]:
        """Forget everything BGP said (gobgpd is gone for longer than the hold time)."""
        return self.resync({}, now)

    def _forget(self, key: tuple, now: float) -> list[Action]:
        route = self._received.pop(key)
        if isinstance(route, FloodRoute):
            self._flood_keys.get(route.vni, {}).pop(key, None)
            return self._flood(route.vni) if self._flood_remove(route.vni, route.vtep) else []
        self._state(route.vni, route.mac).claims.pop(key, None)
        return self._decide(route.vni, route.mac, now)

    # A VNI's flood list is every VTEP that a type-3 route names: kept sorted as routes come
    # and go (a VTEP's position found by bisection), not sorted again for every route -- a
    # fabric of 2000 VTEPs sent its routes one by one cost 2000 sorts of 2000.
    def _flood_add(self, vni: int, vtep: str) -> bool:
        """One more route names `vtep`; True if it is new to the VNI's flood list."""
        counts = self._flood_vteps.setdefault(vni, {})
        counts[vtep] = counts.get(vtep, 0) + 1
        if counts[vtep] > 1:
            return False
        keys, vteps = self._flood_order.setdefault(vni, ([], []))
        i = bisect.bisect_left(keys, (_order(vtep), vtep))      # (with the text: _order ignores a
        keys.insert(i, (_order(vtep), vtep))                    # scope id, two spellings one key)
        vteps.insert(i, vtep)
        return True

    def _flood_remove(self, vni: int, vtep: str) -> bool:
        """One route fewer names `vtep`; True if it has left the VNI's flood list."""
        counts = self._flood_vteps.get(vni, {})
        if counts.get(vtep, 0) > 1:
            counts[vtep] -= 1
            return False
        if counts.pop(vtep, None) is None:
            return False
        keys, vteps = self._flood_order[vni]
        i = bisect.bisect_left(keys, (_order(vtep), vtep))
        if i < len(vteps) and vteps[i] == vtep:
            del keys[i], vteps[i]
        return True

    def _flood(self, vni: int) -> list[Action]:
        named = self._flood_order.get(vni, ((), ()))[1]
        action = SetFlood(vni, tuple(named[:FLOOD_SHOWN]), len(named) if len(named) > FLOOD_SHOWN else None)
        if vni not in self._vnis or self._flood_set.get(vni, SetFlood(vni, ())) == action:
            return []
        self._flood_set[vni] = action
        return [action]

    # ---- what the forwarding tables hold ----------------------------------------------
    def set_local(self, vni: int, mac: bytes, present: bool, ips: list[str], now: float,
                  static: bool = False) -> list[Action]:
        """`mac` is (present) or is no longer behind the local TAP of `vni`, with `ips`;
        `static`: a configured entry, announced sticky."""
        if vni not in self._vnis:
            return []
        if not present:
            known = self._macs.get((vni, mac))
            if known is None or known.local is None:    # not here before either: nothing changed
                return []                               # (an entry EVPN itself installed, say)
            known.local = None
            return self._decide(vni, mac, now)
        state = self._state(vni, mac)
        if state.local is None:                     # it appeared here
            best = self._best(state)
            if best is not None:                    # claimed elsewhere: it moved here
                state.moves.append(now)
            state.local = _Local(_next_seq(best.seq) if best is not None else 0, tuple(sorted(ips)), static)
        else:
            state.local.ips, state.local.sticky = tuple(sorted(ips)), static
        return self._decide(vni, mac, now)

    # ---- the decision ---------------------------------------------------------------------
    def _state(self, vni: int, mac: bytes) -> _Mac:
        return self._macs.setdefault((vni, mac), _Mac())

    @staticmethod
    def _best(state: _Mac) -> _Claim | None:
        """The winning remote claim: sticky first, then the highest sequence number, then the
        lowest VTEP address."""
        by_vtep: dict[str, _Claim] = {}
        for route in state.claims.values():
            c = by_vtep.get(route.vtep, _Claim(route.vtep, 0, (), False))
            by_vtep[route.vtep] = _Claim(route.vtep, max(c.seq, route.seq),
                                         tuple(sorted({*c.ips, *([route.ip] if route.ip else [])})),
                                         c.sticky or route.sticky)
        if not by_vtep:
            return None
        return min(by_vtep.values(), key=lambda c: (not c.sticky, -c.seq, _order(c.vtep)))

    def _decide(self, vni: int, mac: bytes, now: float) -> list[Action]:
        state = self._state(vni, mac)
        best = self._best(state)
        self._check_duplicate(vni, mac, state, now)
        local = state.local
        if local is None or state.frozen_until is not None:
            ours = False
        elif local.sticky or best is None:
            ours = True
        elif best.sticky:
            ours = False
        else:
            ours = (local.seq, _neg(self.local)) > (best.seq, _neg(best.vtep))
        actions: list[Action] = []
        # what we announce
        wanted: dict[str | None, MacRoute] = {}
        if ours:
            assert local is not None
            if best is not None and best.seq >= local.seq:
                local.seq = _next_seq(best.seq)     # never announce below a claim we know of
            wanted = {ip: MacRoute(vni, mac, ip, self.local, local.seq, local.sticky) for ip in (None, *local.ips)}
        for ip, route in list(state.announced.items()):
            if ip not in wanted:
                actions.append(Withdraw(route))
                del state.announced[ip]
        for ip, route in wanted.items():
            if state.announced.get(ip) != route:
                actions.append(Announce(route))     # replaces an older sequence number of its NLRI
                state.announced[ip] = route
        # what we install: the winning remote claim, unless the MAC is ours (or frozen here)
        vtep = None
        if best is not None and not ours and (local is None or state.frozen_until is None):
            vtep = best.vtep
            if local is not None:                   # beaten: it lives there now
                state.local = None
                log.info("evpn: vni %d: %s moved to %s (seq %d)", vni, mac_to_str(mac), best.vtep, best.seq)
        if vtep != state.installed:
            actions.append(InstallMac(vni, mac, vtep) if vtep is not None else RemoveMac(vni, mac))
            state.installed = vtep
        ips = best.ips if vtep is not None and best is not None else ()
        actions += [RemoveIp(vni, ip) for ip in state.installed_ips if ip not in ips]
        actions += [InstallIp(vni, ip, mac) for ip in ips if ip not in state.installed_ips]
        state.installed_ips = ips
        if state.empty():
            del self._macs[(vni, mac)]
        return actions

    def _check_duplicate(self, vni: int, mac: bytes, state: _Mac, now: float) -> None:
        while state.moves and now - state.moves[0] > self.dup_window:
            state.moves.popleft()
        if state.frozen_until is not None and now >= state.frozen_until:
            state.frozen_until = None
            state.moves.clear()
            log.info("evpn: vni %d: %s no longer frozen", vni, mac_to_str(mac))
        if state.frozen_until is None and len(state.moves) > self.dup_moves:
            state.frozen_until = now + self.dup_window
            self.duplicates += 1
            log.warning("evpn: vni %d: %s moved here %d times within %.0f s: a duplicate MAC? Not announced "
                        "for %.0f s", vni, mac_to_str(mac), len(state.moves), self.dup_window, self.dup_window)

    def refused(self, action: Action) -> None:
        """The tables refused `action` (a cap, a VTEP they cannot take): it is not installed,
        whatever the decision said, and is decided again at a later tick -- once room is made
        (routes withdrawn, a cap raised) it is installed, not left out for ever."""
        if not isinstance(action, (InstallMac, InstallIp)):
            return
        state = self._macs.get((action.vni, action.mac))
        if state is None:
            return
        if isinstance(action, InstallMac) and state.installed == action.vtep:
            state.installed = None
        elif isinstance(action, InstallIp):
            state.installed_ips = tuple(ip for ip in state.installed_ips if ip != action.ip)
        self._retry.add((action.vni, action.mac))

    def tick(self, now: float) -> list[Action]:
        """MACs whose duplicate freeze ran out, and installs the tables refused (RETRY_BATCH at
        a time), are decided again."""
        actions: list[Action] = []
        for key in list(self._retry)[:RETRY_BATCH]:
            self._retry.discard(key)
            if key in self._macs:
                actions += self._decide(*key, now)
        for (vni, mac), state in list(self._macs.items()):
            if state.frozen_until is not None and now >= state.frozen_until:
                actions += self._decide(vni, mac, now)
        return actions

    # ---- reading ------------------------------------------------------------------------
    def announcements(self) -> list[Route]:
        """Everything we announce now (to add again to a gobgpd that restarted)."""
        routes: list[Route] = [FloodRoute(vni, self.local) for vni in sorted(self._vnis)]
        for state in self._macs.values():
            routes += state.announced.values()
        return routes

    def received(self) -> dict[tuple, Route]:
        return dict(self._received)

    def flood(self, vni: int) -> tuple[str, ...]:
        said = self._flood_set.get(vni)
        return said.vteps if said is not None else ()

    def frozen(self) -> list[tuple[int, bytes]]:
        return [k for k, s in self._macs.items() if s.frozen_until is not None]


def _neg(vtep: str) -> tuple[int, bytes]:
    """Sort key under which a *lower* VTEP address compares greater (it wins a tie)."""
    version, packed = _order(vtep)
    return -version, bytes(255 - b for b in packed)
