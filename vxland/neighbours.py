"""Which MAC an IP address has, per VNI: what ARP/ND suppression answers from.

The data path reports what ARP and neighbour-discovery frames say (sightings that carry an
IP, native/neigh.c): from remote VTEPs when remote MACs are learned, from the TAP when EVPN
announces local addresses.  Static entries may name an IP too (the config, `vxland fdb add
--ip`, the CNI plugin), and EVPN MAC+IP routes name others.  This table keeps them:

* static and EVPN addresses never age and learning never overwrites them (a frame that
  claims one for another MAC is counted as a conflict, nothing more);
* a learned address is refreshed by its MAC's frames, ages after `ageing` seconds without
  one, and is capped: `max_learned` per VNI (then the data path stops reporting new ones,
  `set_neigh_full`) and MAX_IPS_PER_MAC per MAC, so that one host ARPing random addresses
  cannot fill the table or, with EVPN, have them announced;
* **an address two live MACs claim is answered for by nobody.**  ARP and ND carry no proof:
  a container that sends a reply or a gratuitous ARP with another's address and its own MAC
  looks exactly like a legitimate move.  So a claim for an address held by another MAC that
  still lives (it has an entry in the forwarding table: it sends frames, or is static or
  EVPN's) moves nothing: the address becomes *contested* -- taken out of the data path's
  copy, so that requests for it are flooded again and its real owner answers them itself;
  with EVPN no MAC+IP route names it -- and is counted (`conflicts`).  When all but one
  claimant are gone from the forwarding table, the one left owns it again.  A claim for an
  address whose MAC has gone (a container replaced by another with its address) is a move.
  The kernel's bridge and FRR's duplicate address detection have no such rule; the kernel's
  neigh_suppress answers from whatever the host's ARP table last heard.

Every change goes to the data path's copy through the mirror.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Protocol

from .wire import mac_to_str

log = logging.getLogger("vxland.fdb")

MAX_IPS_PER_MAC = 16          # learned addresses one MAC may hold
MAX_CLAIMANTS = 8             # MACs remembered as claiming one contested address (its holder always)
CONFLICT_LOG_INTERVAL = 10.0  # conflicts are logged as warnings at most this often per VNI


class NeighbourMirror(Protocol):
    def set_neighbour(self, ip: str, mac: bytes) -> None: ...
    def delete_neighbour(self, ip: str) -> None: ...
    def set_neigh_full(self, full: bool) -> None: ...


@dataclass
class Neighbour:
    ip: str
    mac: bytes
    kind: str                 # "learned", "static" or "evpn"
    updated: float
    claimants: dict[bytes, float] | None = None    # contested: MAC -> when it last claimed the address

    @property
    def static(self) -> bool:
        """Neither aged nor overwritten by learning (static and EVPN ones)."""
        return self.kind != "learned"

    @property
    def contested(self) -> bool:
        return self.claimants is not None


def parse_ip(text: str) -> str:
    """A host address in canonical form; ValueError with a clear message."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    if ip.is_multicast or ip.is_unspecified or text == "255.255.255.255":
        raise ValueError(f"{text} cannot be a host's address (multicast, broadcast or unspecified)")
    return str(ip)


