"""Route targets: which VNI a received EVPN route is for, and what ours carry (no gRPC here:
the configuration checks them without gobgpd's stubs)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class RouteTarget:
    """An import/export route target `asn:value`.  `asn` None matches any AS (FRR's auto-derived
    targets are `ASN:VNI` with the low 16 bits of the originator's AS, and FRR imports them
    whatever the AS: so does vxland by default)."""
    asn: int | None
    value: int

    @classmethod
    def parse(cls, text: str) -> "RouteTarget":
        """`65000:42`, or `*:42` for any AS."""
        asn, sep, value = text.partition(":")
        try:
            if not sep:
                raise ValueError
            parsed = cls(None if asn == "*" else int(asn), int(value))
        except ValueError:
            raise ValueError(f"route target {text!r} is not ASN:NUMBER (65000:42, or *:42)") from None
        limit = 0xFFFF if parsed.asn is not None and parsed.asn > 0xFFFF else 0xFFFFFFFF
        if parsed.asn is not None and not 0 <= parsed.asn <= 0xFFFFFFFF or not 0 <= parsed.value <= limit:
            raise ValueError(f"route target {text!r} is out of range (AS 0..65535 with a number up to "
                             "4294967295, or a 4-byte AS with a number up to 65535)")
        return parsed

    def matches(self, asn: int, value: int) -> bool:
        return value == self.value and (self.asn is None or self.asn == asn)

    def __str__(self) -> str:
        return f"{'*' if self.asn is None else self.asn}:{self.value}"


class ImportIndex:
    """Which served VNIs import a route's targets, found by the targets' values: a route costs
    the same with 1 VNI served or 256 (it used to try every VNI's every target)."""

    def __init__(self, imports: dict[int, list[RouteTarget]]) -> None:
        self._order = {vni: i for i, vni in enumerate(imports)}
        self._by_value: dict[int, list[tuple[int, RouteTarget]]] = {}
        for vni, targets in imports.items():
            for rt in targets or [RouteTarget(None, vni)]:       # none given: any AS, the VNI as the value
                self._by_value.setdefault(rt.value, []).append((vni, rt))

    def vnis(self, targets: Iterable[tuple[int, int]]) -> list[int]:
        """The served VNIs that import any of `targets` ((asn, value) pairs), in serving order."""
        found = {vni for asn, value in targets for vni, rt in self._by_value.get(value, ()) if rt.matches(asn, value)}
        return sorted(found, key=self._order.__getitem__)
