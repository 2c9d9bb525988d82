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
  this table names -- the flood list and static entries' VTEPs -- and from
  `accept_prefixes`; this module keeps that set in step.

Time is passed in as `now` (seconds, any monotonic origin); nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Protocol

from collections import Counter

from .datapath import MAX_FLOOD, MAX_PREFIXES, MAX_TRUSTED
from .neighbours import NeighbourTable, parse_ip
from .wire import mac_is_learnable, mac_to_str

log = logging.getLogger("vxland.fdb")

DEFAULT_AGEING = 300.0
ACCEPT_FROM = ("any", "known")


class LookupMirror(Protocol):
    """The data path's copy of one VNI's table (see datapath.NetworkView)."""

    def set_entry(self, mac: bytes, vtep: str | None, static: bool) -> None: ...
    def delete_entry(self, mac: bytes) -> None: ...
    def set_flood(self, remotes: list[str]) -> None: ...
    def set_full(self, full: bool) -> None: ...
    def set_trust(self, on: bool, vteps: list[str], prefixes: list[str]) -> None: ...
    def set_neighbour(self, ip: str, mac: bytes) -> None: ...
    def delete_neighbour(self, ip: str) -> None: ...


@dataclass
class FdbEntry:
    mac: bytes
    vtep: str | None          # remote VTEP address; None: behind the local TAP
    static: bool
    updated: float            # when it was learned or last refreshed

    @property
    def local(self) -> bool:
        return self.vtep is None


