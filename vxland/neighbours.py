"""Which MAC an IP address has, per VNI: what ARP/ND suppression answers from.

The data path reports what ARP and neighbour-discovery frames from remote VTEPs say
(sightings that carry an IP, native/neigh.c); static entries may name an IP too (the
config, `vxland fdb add --ip`, the CNI plugin), and EVPN MAC+IP routes name others.  This
table keeps them, by the same rules as the MAC table: learned ones age when not seen for
`ageing` seconds and are capped at `max_learned`; static and EVPN ones never age, and
learning never overwrites them.  Every change goes to the data path's copy through the mirror.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Protocol

from .wire import mac_to_str

log = logging.getLogger("vxland.fdb")


class NeighbourMirror(Protocol):
    def set_neighbour(self, ip: str, mac: bytes) -> None: ...
    def delete_neighbour(self, ip: str) -> None: ...


@dataclass
class Neighbour:
    ip: str
    mac: bytes
    kind: str                 # "learned", "static" or "evpn"
    updated: float

    @property
    def static(self) -> bool:
        """Neither aged nor overwritten by learning (static and EVPN ones)."""
        return self.kind != "learned"


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
    def __init__(self, vni: int, mirror: NeighbourMirror, ageing: float, max_learned: int | None) -> None:
        self.vni = vni
        self.ageing = ageing
        self.max_learned = max_learned
        self.refused = 0
        self._mirror = mirror
        self._by_ip: dict[str, Neighbour] = {}
        self._by_mac: dict[bytes, set[str]] = {}
        self._learned = 0

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
        self._mirror.delete_neighbour(n.ip)

    def _drop_index(self, n: Neighbour) -> None:
        ips = self._by_mac.get(n.mac)
        if ips is not None:
            ips.discard(n.ip)
            if not ips:
                del self._by_mac[n.mac]

    def see(self, ip: str, mac: bytes, now: float) -> bool:
        """The data path saw `mac` say it has `ip`; True if that is news (new, or moved)."""
        known = self._by_ip.get(ip)
        if known is not None:
            if known.static:
                return False
            if known.mac == mac:
                known.updated = now
                return False
            log.debug("vni %d: %s moved from %s to %s", self.vni, ip, mac_to_str(known.mac), mac_to_str(mac))
            self._put(Neighbour(ip, mac, "learned", now))
            return True
        if self.max_learned is not None and self._learned >= self.max_learned:
            self.refused += 1
            return False
        self._put(Neighbour(ip, mac, "learned", now))
        self._learned += 1
        log.debug("vni %d: learned %s at %s", self.vni, ip, mac_to_str(mac))
        return True

    def add_static(self, ip: str, mac: bytes, now: float) -> None:
        self._set(Neighbour(ip, mac, "static", now))

    def add_evpn(self, ip: str, mac: bytes, now: float) -> None:
        """A MAC+IP route says `mac` has `ip`: it wins over what was learned, not over static."""
        known = self._by_ip.get(ip)
        if known is None or known.kind != "static":
            self._set(Neighbour(ip, mac, "evpn", now))

    def delete_evpn(self, ip: str) -> None:
        known = self._by_ip.get(ip)
        if known is not None and known.kind == "evpn":
            self._remove(known)

    def clear_evpn(self) -> None:
        for n in [n for n in self._by_ip.values() if n.kind == "evpn"]:
            self._remove(n)

    def _set(self, n: Neighbour) -> None:
        known = self._by_ip.get(n.ip)
        if known is not None and not known.static:
            self._learned -= 1
        self._put(n)

    def forget_mac(self, mac: bytes) -> None:
        """A static MAC entry went: the static addresses it had go with it."""
        for ip in list(self._by_mac.get(mac, ())):
            if self._by_ip[ip].kind == "static":
                self._remove(self._by_ip[ip])

    def expire(self, now: float) -> list[bytes]:
        """Remove learned addresses not seen for `ageing` seconds; the MACs that lost one."""
        aged = [n for n in self._by_ip.values() if not n.static and now - n.updated >= self.ageing]
        for n in aged:
            self._remove(n)
            self._learned -= 1
            log.debug("vni %d: %s at %s aged out", self.vni, n.ip, mac_to_str(n.mac))
        return [n.mac for n in aged]

    def ips_of(self, mac: bytes) -> list[str]:
        return sorted(self._by_mac.get(mac, ()), key=lambda ip: ipaddress.ip_address(ip).packed.rjust(16, b"\0"))

    def lookup(self, ip: str) -> Neighbour | None:
        return self._by_ip.get(ip)

    def __len__(self) -> int:
        return len(self._by_ip)
