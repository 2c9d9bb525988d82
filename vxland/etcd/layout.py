"""What vxland keeps in etcd, and how a key and its value are read back (sans-IO).

Under the configured prefix (default /vxland), per VNI:

    PREFIX/vni/42/config                   {"subnets": [{"subnet": "10.42.0.0/16", "block": 24}, ...]}
                                           the network's addressing: written by the first host,
                                           read by the rest; no lease
    PREFIX/vni/42/blocks/10.42.7.0-24      {"vtep": "192.0.2.7", "host": "node7"}
                                           a host's address block: claimed by compare-and-swap,
                                           on the host's long lease (block_ttl)
    PREFIX/vni/42/hosts/192.0.2.7          {"blocks": ["10.42.7.0/24"]}
                                           the blocks a host held last: tried first when it
                                           starts again after its lease ran out; no lease
    PREFIX/vni/42/routes/3/192.0.2.7       {"host": "node7"}
                                           the VTEP takes the VNI's flooded frames (type 3)
    PREFIX/vni/42/routes/2/MAC/VTEP        {"seq": 3, "sticky": false}
    PREFIX/vni/42/routes/2/MAC/VTEP/IP     the same with an address (type 2: MAC-only and MAC+IP)
                                           both on the host's short lease (ttl)

Every key names the VTEP it is about, and a host writes and deletes only keys that name its
own VTEP.  Whatever the store holds is read as hostile: a key or value that does not parse,
is too long, names a VTEP of the wrong family, a multicast MAC or a sequence number out of
range is ignored and counted (`parse_route` says why), never installed.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from ..evpn.rib import MAX_SEQ
from ..evpn.route_types import FloodRoute, MacRoute, Route
from ..fdb import parse_vtep
from ..neighbours import parse_ip
from ..wire import mac_is_learnable, mac_to_bytes, mac_to_str

MAX_VALUE = 1024                  # bytes: a value longer than this is not one of ours
MAX_BLOCKS = 1 << 16              # blocks per subnet: what a host searches when it claims one
DEFAULT_BLOCK = {4: 24, 6: 64}
ETCD_PORT = 2379


# ---- endpoints --------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    scheme: str                   # http or https
    host: str                     # an address, or a name
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def target(self) -> str:
        """gRPC's name for it, with the resolver spelled out (a host named "unix" is a host)."""
        try:
            version = ipaddress.ip_address(self.host).version
        except ValueError:
            return f"dns:///{self.host}:{self.port}"
        return f"ipv{version}:{self.url.split('://', 1)[1]}"


def parse_endpoint(text: str) -> Endpoint:
    """http(s)://HOST:PORT, or HOST:PORT (http), or HOST (port 2379)."""
    if not isinstance(text, str) or not text or len(text) > 256 or not text.isprintable():
        raise ValueError(f"endpoint {text!r} is not a URL like https://198.51.100.1:2379")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    if scheme not in ("http", "https") or "/" in rest.rstrip("/"):
        raise ValueError(f"endpoint {text!r}: want http:// or https://HOST:PORT and nothing after it")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:
        host, port = rest, ""
    try:
        number = int(port) if port else ETCD_PORT
        if not 1 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ValueError(f"endpoint {text!r}: port {port!r} is not 1..65535") from None
    if not host:
        raise ValueError(f"endpoint {text!r} has no host")
    try:
        address = ipaddress.ip_address(host)
        if getattr(address, "scope_id", None):
            raise ValueError(f"endpoint {text!r}: a scoped address (give a global one)")
        host = str(address)
    except ValueError as e:
        if "scoped" in str(e):
            raise
        if not all(c.isalnum() or c in ".-" for c in host) or host.startswith(("-", ".")):
            raise ValueError(f"endpoint {text!r}: {host!r} is neither an address nor a host name") from None
    return Endpoint(scheme, host, number)


# ---- the network's addressing --------------------------------------------------------------

@dataclass(frozen=True)
class Addressing:
    """The overlay's subnets, each cut into blocks of `block` bits of prefix (one per family)."""
    subnets: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int], ...]

    @classmethod
    def from_spec(cls, spec: Any) -> "Addressing | None":
        """From a network's `subnets` and `block_prefix(6)`; None when it gives none (the store's)."""
        if not spec.subnets:
            if spec.block_prefix is not None or spec.block_prefix6 is not None:
                raise ValueError("block_prefix needs subnets (the overlay's, cut into blocks)")
            return None
        pairs = []
        for text in spec.subnets:
            try:
                net = ipaddress.ip_network(text)
                if "%" in text:
                    raise ValueError
            except ValueError:
                raise ValueError(f"subnet {text!r} is not a network like 10.42.0.0/16 (no host bits set)") from None
            given = spec.block_prefix if net.version == 4 else spec.block_prefix6
            pairs.append((net, given if given is not None else max(DEFAULT_BLOCK[net.version], net.prefixlen + 1)))
        return cls.make(pairs)

    @classmethod
    def make(cls, pairs: list[tuple[Any, int]]) -> "Addressing":
        seen = set()
        for net, block in pairs:
            if net.version in seen:
                raise ValueError(f"one subnet per IP version: {net} is a second IPv{net.version} one")
            seen.add(net.version)
            if isinstance(block, bool) or not isinstance(block, int) \
                    or not net.prefixlen < block <= net.max_prefixlen - 2:
                raise ValueError(f"block length /{block} for {net} must be longer than /{net.prefixlen} "
                                 f"and at most /{net.max_prefixlen - 2} (two addresses or more)")
            if block - net.prefixlen > 16:
                raise ValueError(f"{net} in /{block} blocks is more than {MAX_BLOCKS} blocks: "
                                 "choose a longer subnet prefix or a shorter block")
        if not pairs:
            raise ValueError("no subnets")
        return cls(tuple(sorted(pairs, key=lambda p: p[0].version)))

    def to_json(self) -> bytes:
        return json.dumps({"subnets": [{"subnet": str(net), "block": block} for net, block in self.subnets]},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, value: bytes) -> "Addressing":
        """The store's copy, read as hostile: ValueError if it is not one we could have written."""
        data = _object(value)
        subnets = data.get("subnets")
        if not isinstance(subnets, list) or not 1 <= len(subnets) <= 2:
            raise ValueError("the stored configuration has no subnets")
        pairs = []
        for item in subnets:
            if not isinstance(item, dict) or not isinstance(item.get("subnet"), str):
                raise ValueError("the stored configuration has a subnet that is not {subnet, block}")
            try:
                if "%" in item["subnet"]:
                    raise ValueError
                pairs.append((ipaddress.ip_network(item["subnet"]), item.get("block")))
            except ValueError:
                raise ValueError(f"the stored subnet {item['subnet'][:60]!r} is not a network") from None
        return cls.make(pairs)

    def describe(self) -> str:
        return ", ".join(f"{net} in /{block} blocks" for net, block in self.subnets)


