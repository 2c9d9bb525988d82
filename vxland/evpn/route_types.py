"""The two EVPN routes vxland uses, as plain values: what gobgpd's paths decode to (routes.py)
and what the etcd control plane's keys say (vxland/etcd), decided on by rib.py.  No protobuf
here: a fleet on etcd loads it without gobgpd's API stubs."""

from __future__ import annotations

from dataclasses import dataclass

from ..wire import mac_to_str


@dataclass(frozen=True)
class FloodRoute:
    """Type 3: VTEP `vtep` takes VNI `vni`'s flooded frames."""
    vni: int
    vtep: str


@dataclass(frozen=True)
class MacRoute:
    """Type 2: `mac` (with `ip`, or MAC-only) is behind `vtep` in `vni`; `seq` is its MAC
    mobility sequence number (0 when the route carries none)."""
    vni: int
    mac: bytes
    ip: str | None
    vtep: str
    seq: int = 0
    sticky: bool = False

    def __str__(self) -> str:
        return f"{mac_to_str(self.mac)}{' ' + self.ip if self.ip else ''} behind {self.vtep} (VNI {self.vni}, seq {self.seq})"


Route = FloodRoute | MacRoute
