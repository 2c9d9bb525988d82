"""The forwarding table of one VNI: which MAC lives behind which VTEP, and the flood list.

Theory of operation.  The data path (C or the Python reference) forwards from a
lookup copy of this table and reports *sightings*: a source MAC seen behind the
local TAP or behind a remote VTEP, at most once a second per MAC.  This module
owns the policy and pushes every decision back into the copy through `mirror`:

* a new MAC is learned, unless the VNI holds `max_learned` entries already
  (counted as learn_refused; the data path stops reporting new MACs);
* a learned MAC seen elsewhere moves; a static MAC never moves (the data path
  drops frames that claim it from elsewhere) and never ages;
* only *receiving from* a MAC refreshes it (RFC 7348 §4, and the kernel's
  selftest "should age out when it only forwards traffic"); `expire(now)`
  removes entries not refreshed for `ageing` seconds;
* broadcast, multicast and unknown unicast go to the flood list: one copy to
  each remote VTEP (head-end replication);
* with `accept_from = "known"`, the data path takes VXLAN only from the VTEPs
  this table names -- the flood list and static and EVPN entries' VTEPs -- and
  from `accept_prefixes`; this module keeps that set in step, one VTEP at a time
  (a route naming a new VTEP costs the same whatever the set's size);
* EVPN (vxland/evpn) writes entries of its own kind and a flood list of its own
  through `set_evpn_entry`, `delete_evpn_entry`, `set_evpn_flood` and the
  neighbour calls: they never age, learning never moves them (a MAC of one seen
  behind the TAP is taken over: it moved here), a static entry wins over them,
  at most `max_evpn` of them per VNI (a BGP peer cannot grow the tables without
  bound), and a flood-list VTEP that cannot be one here (the other address
  family, multicast) is left out alone, never the whole list; and it hears of
  every change to a MAC through `observer` -- one call, `changed(table, mac)`,
  after which it reads the entry as it now is.

Time is passed in as `now` (seconds, any monotonic origin); nothing here reads a clock.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import logging
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

from collections import Counter

from .datapath import MAX_FLOOD, MAX_PREFIXES, MAX_TRUSTED, EntryKind
from .neighbours import NeighbourTable, parse_ip
from .wire import mac_is_learnable, mac_to_str

log = logging.getLogger("vxland.fdb")

DEFAULT_AGEING = 300.0
DEFAULT_MAX_EVPN = 65536          # EVPN entries per VNI (and EVPN addresses): what BGP may install
ACCEPT_FROM = ("any", "known")


#: VTEPs that static and EVPN entries may name: the trust set holds MAX_TRUSTED, and the flood
#: list's MAX_FLOOD always find room beside them.
ENTRY_VTEPS = MAX_TRUSTED - MAX_FLOOD


#: `fdb.show` with compact=true: {"columns": FDB_COLUMNS, "rows": [[...], ...]} -- two thirds of
#: the bytes of a list of objects, and less time to write and read (the CLI asks for it).  The
#: age is in whole tenths of a second there (an int: cheaper to make and to write than a float).
FDB_COLUMNS = ("mac", "vni", "vtep", "port", "static", "type", "age_tenths", "ips")


def fdb_row(values: list[Any]) -> dict[str, Any]:
    """A compact row as `fdb show --json` has it: "vtep" or "port", "ips" only when known."""
    mac, vni, vtep, port, static, kind, age, ips = values
    row: dict[str, Any] = {"mac": mac, "vni": vni}
    if vtep is None:
        row["port"] = port
    else:
        row["vtep"] = vtep
    row.update(static=static, type=kind, age=age / 10)
    if ips:
        row["ips"] = ips
    return row


def fdb_rows_json(rows: list[list[Any]]) -> str:
    """Compact rows as `fdb show --json` prints them: the list of fdb_row objects, one a line,
    written with the C string encoder and no dict per row (100k rows in about 0.15 s, against
    0.6 s through fdb_row and the JSON encoder a row)."""
    quote, lines = encode_basestring_ascii, []
    for mac, vni, vtep, port, static, kind, age, ips in rows:
        where = f'"vtep": {quote(vtep)}' if vtep is not None else f'"port": {quote(port)}'
        listed = f', "ips": [{", ".join(map(quote, ips))}]' if ips else ""
        lines.append(f'{{"mac": {quote(mac)}, "vni": {int(vni)}, {where}, "static": {"true" if static else "false"}, '
                     f'"type": {quote(kind)}, "age": {float(age) / 10!r}{listed}}}')
    return "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"


class TableFull(ValueError):
    """An entry refused because its kind's cap is reached (counted by the table)."""