def parse_prefix(text: str, family: int | None = None) -> str:
    """A prefix of VTEP addresses (`198.51.100.0/24`) in canonical form; ValueError if not one."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an address prefix (want 198.51.100.0/24)") from None
    if family is not None and network.version != family:
        raise ValueError(f"{text} is an IPv{network.version} prefix on an IPv{family} underlay")
    return str(network)


def parse_vtep(address: str, family: int | None = None) -> str:
    """A remote VTEP's address in canonical form; ValueError with a clear message.  With
    `family` (4 or 6), the address must be of that family: the underlay's."""
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
                 accept_prefixes: list[str] | tuple[str, ...] = ()) -> None:
        self.vni = vni
        self.family = family                  # the underlay's IP version: VTEPs must be of it
        self.local = local                    # this VTEP's own address: never a remote
        self.port = port                      # the local TAP's name, shown for local entries
        self.ageing = ageing
        self.max_learned = max_learned
        self.learn_refused = 0                # sightings not learned because the table was full
        self._mirror = mirror
        self._entries: dict[bytes, FdbEntry] = {}
        self._learned = 0                     # entries that are not static
        self._remotes: list[str] = []
        self._group: str | None = None
        self._static_vteps: Counter[str] = Counter()   # static entries per VTEP: trusted
        self.accept_from = "any"
        self.accept_prefixes: list[str] = []
        self.set_acceptance(accept_from, accept_prefixes)
        self.neighbours = NeighbourTable(vni, mirror, ageing, max_learned)   # IP -> MAC, for ARP/ND suppression

    # ---- learning ---------------------------------------------------------
    def see(self, mac: bytes, vtep: str | None, now: float, ip: str | None = None) -> None:
        """A sighting from the data path: `mac` sent a frame from `vtep` (None: the TAP), and, if
        `ip`, said it has that address (ARP or ND, with neighbour suppression on)."""
        if not mac_is_learnable(mac):
            return
        if ip is not None:
            self.neighbours.see(ip, mac, now)
        entry = self._entries.get(mac)
        if entry is not None:
            if entry.static:
                return
            if entry.vtep == vtep:
                entry.updated = now
                return
            log.debug("vni %d: %s moved from %s to %s", self.vni, mac_to_str(mac),
                      self._where(entry.vtep), self._where(vtep))
            entry.vtep, entry.updated = vtep, now
            self._mirror.set_entry(mac, vtep, False)
            return
        if self.max_learned is not None and self._learned >= self.max_learned:
            self.learn_refused += 1
            self._mirror.set_full(True)
            return
        self._entries[mac] = FdbEntry(mac, vtep, False, now)
        self._learned += 1
        self._mirror.set_entry(mac, vtep, False)
        self._update_full()
        log.debug("vni %d: learned %s behind %s", self.vni, mac_to_str(mac), self._where(vtep))

    def expire(self, now: float) -> list[FdbEntry]:
        """Remove learned entries not refreshed for `ageing` seconds; return them."""
        aged = [e for e in self._entries.values()
                if not e.static and now - e.updated >= self.ageing]
        for entry in aged:
            del self._entries[entry.mac]
            self._learned -= 1
            self._mirror.delete_entry(entry.mac)
            log.debug("vni %d: %s behind %s aged out", self.vni, mac_to_str(entry.mac),
                      self._where(entry.vtep))
        if aged:
            self._update_full()
        self.neighbours.expire(now)
        return aged

    # ---- configuration ------------------------------------------------------
    def add_static(self, mac: bytes, vtep: str | None, now: float, ip: str | None = None) -> FdbEntry:
        """A permanent entry, behind a remote VTEP or (vtep None) behind the local TAP -- a
        container that a CNI plugin attached, say: never ages, never moves, and frames that
        claim it from anywhere else are dropped.  With `ip`, the address it has too."""
        if not mac_is_learnable(mac):
            raise ValueError(f"{mac_to_str(mac)} is a multicast or zero MAC: not a station address")
        entry = FdbEntry(mac, self._remote(vtep) if vtep is not None else None, True, now)
        ip = parse_ip(ip) if ip is not None else None
        if entry.vtep is not None and entry.vtep not in self._static_vteps and self._trusted_count() >= MAX_TRUSTED:
            raise ValueError(f"VNI {self.vni}: static entries name more than {MAX_TRUSTED} VTEPs")
        self._forget(mac)
        self._entries[mac] = entry
        self._mirror.set_entry(mac, entry.vtep, True)
        self._update_full()
        if entry.vtep is not None:
            self._static_vteps[entry.vtep] += 1
            if self._static_vteps[entry.vtep] == 1 and entry.vtep not in self._remotes:
                self._update_trust(entry.vtep)
        if ip is not None:
            self.neighbours.add_static(ip, mac, now)
        log.info("vni %d: static %s behind %s%s", self.vni, mac_to_str(mac), self._where(entry.vtep),
                 f" at {ip}" if ip else "")
        return entry

    def delete(self, mac: bytes) -> bool:
        entry = self._forget(mac)
        if entry is None:
            return False
        self._mirror.delete_entry(mac)
        self._update_full()
        log.info("vni %d: deleted %s", self.vni, mac_to_str(mac))
        return True

    def _forget(self, mac: bytes) -> FdbEntry | None:
        """Take an entry out of the counts (not out of the data path's copy)."""
        entry = self._entries.pop(mac, None)
        if entry is None:
            return None
        if not entry.static:
            self._learned -= 1
            return entry
        self.neighbours.forget_mac(mac)
        if entry.vtep is not None:
            self._static_vteps[entry.vtep] -= 1
            if not self._static_vteps[entry.vtep]:
                del self._static_vteps[entry.vtep]
                if entry.vtep not in self._remotes:
                    self._update_trust(entry.vtep)
        return entry

    def set_limits(self, ageing: float, max_learned: int | None) -> None:
        """New ageing time and cap; entries past a lowered cap stay until they age."""
        self.ageing, self.max_learned = ageing, max_learned
        self.neighbours.ageing, self.neighbours.max_learned = ageing, max_learned
        self._update_full()
        if max_learned is None:
            self._mirror.set_full(False)

    def set_acceptance(self, accept_from: str, prefixes: list[str] | tuple[str, ...] = ()) -> None:
        """Take VXLAN from any VTEP, or only from the ones this table names and `prefixes`."""
        if accept_from not in ACCEPT_FROM:
            raise ValueError(f"accept_from {accept_from!r} is not one of {', '.join(ACCEPT_FROM)}")
        if len(prefixes) > MAX_PREFIXES:
            raise ValueError(f"at most {MAX_PREFIXES} accept_prefixes")
        self.accept_from, self.accept_prefixes = accept_from, [parse_prefix(p, self.family) for p in prefixes]
        self._update_trust()
        if accept_from == "known":
            log.info("vni %d: VXLAN taken only from the flood list, static entries' VTEPs%s", self.vni,
                     f" and {', '.join(self.accept_prefixes)}" if self.accept_prefixes else "")

    def set_group(self, group: str | None) -> None:
        """The multicast group that BUM traffic goes to besides the flood list (RFC 7348 §4.2)."""
        if group and not self._group and len(self._remotes) >= MAX_FLOOD:
            raise ValueError(f"VNI {self.vni}: a flood list holds at most {MAX_FLOOD} remotes, the group included")
        self._group = group
        self._mirror.set_flood(self._flood())
        if group:
            log.info("vni %d: BUM to group %s", self.vni, group)

    def _flood(self) -> list[str]:
        return self._remotes + ([self._group] if self._group else [])

    def add_remote(self, address: str) -> bool:
        """Append a VTEP to the flood list; False if it was there already."""
        address = self._remote(address)
        if address in self._remotes:
            return False
        if len(self._flood()) >= MAX_FLOOD:
            raise ValueError(f"VNI {self.vni}: a flood list holds at most {MAX_FLOOD} remotes"
                             + (", the group included" if self._group else ""))
        self._remotes.append(address)
        self._mirror.set_flood(self._flood())
        if address not in self._static_vteps:
            self._update_trust(address)
        log.info("vni %d: flood list + %s", self.vni, address)
        return True

    def remove_remote(self, address: str) -> bool:
        address = parse_vtep(address, self.family)
        if address not in self._remotes:
            return False
        self._remotes.remove(address)
        self._mirror.set_flood(self._flood())
        if address not in self._static_vteps:
            self._update_trust(address)
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
        return list(self._remotes)

    @property
    def group(self) -> str | None:
        return self._group

    def lookup(self, mac: bytes) -> FdbEntry | None:
        return self._entries.get(mac)

    def entries(self) -> list[FdbEntry]:
        return sorted(self._entries.values(), key=lambda e: e.mac)

    def learned_count(self) -> int:
        return self._learned

    def size(self) -> int:
        return len(self._entries)

    def trusted(self) -> list[str]:
        """The VTEPs this table names: the flood list and static entries' VTEPs."""
        return sorted(set(self._remotes) | set(self._static_vteps))

    def _trusted_count(self) -> int:
        return len(set(self._remotes) | set(self._static_vteps))

    def _update_full(self) -> None:
        if self.max_learned is not None:
            self._mirror.set_full(self._learned >= self.max_learned)

    def _update_trust(self, changed: str | None = None) -> None:
        """Push the trusted set to the data path (when it matters: trust is on, and `changed`,
        if given, is a VTEP that joined or left it)."""
        if self.accept_from == "known" or changed is None:
            self._mirror.set_trust(self.accept_from == "known", self.trusted(), self.accept_prefixes)

    def _where(self, vtep: str | None) -> str:
        return vtep if vtep is not None else f"port {self.port or 'local'}"
