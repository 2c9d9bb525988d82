"""What one VNI's route keys in the store say, as RIB input (sans-IO).

Anyone with write access to the store can write a key; TLS client certificates (and etcd's
RBAC, if the operator adds it) decide who has that.  What vxland adds on top, as it does for
BGP routes:

* keys are parsed as hostile (layout.parse_route): what does not parse is ignored, counted
  by why, and whatever that key said before is withdrawn;
* keys naming this VTEP are not routes from others: the service keeps them equal to what it
  announces (it deletes the rest);
* a MAC route counts only while its VTEP is a member of the VNI -- has a flood route (type 3)
  in the store, which a host writes on its own lease.  A MAC route naming a VTEP that is not
  (a host gone, or an address someone made up) is held back, not installed; it is used if
  that VTEP's flood route appears, and withdrawn again when it goes.  What is held back is
  bounded (`cap`, counted when reached: `dropped` then asks the service to list the store
  again later, so that a route dropped here is not lost for good), and so are the MAC routes
  used (twice `cap`: a MAC with an address is two routes);
* the RIB then applies EVPN's rules (mobility sequence numbers, sticky static MACs,
  duplicate detection) and the forwarding table its caps (max_evpn, ENTRY_VTEPS).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from ..evpn.route_types import FloodRoute, MacRoute, Route
from .layout import Keys, parse_route

Key = bytes


class RouteView:
    def __init__(self, keys: Keys, local: str, family: int, cap: int) -> None:
        self.keys = keys
        self.local = local
        self.family = family
        self.cap = cap
        self.members: dict[str, Key] = {}                 # VTEP -> its flood route's key
        self.used: dict[Key, Route] = {}                  # what the RIB has from us
        self.held: dict[str, dict[Key, MacRoute]] = {}    # VTEP (not a member) -> its MAC routes
        self.held_count = 0
        self.used_macs = 0
        self.dropped = False                              # a route was dropped at a cap: list again
        self.ignored: Counter[str] = Counter()

    def snapshot(self, listed: Iterable[tuple[Key, bytes]]) -> tuple[dict[Key, Route], dict[Key, bytes]]:
        """The whole prefix, listed: (what the RIB should hold, the keys that name this VTEP)."""
        self.members.clear()
        self.used.clear()
        self.held.clear()
        self.held_count = self.used_macs = 0
        self.dropped = False
        ours: dict[Key, bytes] = {}
        routes: dict[Key, Route] = {}
        for key, value in listed:
            parsed = parse_route(self.keys, key, value, self.family)
            if parsed.route is None:
                self.ignored[parsed.ignored or "?"] += 1
            elif parsed.route.vtep == self.local:
                ours[key] = value
            else:
                routes[key] = parsed.route
                if isinstance(parsed.route, FloodRoute):
                    self.members[parsed.route.vtep] = key
        for key, route in routes.items():
            if isinstance(route, FloodRoute):
                self.used[key] = route
            elif route.vtep in self.members:
                self._use(key, route)
            else:
                self._hold(key, route)
        return dict(self.used), ours

    def update(self, key: Key, value: bytes | None) -> tuple[list[tuple[Key, Route | None]], bool]:
        """A key put (`value`) or deleted (None): ([(key, route to receive, or None: withdraw)],
        whether the key names this VTEP)."""
        parsed = parse_route(self.keys, key, value, self.family)
        if parsed.route is None:
            self.ignored[parsed.ignored or "?"] += 1
            meant = parse_route(self.keys, key, None, self.family).route      # a good key, a bad value
            return (self._forget(key, meant.vtep) if meant is not None else []), False
        route = parsed.route
        if route.vtep == self.local:
            return [], True
        if value is None:
            return self._forget(key, route.vtep), False
        if isinstance(route, FloodRoute):
            out: list[tuple[Key, Route | None]] = [(key, route)]
            self.used[key] = route
            if route.vtep not in self.members:
                self.members[route.vtep] = key
                released = self.held.pop(route.vtep, {})
                self.held_count -= len(released)
                for held_key, held in released.items():
                    if self._use(held_key, held):
                        out.append((held_key, held))
            return out, False
        assert isinstance(route, MacRoute)
        if route.vtep in self.members:
            return ([(key, route)] if self._use(key, route) else []), False
        out = [(key, None)] if self._unuse(key) is not None else []
        self._hold(key, route)
        return out, False

    def has_room(self) -> bool:
        """Is there room now for a route dropped at a cap?  (Never with a cap of 0: nothing to drop.)"""
        return self.cap > 0 and (self.held_count < self.cap or self.used_macs < 2 * self.cap)

    def _use(self, key: Key, route: MacRoute) -> bool:
        if key not in self.used:
            if self.used_macs >= 2 * self.cap:
                self.ignored["cap"] += 1
                self.dropped = True
                return False
            self.used_macs += 1
        self.used[key] = route
        return True

    def _unuse(self, key: Key) -> Route | None:
        route = self.used.pop(key, None)
        if isinstance(route, MacRoute):
            self.used_macs -= 1
        return route

    def _forget(self, key: Key, vtep: str) -> list[tuple[Key, Route | None]]:
        route = self._unuse(key)
        if route is None:
            routes = self.held.get(vtep, {})
            if routes.pop(key, None) is not None:
                self.held_count -= 1
                if not routes:
                    del self.held[vtep]
            return []
        out: list[tuple[Key, Route | None]] = [(key, None)]
        if isinstance(route, FloodRoute) and self.members.get(route.vtep) == key:
            del self.members[route.vtep]                  # no longer a member: its MACs held back
            for other, mac in [(k, r) for k, r in self.used.items()
                               if isinstance(r, MacRoute) and r.vtep == route.vtep]:
                self._unuse(other)
                out.append((other, None))
                self._hold(other, mac)
        return out

    def _hold(self, key: Key, route: MacRoute) -> None:
        routes = self.held.setdefault(route.vtep, {})
        if key not in routes:
            if self.held_count >= self.cap:
                self.ignored["held back: cap"] += 1
                self.dropped = True
                if not routes:
                    del self.held[route.vtep]
                return
            self.held_count += 1
        routes[key] = route