class NeighbourTable:
    def __init__(self, vni: int, mirror: NeighbourMirror, ageing: float, max_learned: int | None,
                 live: Callable[[bytes], bool] = lambda mac: True, max_evpn: int | None = None) -> None:
        self.vni = vni
        self.ageing = ageing
        self.max_learned = max_learned
        self.max_evpn = max_evpn
        self.refused = 0              # learned addresses not taken: the VNI or the MAC had all it may
        self.evpn_refused = 0         # EVPN addresses not taken: the VNI had max_evpn
        self.conflicts = 0            # claims of an address another live MAC (or a static/EVPN entry) holds
        self._mirror = mirror
        self._live = live             # does this MAC still have a forwarding entry?
        self._by_ip: dict[str, Neighbour] = {}
        self._by_mac: dict[bytes, set[str]] = {}   # what each MAC is answered for (contested ones not)
        self._learned = 0             # learned addresses, contested ones included
        self._evpn = 0
        self._full = False
        self._contested = 0           # addresses contested now
        self._claims: Counter[bytes] = Counter()   # contested addresses each MAC claims
        self._warned_at = float("-inf")
        self._unwarned = 0

    def _put(self, n: Neighbour) -> None:
        old = self._by_ip.get(n.ip)
        if old is not None:
            self._drop_index(old)
        self._by_ip[n.ip] = n
        self._by_mac.setdefault(n.mac, set()).add(n.ip)
        self._mirror.set_neighbour(n.ip, n.mac)

    def _remove(self, n: Neighbour) -> None:
        del self._by_ip[n.ip]
        self._drop_index(n)
        self._evpn -= n.kind == "evpn"
        if n.claimants is not None:
            self._settle(n)
        else:
            self._mirror.delete_neighbour(n.ip)

    def _settle(self, n: Neighbour) -> None:
        """`n` is no longer contested: its claimants let go."""
        assert n.claimants is not None
        for mac in list(n.claimants):
            self._let_go(n, mac)
        n.claimants = None
        self._contested -= 1

    def _let_go(self, n: Neighbour, mac: bytes) -> None:
        """`mac` no longer claims contested `n`."""
        assert n.claimants is not None
        del n.claimants[mac]
        self._claims[mac] -= 1
        if not self._claims[mac]:
            del self._claims[mac]

    def _conflict(self, now: float, text: str, *args) -> None:
        """A conflict, counted; a warning at most every CONFLICT_LOG_INTERVAL (a forger may
        claim many), with how many went unsaid since."""
        self.conflicts += 1
        if now - self._warned_at < CONFLICT_LOG_INTERVAL:
            self._unwarned += 1
            log.debug(text, *args)
            return
        more = f" ({self._unwarned} more conflicts since the last warning)" if self._unwarned else ""
        log.warning(text + more, *args)
        self._warned_at, self._unwarned = now, 0

    def _drop_index(self, n: Neighbour) -> None:
        ips = self._by_mac.get(n.mac)
        if ips is not None:
            ips.discard(n.ip)
            if not ips:
                del self._by_mac[n.mac]

    def _update_full(self) -> None:
        full = self.max_learned is not None and self._learned >= self.max_learned
        if full != self._full:
            self._full = full
            self._mirror.set_neigh_full(full)

    # ---- learning --------------------------------------------------------------------
    def see(self, ip: str, mac: bytes, now: float) -> set[bytes]:
        """The data path saw `mac` say it has `ip`; the MACs whose addresses that changed."""
        known = self._by_ip.get(ip)
        if known is None:
            if (self.max_learned is not None and self._learned >= self.max_learned) \
                    or len(self._by_mac.get(mac, ())) >= MAX_IPS_PER_MAC:
                self.refused += 1
                return set()
            self._put(Neighbour(ip, mac, "learned", now))
            self._learned += 1
            self._update_full()
            log.debug("vni %d: learned %s at %s", self.vni, ip, mac_to_str(mac))
            return {mac}
        if known.static:
            if known.mac != mac:
                self.conflicts += 1
                log.debug("vni %d: %s claims %s, which is %s at %s: ignored", self.vni, mac_to_str(mac), ip,
                          known.kind, mac_to_str(known.mac))
            return set()
        if known.claimants is not None:
            if mac not in known.claimants:          # a new challenger: the holder is never pushed out
                if len(known.claimants) >= MAX_CLAIMANTS or self._claims[mac] >= MAX_IPS_PER_MAC:
                    self.refused += 1
                    return set()
                self._claims[mac] += 1
                self._conflict(now, "vni %d: %s also claims %s, contested", self.vni, mac_to_str(mac), ip)
            known.claimants[mac] = known.updated = now
            return set()
        if known.mac == mac:
            known.updated = now
            return set()
        if not self._live(known.mac):               # its owner is gone: the address moved
            if len(self._by_mac.get(mac, ())) >= MAX_IPS_PER_MAC:
                self.refused += 1
                return set()
            log.debug("vni %d: %s moved from %s to %s", self.vni, ip, mac_to_str(known.mac), mac_to_str(mac))
            self._put(Neighbour(ip, mac, "learned", now))
            return {known.mac, mac}
        if self._claims[mac] >= MAX_IPS_PER_MAC:   # one MAC cannot contest every address
            self.refused += 1
            self.conflicts += 1
            return set()
        self._conflict(now, "vni %d: %s claims %s, which %s holds and still uses: neither is answered for it "
                       "until one of them is gone (a forged ARP/ND, or two hosts with one address)", self.vni,
                       mac_to_str(mac), ip, mac_to_str(known.mac))
        self._contested += 1
        self._claims[known.mac] += 1
        self._claims[mac] += 1
        self._drop_index(known)
        self._mirror.delete_neighbour(ip)
        known.claimants = {known.mac: known.updated, mac: now}
        known.updated = now
        return {known.mac}

    def expire(self, now: float) -> set[bytes]:
        """Remove learned addresses not seen for `ageing` seconds, and settle contested ones
        whose claimants but one are gone; the MACs whose addresses changed."""
        changed: set[bytes] = set()
        for n in [n for n in self._by_ip.values() if not n.static]:
            if now - n.updated >= self.ageing:
                self._remove(n)
                self._learned -= 1
                changed.add(n.mac)
                log.debug("vni %d: %s at %s aged out", self.vni, n.ip, mac_to_str(n.mac))
            elif n.claimants is not None:
                for gone in [mac for mac in n.claimants if not self._live(mac)]:
                    self._let_go(n, gone)           # a claimant that left lets go of its claim
                left = list(n.claimants)
                if len(left) == 1 and len(self._by_mac.get(left[0], ())) >= MAX_IPS_PER_MAC:
                    left = []                       # it holds all it may: the address is let go
                if len(left) == 1:
                    self._settle(n)
                    n.mac = left[0]
                    self._put(n)
                    changed.add(n.mac)
                    log.info("vni %d: %s is %s's again: the other claimants are gone", self.vni, n.ip,
                             mac_to_str(n.mac))
                elif not left:
                    self._remove(n)
                    self._learned -= 1
        self._update_full()
        return changed

    def set_limits(self, ageing: float, max_learned: int | None, max_evpn: int | None) -> None:
        self.ageing, self.max_learned, self.max_evpn = ageing, max_learned, max_evpn
        self._update_full()

    # ---- configured and EVPN addresses -------------------------------------------------
    def add_static(self, ip: str, mac: bytes, now: float) -> set[bytes]:
        """`mac` has `ip`, as configured: the MACs whose addresses that changed."""
        return self._set(Neighbour(ip, mac, "static", now))

    def add_evpn(self, ip: str, mac: bytes, now: float) -> set[bytes]:
        """A MAC+IP route says `mac` has `ip`: it wins over what was learned, not over static.
        ValueError once the VNI holds `max_evpn` of them."""
        known = self._by_ip.get(ip)
        if known is not None and known.kind == "static":
            return set()
        if (known is None or known.kind != "evpn") and self.max_evpn is not None and self._evpn >= self.max_evpn:
            self.evpn_refused += 1
            raise ValueError(f"VNI {self.vni}: EVPN gives more than {self.max_evpn} addresses (max_evpn)")
        return self._set(Neighbour(ip, mac, "evpn", now))

    def delete_evpn(self, ip: str) -> None:
        known = self._by_ip.get(ip)
        if known is not None and known.kind == "evpn":
            self._remove(known)

    def clear_evpn(self) -> None:
        for n in [n for n in self._by_ip.values() if n.kind == "evpn"]:
            self._remove(n)

    def _set(self, n: Neighbour) -> set[bytes]:
        known = self._by_ip.get(n.ip)
        changed = {n.mac}
        if known is not None:
            if not known.static:
                self._learned -= 1
            if known.claimants is not None:
                changed |= set(known.claimants)
                self._settle(known)
            else:
                changed.add(known.mac)
            self._evpn -= known.kind == "evpn"
        self._evpn += n.kind == "evpn"
        self._put(n)
        self._update_full()
        return changed

    def forget_mac(self, mac: bytes) -> None:
        """A static MAC entry went: the static addresses it had go with it."""
        for ip in list(self._by_mac.get(mac, ())):
            if self._by_ip[ip].kind == "static":
                self._remove(self._by_ip[ip])

    # ---- reading -------------------------------------------------------------------------
    def ips_of(self, mac: bytes) -> list[str]:
        """The addresses `mac` is answered for (and, with EVPN, announced with)."""
        ips = self._by_mac.get(mac)
        if not ips:
            return []
        return sorted(ips, key=lambda ip: ipaddress.ip_address(ip).packed.rjust(16, b"\0"))

    def lookup(self, ip: str) -> Neighbour | None:
        return self._by_ip.get(ip)

    def contested(self) -> int:
        return self._contested

    def __len__(self) -> int:
        return len(self._by_ip)