class LookupMirror(Protocol):
    """The data path's copy of one VNI's table (see datapath.NetworkView)."""

    def set_entry(self, mac: bytes, vtep: str | None, kind: EntryKind) -> None: ...
    def delete_entry(self, mac: bytes) -> None: ...
    def set_flood(self, remotes: list[str]) -> None: ...
    def set_full(self, full: bool) -> None: ...
    def set_trust(self, on: bool, vteps: list[str], prefixes: list[str]) -> None: ...
    def trust_vtep(self, vtep: str, trusted: bool) -> None: ...
    def set_neighbour(self, ip: str, mac: bytes) -> None: ...
    def delete_neighbour(self, ip: str) -> None: ...
    def set_neigh_full(self, full: bool) -> None: ...


class TableObserver(Protocol):
    """Told that something about `mac` changed -- its entry or its addresses -- in `table`."""

    def changed(self, table: "ForwardingTable", mac: bytes) -> None: ...


@dataclass(slots=True)
class FdbEntry:
    mac: bytes
    vtep: str | None          # remote VTEP address; None: behind the local TAP
    kind: EntryKind
    updated: float            # when it was learned, last refreshed, or set

    @property
    def local(self) -> bool:
        return self.vtep is None

    @property
    def static(self) -> bool:
        return self.kind == EntryKind.static

    @property
    def learned(self) -> bool:
        return self.kind == EntryKind.learned


def parse_prefix(text: str, family: int | None = None) -> str:
    """A prefix of VTEP addresses (`198.51.100.0/24`) in canonical form; ValueError if not one."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an address prefix (want 198.51.100.0/24)") from None
    if family is not None and network.version != family:
        raise ValueError(f"{text} is an IPv{network.version} prefix on an IPv{family} underlay")
    return str(network)


@functools.lru_cache(maxsize=4096)
def parse_vtep(address: str, family: int | None = None) -> str:
    """A remote VTEP's address in canonical form; ValueError with a clear message.  With
    `family` (4 or 6), the address must be of that family: the underlay's.  Remembered (a
    bounded cache): every EVPN route names one of a few VTEPs, and parsing was most of it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IPv4 or IPv6 address") from None
    if family is not None and ip.version != family:
        raise ValueError(f"{address} is an IPv{ip.version} address on an IPv{family} underlay")
    if ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255") \
            or (ip.version == 6 and ip.is_link_local):
        raise ValueError(f"{address} cannot be a VTEP address (multicast, broadcast, link-local or unspecified)")
    return str(ip)


