"""Route targets: which VNI a received EVPN route is for, and what ours carry (no gRPC here:
the configuration checks them without gobgpd's stubs)."""

from __future__ import annotations

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
