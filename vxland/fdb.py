"""The forwarding table of one VNI: which MAC lives behind which VTEP, and the flood list.

Theory of operation.  The data path (C or the Python reference) forwards from a
lookup copy of this table and reports *sightings*: a source MAC seen behind the
local TAP or behind a remote VTEP, at most once a second per MAC.  This module
owns the policy and pushes every decision back into the copy through `mirror`:

* a new MAC is learned, unless the VNI holds `max_learned` entries already;
* a learned MAC seen elsewhere moves; a static MAC never moves (the data path
  drops frames that claim it from elsewhere) and never ages;
* only *receiving from* a MAC refreshes it (RFC 7348 §4, and the kernel's
  selftest "should age out when it only forwards traffic"); `expire(now)`
  removes entries not refreshed for `ageing` seconds;
* broadcast, multicast and unknown unicast go to the flood list: one copy to
  each remote VTEP (head-end replication).

Time is passed in as `now` (seconds, any monotonic origin); nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Protocol

from .wire import mac_is_learnable, mac_to_str

log = logging.getLogger("vxland.fdb")

DEFAULT_AGEING = 300.0


class LookupMirror(Protocol):
    """The data path's copy of one VNI's table (see datapath.NetworkView)."""

    def set_entry(self, mac: bytes, vtep: str | None, static: bool) -> None: ...
    def delete_entry(self, mac: bytes) -> None: ...
    def set_flood(self, remotes: list[str]) -> None: ...
    def set_full(self, full: bool) -> None: ...


@dataclass
class FdbEntry:
    mac: bytes
    vtep: str | None          # remote VTEP address; None: behind the local TAP
    static: bool
    updated: float            # when it was learned or last refreshed

    @property
    def local(self) -> bool:
        return self.vtep is None


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
                 family: int | None = None) -> None:
        self.vni = vni
        self.family = family                  # the underlay's IP version: VTEPs must be of it
        self.port = port                      # the local TAP's name, shown for local entries
        self.ageing = ageing
        self.max_learned = max_learned
        self.learn_refused = 0                # sightings not learned because the table was full
        self._mirror = mirror
        self._entries: dict[bytes, FdbEntry] = {}
        self._remotes: list[str] = []
        self._group: str | None = None

    # ---- learning ---------------------------------------------------------
    def see(self, mac: bytes, vtep: str | None, now: float) -> None:
        """A sighting from the data path: `mac` sent a frame from `vtep` (None: the TAP)."""
        if not mac_is_learnable(mac):
            return
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
        if self.max_learned is not None and self.learned_count() >= self.max_learned:
            self.learn_refused += 1
            self._mirror.set_full(True)
            return
        self._entries[mac] = FdbEntry(mac, vtep, False, now)
        self._mirror.set_entry(mac, vtep, False)
        self._update_full()
        log.debug("vni %d: learned %s behind %s", self.vni, mac_to_str(mac), self._where(vtep))

    def expire(self, now: float) -> list[FdbEntry]:
        """Remove learned entries not refreshed for `ageing` seconds; return them."""
        aged = [e for e in self._entries.values()
                if not e.static and now - e.updated >= self.ageing]
        for entry in aged:
            del self._entries[entry.mac]
            self._mirror.delete_entry(entry.mac)
            log.debug("vni %d: %s behind %s aged out", self.vni, mac_to_str(entry.mac),
                      self._where(entry.vtep))
        if aged:
            self._update_full()
        return aged

    # ---- configuration ------------------------------------------------------
    def add_static(self, mac: bytes, vtep: str, now: float) -> FdbEntry:
        """A permanent entry: never ages, never moves."""
        if not mac_is_learnable(mac):
            raise ValueError(f"{mac_to_str(mac)} is a multicast or zero MAC: not a station address")
        entry = FdbEntry(mac, parse_vtep(vtep, self.family), True, now)
        self._entries[mac] = entry
        self._mirror.set_entry(mac, entry.vtep, True)
        self._update_full()
        log.info("vni %d: static %s behind %s", self.vni, mac_to_str(mac), entry.vtep)
        return entry

    def delete(self, mac: bytes) -> bool:
        entry = self._entries.pop(mac, None)
        if entry is None:
            return False
        self._mirror.delete_entry(mac)
        self._update_full()
        log.info("vni %d: deleted %s", self.vni, mac_to_str(mac))
        return True

    def set_group(self, group: str | None) -> None:
        """The multicast group that BUM traffic goes to besides the flood list (RFC 7348 §4.2)."""
        self._group = group
        self._mirror.set_flood(self._flood())
        if group:
            log.info("vni %d: BUM to group %s", self.vni, group)

    def _flood(self) -> list[str]:
        return self._remotes + ([self._group] if self._group else [])

    def add_remote(self, address: str) -> bool:
        """Append a VTEP to the flood list; False if it was there already."""
        address = parse_vtep(address, self.family)
        if address in self._remotes:
            return False
        self._remotes.append(address)
        self._mirror.set_flood(self._flood())
        log.info("vni %d: flood list + %s", self.vni, address)
        return True

    def remove_remote(self, address: str) -> bool:
        address = parse_vtep(address, self.family)
        if address not in self._remotes:
            return False
        self._remotes.remove(address)
        self._mirror.set_flood(self._flood())
        log.info("vni %d: flood list - %s", self.vni, address)
        return True

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
        return sum(1 for e in self._entries.values() if not e.static)

    def _update_full(self) -> None:
        if self.max_learned is not None:
            self._mirror.set_full(self.learned_count() >= self.max_learned)

    def _where(self, vtep: str | None) -> str:
        return vtep if vtep is not None else f"port {self.port or 'local'}"