class ForwardingTable:
    """One VNI's MAC -> VTEP table and flood list."""

    def __init__(self, vni: int, mirror: LookupMirror, *, port: str = "",
                 ageing: float = DEFAULT_AGEING, max_learned: int | None = None,
                 family: int | None = None, local: str | None = None, accept_from: str = "any",
                 accept_prefixes: list[str] | tuple[str, ...] = (), max_evpn: int | None = DEFAULT_MAX_EVPN) -> None:
        self.vni = vni
        self.family = family                  # the underlay's IP version: VTEPs must be of it
        self.local = local                    # this VTEP's own address: never a remote
        self.port = port                      # the local TAP's name, shown for local entries
        self.ageing = ageing
        self.max_learned = max_learned
        self.max_evpn = max_evpn
        self.learn_refused = 0                # sightings not learned because the table was full
        self.evpn_refused = 0                 # EVPN entries not installed: max_evpn, or too many VTEPs
        self.flood_refused = 0                # EVPN flood-list VTEPs left out (unusable here, or no room)
        self._flood_left_out: set[str] = set()   # ... now: counted and logged once while they stay out
        self._no_room_logged = 0              # how many lacked room when that was last logged
        self._flood_checked: dict[str, str | ValueError] = {}   # EVPN's last flood list, each checked ...
        self._flood_odd: set[str] = set()     # ... and those of it not usable as they are
        self._pushed_flood: list[str] | None = None   # what the data path was last told
        self._flood_lacking = 0               # EVPN VTEPs left out for room, listed or not
        self._mirror = mirror
        self._entries: dict[bytes, FdbEntry] = {}
        self._learned = 0                     # entries that are learned
        self._evpn = 0                        # entries that EVPN wrote
        self._remotes: list[str] = []         # the flood list that the configuration gives
        self._evpn_wanted: list[str] = []     # the flood list that EVPN's type-3 routes give ...
        self._evpn_remotes: list[str] = []    # ... and what of it fits beside the configured one
        self._group: str | None = None
        self._static_vteps: Counter[str] = Counter()   # static and EVPN entries per VTEP: trusted
        self._trusted: set[str] = set()       # the flood lists' VTEPs and _static_vteps
        self._full = False                    # what the data path was last told (set_full)
        self.observer: TableObserver | None = None
        self.accept_from = "any"
        self.accept_prefixes: list[str] = []
        self.set_acceptance(accept_from, accept_prefixes)
        # IP -> MAC, for ARP/ND suppression; an address's MAC lives while it has an entry here
        self.neighbours = NeighbourTable(vni, mirror, ageing, max_learned, live=self._entries.__contains__,
                                         max_evpn=max_evpn)

    # ---- learning ---------------------------------------------------------
    def see(self, mac: bytes, vtep: str | None, now: float, ip: str | None = None) -> None:
        """A sighting from the data path: `mac` sent a frame from `vtep` (None: the TAP), and, if
        `ip`, said it has that address (ARP or ND, with neighbour suppression on)."""
        if ip is not None:
            if not mac_is_learnable(mac):
                return
            for changed in sorted(self.neighbours.see(ip, mac, now)):
                self._changed(changed)        # (EVPN may replace this MAC's entry here: look after)
        entry = self._entries.get(mac)
        if entry is None and not mac_is_learnable(mac):
            return                            # (a MAC with an entry was learnable, or is static)
        if entry is not None:
            kind = entry.kind
            if kind is EntryKind.static:
                return
            if entry.vtep == vtep:
                entry.updated = now
                return
            if kind is EntryKind.evpn:
                if vtep is not None:
                    return                    # BGP, not learning, says which remote it is behind
                self._forget(mac)             # it moved here: learned, and EVPN announces it
                self._mirror.delete_entry(mac)
                return self.see(mac, vtep, now)
            if log.isEnabledFor(logging.DEBUG):       # its arguments cost more than the move
                log.debug("vni %d: %s moved from %s to %s", self.vni, mac_to_str(mac),
                          self._where(entry.vtep), self._where(vtep))
            entry.vtep, entry.updated = vtep, now
            self._mirror.set_entry(mac, vtep, EntryKind.learned)
            self._changed(mac)
            return
        if self.max_learned is not None and self._learned >= self.max_learned:
            self.learn_refused += 1
            self._set_full(True)
            return
        self._entries[mac] = FdbEntry(mac, vtep, EntryKind.learned, now)
        self._learned += 1
        self._mirror.set_entry(mac, vtep, EntryKind.learned)
        if self.max_learned is not None and self._learned >= self.max_learned:
            self._set_full(True)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("vni %d: learned %s behind %s", self.vni, mac_to_str(mac), self._where(vtep))
        self._changed(mac)

    def expire(self, now: float) -> list[FdbEntry]:
        """Remove learned entries not refreshed for `ageing` seconds; return them."""
        aged = [e for e in self._entries.values()
                if e.learned and now - e.updated >= self.ageing]
        for entry in aged:
            del self._entries[entry.mac]
            self._learned -= 1
            self._mirror.delete_entry(entry.mac)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("vni %d: %s behind %s aged out", self.vni, mac_to_str(entry.mac),
                          self._where(entry.vtep))
        if aged:
            self._update_full()
        for mac in sorted({e.mac for e in aged} | self.neighbours.expire(now)):
            self._changed(mac)
        return aged

    # ---- configuration ------------------------------------------------------
    def add_static(self, mac: bytes, vtep: str | None, now: float, ip: str | None = None) -> FdbEntry:
        """A permanent entry, behind a remote VTEP or (vtep None) behind the local TAP -- a
        container that a CNI plugin attached, say: never ages, never moves, and frames that
        claim it from anywhere else are dropped.  With `ip`, the address it has too."""
        if not mac_is_learnable(mac):
            raise ValueError(f"{mac_to_str(mac)} is a multicast or zero MAC: not a station address")
        entry = FdbEntry(mac, self._remote(vtep) if vtep is not None else None, EntryKind.static, now)
        ip = parse_ip(ip) if ip is not None else None
        if entry.vtep is not None and entry.vtep not in self._static_vteps and len(self._static_vteps) >= ENTRY_VTEPS:
            raise ValueError(f"VNI {self.vni}: static and EVPN entries name more than {ENTRY_VTEPS} VTEPs")
        self._forget(mac)
        self._put_named(entry)
        changed = {mac}
        if ip is not None:
            changed |= self.neighbours.add_static(ip, mac, now)
        log.info("vni %d: static %s behind %s%s", self.vni, mac_to_str(mac), self._where(entry.vtep),
                 f" at {ip}" if ip else "")
        for m in sorted(changed):
            self._changed(m)
        return entry

    def delete(self, mac: bytes) -> bool:
        """Remove the entry of `mac`, whatever its kind (EVPN's come back with the next update)."""
        entry = self._forget(mac)
        if entry is None:
            return False
        self._mirror.delete_entry(mac)
        self._update_full()
        log.info("vni %d: deleted %s", self.vni, mac_to_str(mac))
        self._changed(mac)
        return True

    def _put_named(self, entry: FdbEntry) -> None:
        """A static or EVPN entry into the table, the data path's copy and the trusted VTEPs."""
        self._entries[entry.mac] = entry
        self._evpn += entry.kind == EntryKind.evpn
        self._mirror.set_entry(entry.mac, entry.vtep, entry.kind)
        self._update_full()
        if entry.vtep is not None:
            self._static_vteps[entry.vtep] += 1
            if self._static_vteps[entry.vtep] == 1:
                self._retrust(entry.vtep)

    def _forget(self, mac: bytes) -> FdbEntry | None:
        """Take an entry out of the counts (not out of the data path's copy)."""
        entry = self._entries.pop(mac, None)
        if entry is None:
            return None
        if entry.learned:
            self._learned -= 1
            return entry
        self._evpn -= entry.kind == EntryKind.evpn
        if entry.static:
            self.neighbours.forget_mac(mac)
        if entry.vtep is not None:
            self._static_vteps[entry.vtep] -= 1
            if not self._static_vteps[entry.vtep]:
                del self._static_vteps[entry.vtep]
                self._retrust(entry.vtep)
        return entry

    def _changed(self, mac: bytes) -> None:
        if self.observer is not None:
            self.observer.changed(self, mac)

    # ---- EVPN (vxland/evpn): routes, not learning ----------------------------------
    def set_evpn_entry(self, mac: bytes, vtep: str, now: float) -> bool:
        """`mac` is behind remote `vtep`, as a BGP route says.  It replaces a learned entry (a
        local one too: the route won, the MAC moved away) but not a static one: False then.
        TableFull (counted) past `max_evpn` entries, or past ENTRY_VTEPS VTEPs."""
        vtep = self._remote(vtep)
        entry = self._entries.get(mac)
        if entry is not None and entry.static:
            return False
        if entry is not None and entry.kind == EntryKind.evpn and entry.vtep == vtep:
            return True
        if (entry is None or entry.kind != EntryKind.evpn) and self.max_evpn is not None \
                and self._evpn >= self.max_evpn:
            self.evpn_refused += 1
            raise TableFull(f"VNI {self.vni}: EVPN routes name more than {self.max_evpn} MACs (max_evpn)")
        if vtep not in self._static_vteps and len(self._static_vteps) >= ENTRY_VTEPS:
            self.evpn_refused += 1
            raise TableFull(f"VNI {self.vni}: static and EVPN entries name more than {ENTRY_VTEPS} VTEPs")
        self._forget(mac)
        self._put_named(FdbEntry(mac, vtep, EntryKind.evpn, now))
        log.debug("vni %d: %s behind %s (EVPN)", self.vni, mac_to_str(mac), vtep)
        self._changed(mac)
        return True

    def delete_evpn_entry(self, mac: bytes) -> bool:
        """The route for `mac` was withdrawn: its entry goes, if it is EVPN's."""
        entry = self._entries.get(mac)
        if entry is None or entry.kind != EntryKind.evpn:
            return False
        self._forget(mac)
        self._mirror.delete_entry(mac)
        log.debug("vni %d: %s behind %s withdrawn (EVPN)", self.vni, mac_to_str(mac), entry.vtep)
        self._changed(mac)
        return True

    def set_evpn_flood(self, vteps: list[str], total: int | None = None) -> list[str]:
        """The remote VTEPs that type-3 routes name: flooded to besides the configured ones --
        all of them, or the first of `total` (evpn.rib.SetFlood: the rest cannot fit).  One
        that cannot be a VTEP here, or finds no room (the configured remotes and the group come
        first), is left out -- and only it: the rest always apply, and one left out for room
        comes in once there is.  Every type-3 route sends the list again, so what is left out
        is counted and logged once while it stays out (a line for each unusable VTEP; for want
        of room, a line as their number reaches 1, 2, 4, 8, ...).  Returns the listed VTEPs
        newly left out (flood_refused counts the rises in their number, unlisted ones too)."""
        listed = dict.fromkeys(vteps)
        known, odd = self._flood_checked, self._flood_odd   # each VTEP checked once while listed:
        for v in known.keys() - listed.keys():      # every type-3 route sends the whole list, and
            del known[v]                            # what changes is one route's VTEP
            odd.discard(v)
        for v in listed.keys() - known.keys():
            try:
                known[v] = self._remote(v)
            except ValueError as e:
                known[v] = e
            if known[v] != v:
                odd.add(v)
        if odd:                                     # (rare: not in canonical form, or no VTEP here)
            unusable = {v: known[v] for v in listed if isinstance(known[v], ValueError)}
            usable = list(dict.fromkeys(known[v] for v in listed if not isinstance(known[v], ValueError)))
        else:
            unusable, usable = {}, list(listed)
        self._evpn_wanted = usable
        no_room = self._apply_flood()
        unlisted = max(0, total - len(listed)) if total is not None else 0
        lacking = len(no_room) + unlisted           # (a configured remote EVPN names past the list
        before = self._flood_left_out               # counts here too: off by at most their number)
        self._flood_left_out = set(unusable).union(no_room)
        new = sorted(self._flood_left_out - before)
        newly_unusable = unusable.keys() - before
        for v in newly_unusable:
            log.error("vni %d: EVPN flood-list VTEP left out: %s", self.vni, unusable[v])
        if lacking > self._no_room_logged:
            if lacking >= 2 * self._no_room_logged:
                shown = ", ".join(no_room[:4]) + (f" and {lacking - 4} more" if lacking > 4 else "")
                log.error("vni %d: EVPN names %d remote VTEPs; the flood list has room for %d of them: %d left "
                          "out (%s), counted in flood_refused", self.vni, len(usable) + unlisted,
                          len(self._evpn_remotes), lacking, shown)
                self._no_room_logged = lacking
        elif not lacking and self._no_room_logged:
            log.info("vni %d: every EVPN VTEP is in the flood list again", self.vni)
            self._no_room_logged = 0
        # counted as the number left out for room rises (who they are, past the listed ones,
        # the table is not told), and each unusable VTEP once while it is named
        self.flood_refused += len(newly_unusable) + max(0, lacking - self._flood_lacking)
        self._flood_lacking = lacking
        return new

    def _apply_flood(self) -> list[str]:
        """Push the flood list as it now is -- the configured remotes, EVPN's that fit, the
        group -- and keep the trusted set in step; EVPN's VTEPs that did not fit."""
        configured = set(self._remotes)             # (filter, not a comprehension: the list may be long)
        extra = list(itertools.filterfalse(configured.__contains__, self._evpn_wanted))
        room = max(0, MAX_FLOOD - len(self._remotes) - (1 if self._group else 0))
        old = set(self._flood_remotes())
        self._evpn_remotes = list(filter(configured.__contains__, self._evpn_wanted)) + extra[:room]
        flood = self._flood()
        if flood != self._pushed_flood:             # (a VTEP left out for room changes nothing here)
            self._mirror.set_flood(flood)
            self._pushed_flood = flood
        now = set(self._flood_remotes())
        for vtep in old ^ now:
            self._retrust(vtep)
        if old != now:
            log.info("vni %d: flood list now %s (EVPN: %s)", self.vni, ", ".join(self._flood()) or "empty",
                     ", ".join(self._evpn_remotes) or "none")
        return extra[room:]

    def clear_evpn(self) -> None:
        """Everything EVPN wrote, removed (the network no longer uses EVPN)."""
        for entry in [e for e in self._entries.values() if e.kind == EntryKind.evpn]:
            self.delete_evpn_entry(entry.mac)
        self.neighbours.clear_evpn()
        if self._evpn_wanted or self._flood_left_out or self._flood_lacking:
            self.set_evpn_flood([])
        self._flood_checked, self._flood_odd, self._no_room_logged = {}, set(), 0

    def set_evpn_neighbour(self, ip: str, mac: bytes, now: float) -> None:
        """A MAC+IP route's address (ValueError past max_evpn addresses)."""
        for changed in sorted(self.neighbours.add_evpn(parse_ip(ip), mac, now) - {mac}):
            self._changed(changed)                 # a MAC here that had the address has it no more

    def delete_evpn_neighbour(self, ip: str) -> None:
        self.neighbours.delete_evpn(parse_ip(ip))

    def set_limits(self, ageing: float, max_learned: int | None, max_evpn: int | None = DEFAULT_MAX_EVPN) -> None:
        """New ageing time and caps; entries past a lowered cap stay until they age (or their
        routes go)."""
        self.ageing, self.max_learned, self.max_evpn = ageing, max_learned, max_evpn
        self.neighbours.set_limits(ageing, max_learned, max_evpn)
        self._update_full()
        if max_learned is None:
            self._set_full(False)

    def set_acceptance(self, accept_from: str, prefixes: list[str] | tuple[str, ...] = ()) -> None:
        """Take VXLAN from any VTEP, or only from the ones this table names and `prefixes`."""
        if accept_from not in ACCEPT_FROM:
            raise ValueError(f"accept_from {accept_from!r} is not one of {', '.join(ACCEPT_FROM)}")
        if len(prefixes) > MAX_PREFIXES:
            raise ValueError(f"at most {MAX_PREFIXES} accept_prefixes")
        self.accept_from, self.accept_prefixes = accept_from, [parse_prefix(p, self.family) for p in prefixes]
        self._mirror.set_trust(accept_from == "known", self.trusted(), self.accept_prefixes)
        if accept_from == "known":
            log.info("vni %d: VXLAN taken only from the flood list, static entries' VTEPs%s", self.vni,
                     f" and {', '.join(self.accept_prefixes)}" if self.accept_prefixes else "")

    def set_group(self, group: str | None) -> None:
        """The multicast group that BUM traffic goes to besides the flood list (RFC 7348 §4.2)."""
        if group and not self._group and len(self._remotes) >= MAX_FLOOD:
            raise ValueError(f"VNI {self.vni}: a flood list holds at most {MAX_FLOOD} remotes, the group included")
        self._group = group
        self._apply_flood()
        if group:
            log.info("vni %d: BUM to group %s", self.vni, group)

    def _flood_remotes(self) -> list[str]:
        return self._remotes + list(itertools.filterfalse(set(self._remotes).__contains__, self._evpn_remotes))

    def _flood(self) -> list[str]:
        return self._flood_remotes() + ([self._group] if self._group else [])

    def add_remote(self, address: str) -> bool:
        """Append a VTEP to the flood list; False if it was there already."""
        address = self._remote(address)
        if address in self._remotes:
            return False
        if len(self._remotes) + (1 if self._group else 0) >= MAX_FLOOD:
            raise ValueError(f"VNI {self.vni}: a flood list holds at most {MAX_FLOOD} remotes"
                             + (", the group included" if self._group else ""))
        self._remotes.append(address)
        log.info("vni %d: flood list + %s", self.vni, address)
        left_out = self._apply_flood()                # configured remotes come before EVPN's
        self._retrust(address)
        if left_out:
            log.warning("vni %d: EVPN's %s no longer fit beside the configured flood list", self.vni,
                        ", ".join(left_out))
        return True

    def remove_remote(self, address: str) -> bool:
        address = parse_vtep(address, self.family)
        if address not in self._remotes:
            return False
        self._remotes.remove(address)
        self._apply_flood()
        self._retrust(address)
        log.info("vni %d: flood list - %s", self.vni, address)
        return True

    def _remote(self, address: str) -> str:
        vtep = parse_vtep(address, self.family)
        if vtep == self.local:
            raise ValueError(f"{vtep} is this VTEP's own address (local), not a remote")
        return vtep

    # ---- reading ------------------------------------------------------------
    @property
    def remotes(self) -> list[str]:
        """The configured flood list (`--peer`, the file, `peers add`)."""
        return list(self._remotes)

    @property
    def evpn_remotes(self) -> list[str]:
        """The flood list that EVPN's type-3 routes give."""
        return list(self._evpn_remotes)

    def flood_list(self) -> list[str]:
        """Every remote VTEP flooded to: the configured ones, then EVPN's (not the group)."""
        return self._flood_remotes()

    @property
    def group(self) -> str | None:
        return self._group

    def lookup(self, mac: bytes) -> FdbEntry | None:
        return self._entries.get(mac)

    def entries(self) -> list[FdbEntry]:
        return sorted(self._entries.values(), key=lambda e: e.mac)

    def learned_count(self) -> int:
        return self._learned

    def evpn_count(self) -> int:
        return self._evpn

    def size(self) -> int:
        return len(self._entries)

    def entry_vteps(self) -> set[str]:
        """The VTEPs that static and EVPN entries name."""
        return set(self._static_vteps)

    def trusted(self) -> list[str]:
        """The VTEPs this table names: the flood lists and static and EVPN entries' VTEPs."""
        return sorted(self._trusted)

    def _update_full(self) -> None:
        if self.max_learned is not None:
            self._set_full(self._learned >= self.max_learned)

    def _set_full(self, full: bool) -> None:
        """Tell the data path only when it changes: a full table refuses a sighting per frame."""
        if full != self._full:
            self._full = full
            self._mirror.set_full(full)

    def _retrust(self, vtep: str) -> None:
        """`vtep` may have joined or left the trusted set: tell the data path, if it did and
        trust is on -- that one VTEP, never the whole set again."""
        trusted = vtep in self._static_vteps or vtep in self._remotes or vtep in self._evpn_remotes
        if trusted == (vtep in self._trusted):
            return
        if self.accept_from == "known":             # first: if it fails, the two stay equal
            self._mirror.trust_vtep(vtep, trusted)
        if trusted:
            self._trusted.add(vtep)
        else:
            self._trusted.discard(vtep)

    def _where(self, vtep: str | None) -> str:
        return vtep if vtep is not None else f"port {self.port or 'local'}"