# ---- keys ---------------------------------------------------------------------------------

class Keys:
    """The keys of one VNI under `prefix`."""

    def __init__(self, prefix: str, vni: int) -> None:
        self.vni = vni
        self.base = f"{prefix}/vni/{vni}/"
        self.config = (self.base + "config").encode()
        self.blocks = (self.base + "blocks/").encode()
        self.hosts = (self.base + "hosts/").encode()
        self.routes = (self.base + "routes/").encode()

    def block(self, net: Any) -> bytes:
        return self.blocks + f"{net.network_address}-{net.prefixlen}".encode()

    def hint(self, vtep: str) -> bytes:
        return self.hosts + vtep.encode()

    def route(self, route: Route) -> bytes:
        if isinstance(route, FloodRoute):
            return self.routes + f"3/{route.vtep}".encode()
        tail = f"/{route.ip}" if route.ip else ""
        return self.routes + f"2/{mac_to_str(route.mac)}/{route.vtep}{tail}".encode()

    def block_of(self, key: bytes) -> Any:
        """The block a key under `blocks` names; ValueError if it names none, or names one in
        another spelling than ours (one block, one key)."""
        try:
            text = key[len(self.blocks):].decode("ascii", "strict")
        except UnicodeDecodeError:
            raise ValueError("not ASCII") from None
        address, _, length = text.rpartition("-")
        if not length.isdigit() or "%" in address:
            raise ValueError(f"block key {text[:60]!r}")
        net = ipaddress.ip_network(f"{address}/{length}")
        if f"{net.network_address}-{net.prefixlen}" != text:
            raise ValueError(f"block key {text[:60]!r} is not canonical")
        return net


def route_value(route: Route, host: str) -> bytes:
    if isinstance(route, FloodRoute):
        return json.dumps({"host": host}, separators=(",", ":")).encode()
    return json.dumps({"seq": route.seq, "sticky": route.sticky}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Parsed:
    route: Route | None
    ignored: str | None = None           # why it is not used (counted by that reason)


def parse_route(keys: Keys, key: bytes, value: bytes | None, family: int) -> Parsed:
    """A key under `keys.routes` and its value (None: deleted -- only the key's meaning is
    needed) as the route it says; or why it says none."""
    try:
        parts = key[len(keys.routes):].decode("ascii", "strict").split("/")
    except UnicodeDecodeError:
        return Parsed(None, "bad key")
    try:
        if parts[0] == "3" and len(parts) == 2:
            route: Route = FloodRoute(keys.vni, _vtep(parts[1], family))
        elif parts[0] == "2" and len(parts) in (3, 4):
            mac = mac_to_bytes(parts[1])
            if mac_to_str(mac) != parts[1] or not mac_is_learnable(mac):
                return Parsed(None, "bad MAC")
            ip = None
            if len(parts) == 4:
                ip = parse_ip(parts[3])
                if ip != parts[3] or "%" in ip:
                    raise ValueError("not canonical")
            route = MacRoute(keys.vni, mac, ip, _vtep(parts[2], family))
        else:
            return Parsed(None, "bad key")
    except ValueError:
        return Parsed(None, "bad address")
    if value is None or isinstance(route, FloodRoute):
        return Parsed(route)
    try:
        data = _object(value)
    except ValueError:
        return Parsed(None, "bad value")
    seq, sticky = data.get("seq", 0), data.get("sticky", False)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ or not isinstance(sticky, bool):
        return Parsed(None, "bad value")
    return Parsed(MacRoute(keys.vni, route.mac, route.ip, route.vtep, seq, sticky))


def _vtep(text: str, family: int) -> str:
    vtep = parse_vtep(text, family)
    if vtep != text or "%" in vtep:
        raise ValueError("not canonical")               # one VTEP, one key: no second spelling
    return vtep


def _object(value: bytes) -> dict[str, Any]:
    if len(value) > MAX_VALUE:
        raise ValueError(f"a value of {len(value)} bytes (at most {MAX_VALUE})")
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):       # ("[[[[..." a thousand deep)
        raise ValueError("a value that is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("a value that is not a JSON object")
    return data


def owner_of(value: bytes) -> tuple[str, str]:
    """(vtep, host) of a block's value; ValueError if it is not one."""
    data = _object(value)
    vtep, host = data.get("vtep"), data.get("host", "")
    if not isinstance(vtep, str) or not isinstance(host, str):
        raise ValueError("a block value without a VTEP")
    return vtep, host[:64]
