"""vxland's configuration: from `vxland run` flags or a TOML file, validated in one place.

A TOML file describes one daemon with any number of VNIs:

    local = "192.0.2.1"          # underlay address: outer source, and where VXLAN is received
    port = 4789                  # VXLAN UDP port (the kernel's default is 8472)
    source_ports = [49152, 65535]
    ttl = 64
    group_ttl = 1                # outer TTL to multicast groups
    control = "/run/vxland/vxland.sock"
    datapath = "native"          # or "reference" (pure Python, slow)
    offloads = true              # TAP TSO/checksum offload, UDP GSO/GRO; false to turn off
    datapath_thread = true       # the native data path waits on its fds in a thread of its own;
                                 #   false: the event loop wakes for each (more latency, more CPU)
    queues = 0                   # queues per TAP and underlay sockets (flow isolation); 0: from the
                                 #   cores (at least 4); 1: one of each (the data-path threads only)
    datapath_threads = 0         # data-path threads; 0: one per core, at most one per queue
    tos = 0                      # outer DSCP, or "inherit" (ECN always follows RFC 6040)
    df = "set"                   # outer DF: "set", "unset" or "inherit" (vxland never fragments)
    reserved_bits = "ignore"     # "ignore" (RFC 7348 §5) or "drop" (the kernel's way)
    inner_vlan = "discard"       # "discard" (RFC 7348 §6.1) or "carry" (as Linux does)
    accept_from = "any"          # "known": take VXLAN only from the flood list, static VTEPs, and
    accept_prefixes = []         #   these prefixes (each network may say otherwise)
    user = "vxland"              # optional: run as this user once the TAPs and sockets are open
    metrics = "127.0.0.1:9475"   # optional: Prometheus metrics at http://ADDR:PORT/metrics
    metrics_allow = []           # optional: only scrapers in these prefixes (e.g. ["10.0.0.0/8"])
    cni_data_dir = "/var/lib/cni/vxland"   # where the CNI plugin records its containers (its dataDir)

    [[network]]
    vni = 42
    tap = "vx42"
    bridge = "br0"               # optional: attach the TAP to this existing bridge
    mtu = 1450                   # optional: default underlay MTU - 50
    peers = ["192.0.2.2"]        # flood list: remotes for broadcast, multicast, unknown unicast
    group = "239.1.1.42"         # optional: BUM by IP multicast too, joined on the underlay (RFC 7348 §4.2)
    ageing = 300                 # seconds a learned entry lives without being refreshed
    max_learned = 8192           # cap on learned entries (the default; the kernel's maxaddress)
    max_evpn = 65536             # cap on entries (and on addresses) EVPN routes install (the default)
    learning = true
    static = [{ mac = "02:00:00:00:00:02", vtep = "192.0.2.2", ip = "10.42.0.2" }]   # ip: optional
    neigh_suppress = false       # answer ARP requests and neighbour solicitations for known addresses
    evpn = false                 # announce and learn this VNI over BGP EVPN (needs [evpn])
    learn_remote = true          # learn MACs from what remote VTEPs send (default: false with evpn)
    route_target = "65000:42"    # optional, with evpn: export and import only this (default: ASN:VNI,
                                 #   imported from any AS, as FRR's auto-derived targets)
    etcd = false                 # find the other VTEPs, and claim an address block, in etcd (needs [etcd])
    subnets = ["10.42.0.0/16"]   # with etcd: the overlay's subnets (one IPv4, one IPv6 at most) cut
    block_prefix = 24            #   into per-host blocks of this length (IPv6: block_prefix6, 64);
                                 #   optional when the store already holds them (the first host writes them)

    [evpn]                       # BGP EVPN (RFC 7432, RFC 8365) through gobgpd: see vxland/evpn
    asn = 65000
    router_id = "192.0.2.1"      # default: local (an IPv4 address; required on an IPv6 underlay)
    gobgpd = "run"               # "run": vxland runs gobgpd; "external": one runs already, with its
                                 #   neighbors in its own configuration
    api = "127.0.0.1:50051"      # gobgpd's gRPC API: a loopback address only
    hold_time = 9                # BGP hold time in seconds (keepalive: a third), with gobgpd = "run"
    neighbors = [{ address = "192.0.2.2", asn = 65000 },      # iBGP, or eBGP with another AS;
                 { address = "192.0.2.3", asn = 65000, route_reflector_client = true,
                   password = "secret" }]                     # optional: TCP MD5 (RFC 2385)

    [etcd]                       # a fleet on etcd (flannel's model): see vxland/etcd
    endpoints = ["https://198.51.100.1:2379", "https://198.51.100.2:2379"]   # fail-over in this order
    prefix = "/vxland"           # every key vxland writes is under it
    ca = "/etc/vxland/etcd-ca.pem"         # with https: the CA that signed the members' certificates;
    cert = "/etc/vxland/etcd-client.pem"   #   and this host's client certificate and key (etcd's
    key = "/etc/vxland/etcd-client.key"    #   --client-cert-auth: the recommended setup)
    ttl = 10                     # seconds a host that stops renewing stays in the others' tables
    block_ttl = 86400            # seconds a host's address block outlives the host
    host = "node1"               # optional: this host's name in the store (default: the hostname)
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field
from typing import Any

from . import wire
from .datapath import MAX_FLOOD, MAX_NETS, MAX_PREFIXES
from .errors import VxlandError
from .fdb import ACCEPT_FROM, DEFAULT_AGEING, DEFAULT_MAX_EVPN, parse_prefix, parse_vtep
from .attachments import DEFAULT_DIRECTORY as DEFAULT_CNI_DATA_DIR
from .neighbours import parse_ip
from .privileges import user_ids

DEFAULT_CONTROL = "/run/vxland/vxland.sock"
DATAPATHS = ("native", "reference")
MAX_QUEUES = 16                    # native/fastpath.h VX_MAX_QUEUES and VX_MAX_THREADS
MIN_AUTO_QUEUES = 4                # queues = 0: one per core, at least this many (flow isolation)
DF_MODES = ("set", "unset", "inherit")
RESERVED_BITS = ("ignore", "drop")
INNER_VLAN = ("discard", "carry")
GOBGPD_MODES = ("run", "external")
#: Learned entries per VNI unless configured: about 3.5 MiB of tables, far more MACs than the
#: containers of a few hosts have, and a bound on what a flood of random source MACs can take.
DEFAULT_MAX_LEARNED = 8192
MAX_AGEING = 4294967295.0          # seconds, as the kernel's (a u32)
IFNAMSIZ = 16


def check_ifname(name: str, what: str = "TAP") -> str:
    """A Linux interface name that the kernel will take as it is: 1 to 15 bytes, not . or ..,
    no '/', ':', '%' (the kernel would pick a name itself) or white space."""
    if (not isinstance(name, str) or not name or len(name.encode()) >= IFNAMSIZ or name in (".", "..")
            or any(c in name for c in "/:%") or any(c.isspace() for c in name)):
        raise VxlandError(f"bad {what} name {name!r}: 1 to {IFNAMSIZ - 1} characters, no '/', ':', '%' "
                          "or spaces")
    return name


@dataclass
class StaticEntry:
    mac: bytes
    vtep: str
    ip: str | None = None              # the address this MAC has (ARP/ND suppression)


@dataclass
class NetworkSpec:
    vni: int
    tap: str
    bridge: str | None = None
    mtu: int | None = None
    peers: list[str] = field(default_factory=list)
    group: str | None = None
    ageing: float = DEFAULT_AGEING
    max_learned: int | None = DEFAULT_MAX_LEARNED
    max_evpn: int = DEFAULT_MAX_EVPN
    learning: bool = True
    static: list[StaticEntry] = field(default_factory=list)
    accept_from: str | None = None          # None: the daemon's
    accept_prefixes: list[str] | None = None
    neigh_suppress: bool = False            # answer ARP/ND for known neighbours, not flood them
    evpn: bool = False                      # announced and learned over BGP EVPN
    learn_remote: bool | None = None        # None: not with evpn, else yes
    route_target: str | None = None         # with evpn: ASN:NUMBER, exported and the only one imported
    etcd: bool = False                      # VTEPs, routes and an address block in etcd
    subnets: list[str] = field(default_factory=list)   # with etcd: the overlay's, cut into blocks
    block_prefix: int | None = None         # IPv4 block length (None: the store's, else 24)
    block_prefix6: int | None = None        # IPv6 block length (None: the store's, else 64)

    @property
    def learns_remote(self) -> bool:
        return self.learn_remote if self.learn_remote is not None else not (self.evpn or self.etcd)


@dataclass(frozen=True)
class EvpnNeighbor:
    address: str
    asn: int
    route_reflector_client: bool = False
    password: str | None = None             # TCP MD5 signature (RFC 2385) on the session


@dataclass
class EvpnConfig:
    """The [evpn] section: this VTEP's BGP identity and gobgpd."""
    asn: int
    router_id: str | None = None            # None: local
    gobgpd: str = "run"                     # or "external"
    api: str = "127.0.0.1:50051"
    hold_time: int = 9
    neighbors: list[EvpnNeighbor] = field(default_factory=list)

    def validate(self, local: str) -> "EvpnConfig":
        if isinstance(self.asn, bool) or not isinstance(self.asn, int) or not 1 <= self.asn <= 0xFFFFFFFF:
            raise VxlandError(f"evpn: asn {self.asn!r} is outside 1..4294967295")
        router_id = self.router_id if self.router_id is not None else local
        try:
            if ipaddress.ip_address(router_id).version != 4:
                raise ValueError
        except ValueError:
            raise VxlandError(f"evpn: router_id {router_id!r} must be an IPv4 address (BGP identifiers are; "
                              "give one on an IPv6 underlay)") from None
        self.router_id = router_id
        if self.gobgpd not in GOBGPD_MODES:
            raise VxlandError(f"evpn: gobgpd {self.gobgpd!r} is not one of {', '.join(GOBGPD_MODES)}")
        host, _, port = self.api.rpartition(":")
        try:
            if not ipaddress.ip_address(host.strip("[]")).is_loopback or not 1 <= int(port) <= 65535:
                raise ValueError
        except ValueError:
            raise VxlandError(f"evpn: api {self.api!r} must be a loopback ADDRESS:PORT (127.0.0.1:50051): gobgpd's "
                              "API has no authentication") from None
        if isinstance(self.hold_time, bool) or not isinstance(self.hold_time, int) or not 3 <= self.hold_time <= 65535:
            raise VxlandError(f"evpn: hold_time {self.hold_time!r} is outside 3..65535 seconds")
        if self.gobgpd == "external" and self.neighbors:
            raise VxlandError("evpn: with gobgpd = \"external\", neighbors belong in that gobgpd's configuration")
        if self.gobgpd == "run" and not self.neighbors:
            raise VxlandError("evpn: no neighbors: give at least one (address and asn)")
        seen = set()
        checked = []
        for n in self.neighbors:
            try:
                address = parse_vtep(n.address)
            except ValueError as e:
                raise VxlandError(f"evpn: neighbor {e}") from None
            if address == local or address in seen:
                raise VxlandError(f"evpn: neighbor {address} is {'this VTEP' if address == local else 'given twice'}")
            if isinstance(n.asn, bool) or not isinstance(n.asn, int) or not 1 <= n.asn <= 0xFFFFFFFF:
                raise VxlandError(f"evpn: neighbor {address}: asn {n.asn!r} is outside 1..4294967295")
            if n.route_reflector_client and n.asn != self.asn:
                raise VxlandError(f"evpn: neighbor {address}: route_reflector_client is for iBGP neighbors (asn {self.asn})")
            if n.password is not None and not (1 <= len(n.password) <= 80 and n.password.isprintable()):
                raise VxlandError(f"evpn: neighbor {address}: password must be 1 to 80 printable characters")
            seen.add(address)
            checked.append(EvpnNeighbor(address, n.asn, n.route_reflector_client, n.password))
        self.neighbors = checked
        return self


@dataclass
class EtcdConfig:
    """The [etcd] section: where the store is and who this host is in it."""
    endpoints: list[str]
    prefix: str = "/vxland"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    ttl: int = 10
    block_ttl: int = 86400
    host: str | None = None                 # None: the hostname

    def validate(self) -> "EtcdConfig":
        from .etcd.layout import parse_endpoint
        if not 1 <= len(self.endpoints) <= 16:
            raise VxlandError("etcd: endpoints must list 1 to 16 members (https://ADDRESS:2379)")
        try:
            self.endpoints = [parse_endpoint(e).url for e in self.endpoints]
        except ValueError as e:
            raise VxlandError(f"etcd: {e}") from None
        tls = {e.split("://")[0] for e in self.endpoints}
        if len(tls) > 1:
            raise VxlandError("etcd: endpoints mix http and https; the members speak one of them")
        if (self.cert is None) != (self.key is None):
            raise VxlandError("etcd: cert and key go together (this host's client certificate and its key)")
        if "http" in tls and (self.ca or self.cert):
            raise VxlandError("etcd: ca, cert and key are for https endpoints")
        if not (isinstance(self.prefix, str) and self.prefix.startswith("/") and 1 < len(self.prefix) <= 128
                and not self.prefix.endswith("/") and self.prefix.isprintable() and " " not in self.prefix):
            raise VxlandError(f"etcd: prefix {self.prefix!r} must be a key path like /vxland (no trailing /)")
        if isinstance(self.ttl, bool) or not isinstance(self.ttl, int) or not 5 <= self.ttl <= 3600:
            raise VxlandError(f"etcd: ttl {self.ttl!r} is outside 5..3600 seconds (renewed every quarter of it, "
                              "each renewal with that much time to answer)")
        if isinstance(self.block_ttl, bool) or not isinstance(self.block_ttl, int) \
                or not max(60, self.ttl) <= self.block_ttl <= 90 * 86400:
            raise VxlandError(f"etcd: block_ttl {self.block_ttl!r} is outside {max(60, self.ttl)}..{90 * 86400} "
                              "seconds (at least ttl)")
        if self.host is None:
            import socket
            self.host = socket.gethostname()
        if not (isinstance(self.host, str) and 0 < len(self.host) <= 64 and self.host.isprintable()):
            raise VxlandError(f"etcd: host {self.host!r} must be a name of 1 to 64 printable characters")
        return self


@dataclass
class DaemonConfig:
    local: str
    networks: list[NetworkSpec]
    port: int = wire.VXLAN_PORT
    source_ports: tuple[int, int] = wire.SOURCE_PORTS
    ttl: int = wire.DEFAULT_TTL
    group_ttl: int = wire.DEFAULT_GROUP_TTL
    control: str = DEFAULT_CONTROL
    datapath: str = "native"
    offloads: bool = True
    datapath_thread: bool = True        # native: a C thread pumps; else the event loop
    queues: int = 0                     # queues per TAP and underlay sockets; 0: from the cores
    datapath_threads: int = 0           # data-path threads; 0: from the cores
    tos: int | str = 0
    df: str = "set"
    reserved_bits: str = "ignore"
    inner_vlan: str = "discard"
    accept_from: str = "any"
    accept_prefixes: list[str] = field(default_factory=list)
    user: str | None = None             # run as this user once everything is open
    metrics: str | None = None          # ADDR:PORT for Prometheus, or None: off
    metrics_allow: list[str] = field(default_factory=list)   # scrapers' prefixes; empty: any
    cni_data_dir: str = DEFAULT_CNI_DATA_DIR   # the CNI plugin's records, read at start
    evpn: EvpnConfig | None = None      # [evpn], or None: no BGP
    etcd: EtcdConfig | None = None      # [etcd], or None: no store

    @property
    def family(self) -> int:
        """The underlay's IP version, 4 or 6: that of `local`."""
        return ipaddress.ip_address(self.local).version

    def queue_plan(self, cpus: int) -> tuple[int, int]:
        """(queues, threads) for the native data path's threads on a machine with `cpus` usable
        cores: what is set, else a queue per core but at least MIN_AUTO_QUEUES -- a sparse flow
        shares a bulk one's queue with odds of 1 in the number of queues -- and a thread per core,
        never more threads than queues."""
        queues = self.queues or min(MAX_QUEUES, max(MIN_AUTO_QUEUES, cpus))
        threads = self.datapath_threads or max(1, min(cpus, MAX_QUEUES))
        return queues, min(threads, queues)

    def validate(self) -> "DaemonConfig":
        try:
            ip = ipaddress.ip_address(self.local)
        except ValueError:
            raise VxlandError(f"local address {self.local!r} is not an IPv4 or IPv6 address") from None
        if ip.is_multicast or ip.is_unspecified or (ip.version == 6 and ip.is_link_local):
            raise VxlandError(f"local address {self.local} must be a unicast address of this host")
        self.local = str(ip)
        _port("port", self.port)
        lo, hi = self.source_ports
        _port("source port", lo)
        _port("source port", hi)
        if lo > hi:
            raise VxlandError(f"source port range {lo}-{hi} is empty")
        for what, ttl in (("ttl", self.ttl), ("group_ttl", self.group_ttl)):
            if not 1 <= ttl <= 255:
                raise VxlandError(f"{what} {ttl} is outside 1..255")
        if self.datapath not in DATAPATHS:
            raise VxlandError(f"datapath {self.datapath!r} is not one of {', '.join(DATAPATHS)}")
        for what, value in (("queues", self.queues), ("datapath_threads", self.datapath_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUEUES:
                raise VxlandError(f"{what} {value!r} is outside 0..{MAX_QUEUES} (0: from the cores)")
        if self.tos != "inherit" and (isinstance(self.tos, bool) or not isinstance(self.tos, int)
                                      or not 0 <= self.tos <= 255):
            raise VxlandError(f"tos {self.tos!r} is neither 0..255 nor inherit")
        for what, value, allowed in (("df", self.df, DF_MODES), ("reserved_bits", self.reserved_bits, RESERVED_BITS),
                                     ("inner_vlan", self.inner_vlan, INNER_VLAN)):
            if value not in allowed:
                raise VxlandError(f"{what} {value!r} is not one of {', '.join(allowed)}")
        if not self.networks:
            raise VxlandError("no network configured: give --vni and --tap, or [[network]] in the config file")
        if self.user is not None:
            try:
                user_ids(self.user)
            except VxlandError as e:
                raise VxlandError(str(e).replace("--user", "user")) from None
        if self.metrics is not None:
            from .metrics import parse_address
            parse_address(self.metrics)
        try:
            self.metrics_allow = [str(ipaddress.ip_network(p, strict=False)) for p in self.metrics_allow]
        except (ValueError, TypeError):
            raise VxlandError(f"metrics_allow {self.metrics_allow!r}: want address prefixes, "
                              "e.g. [\"10.0.0.0/8\"]") from None
        if not isinstance(self.cni_data_dir, str) or not self.cni_data_dir:
            raise VxlandError("cni_data_dir must be a directory path")
        if self.evpn is not None:
            self.evpn.validate(self.local)
        if self.etcd is not None:
            self.etcd.validate()
        if len(self.networks) > MAX_NETS:
            raise VxlandError(f"{len(self.networks)} networks: one daemon serves at most {MAX_NETS}")
        self.accept_from, self.accept_prefixes = _acceptance(self.accept_from, self.accept_prefixes, ip.version,
                                                             "")
        seen_vni, seen_tap = set(), set()
        for n in self.networks:
            if not 0 <= n.vni <= wire.VNI_MAX:
                raise VxlandError(f"VNI {n.vni} is outside 0..{wire.VNI_MAX}")
            if n.vni in seen_vni:
                raise VxlandError(f"VNI {n.vni} is configured twice")
            check_ifname(n.tap)
            if n.bridge is not None:
                check_ifname(n.bridge, "bridge")
            if n.tap in seen_tap:
                raise VxlandError(f"TAP {n.tap} is used by two networks")
            seen_vni.add(n.vni)
            seen_tap.add(n.tap)
            if not (isinstance(n.ageing, (int, float)) and math.isfinite(n.ageing) and 0 < n.ageing <= MAX_AGEING):
                raise VxlandError(f"VNI {n.vni}: ageing must be a positive number of seconds (at most {MAX_AGEING:.0f})")
            if n.max_learned is not None and not 0 <= n.max_learned <= 1 << 24:
                raise VxlandError(f"VNI {n.vni}: max_learned must be 0..{1 << 24}")
            if isinstance(n.max_evpn, bool) or not isinstance(n.max_evpn, int) or not 0 <= n.max_evpn <= 1 << 24:
                raise VxlandError(f"VNI {n.vni}: max_evpn must be 0..{1 << 24}")
            if n.mtu is not None and not 68 <= n.mtu <= 65535 - 50:
                raise VxlandError(f"VNI {n.vni}: mtu {n.mtu} is outside 68..65485")
            if n.group is not None:
                try:
                    group = ipaddress.ip_address(n.group)
                except ValueError:
                    raise VxlandError(f"VNI {n.vni}: group {n.group!r} is not an IP address") from None
                if not group.is_multicast or group.version != ip.version:
                    raise VxlandError(f"VNI {n.vni}: group {n.group} is not an IPv{ip.version} multicast address")
                n.group = str(group)
            try:
                n.peers = list(dict.fromkeys(parse_vtep(p, ip.version) for p in n.peers))
                for s in n.static:
                    s.vtep = parse_vtep(s.vtep, ip.version)
            except ValueError as e:
                raise VxlandError(f"VNI {n.vni}: {e}") from None
            if len(n.peers) + (1 if n.group else 0) > MAX_FLOOD:
                raise VxlandError(f"VNI {n.vni}: a flood list holds at most {MAX_FLOOD} remotes, the group included")
            for vtep in (*n.peers, *(s.vtep for s in n.static)):
                if vtep == self.local:
                    raise VxlandError(f"VNI {n.vni}: {vtep} is this VTEP's own address (local), not a remote")
            if n.evpn and self.evpn is None:
                raise VxlandError(f"VNI {n.vni}: evpn = true needs an [evpn] section (asn, neighbors)")
            if n.route_target is not None:
                if not n.evpn:
                    raise VxlandError(f"VNI {n.vni}: route_target is for evpn = true")
                from .evpn.targets import RouteTarget
                try:
                    if RouteTarget.parse(n.route_target).asn is None:
                        raise ValueError(f"route target {n.route_target!r} needs an AS: it is exported too")
                except ValueError as e:
                    raise VxlandError(f"VNI {n.vni}: {e}") from None
            self._check_etcd(n)
            if n.accept_from is not None or n.accept_prefixes is not None:
                n.accept_from, n.accept_prefixes = _acceptance(
                    n.accept_from or self.accept_from,
                    self.accept_prefixes if n.accept_prefixes is None else n.accept_prefixes, ip.version,
                    f"VNI {n.vni}: ")
        return self

    def _check_etcd(self, n: NetworkSpec) -> None:
        if n.etcd and self.etcd is None:
            raise VxlandError(f"VNI {n.vni}: etcd = true needs an [etcd] section (endpoints)")
        if n.etcd and n.evpn:
            raise VxlandError(f"VNI {n.vni}: one control plane per network: evpn or etcd, not both")
        if (n.subnets or n.block_prefix is not None or n.block_prefix6 is not None) and not n.etcd:
            raise VxlandError(f"VNI {n.vni}: subnets and block_prefix are for etcd = true (blocks claimed in etcd)")
        if n.etcd:
            from .etcd.layout import Addressing
            try:
                Addressing.from_spec(n)
            except ValueError as e:
                raise VxlandError(f"VNI {n.vni}: {e}") from None

    def acceptance(self, n: NetworkSpec) -> tuple[str, list[str]]:
        """What network n takes VXLAN from: its own setting, or the daemon's."""
        return (n.accept_from or self.accept_from,
                self.accept_prefixes if n.accept_prefixes is None else n.accept_prefixes)


def _acceptance(accept_from: str, prefixes: list[str], family: int, where: str) -> tuple[str, list[str]]:
    if accept_from not in ACCEPT_FROM:
        raise VxlandError(f"{where}accept_from {accept_from!r} is not one of {', '.join(ACCEPT_FROM)}")
    if len(prefixes) > MAX_PREFIXES:
        raise VxlandError(f"{where}at most {MAX_PREFIXES} accept_prefixes")
    try:
        return accept_from, [parse_prefix(p, family) for p in prefixes]
    except ValueError as e:
        raise VxlandError(f"{where}{e}") from None


def _port(what: str, value: int) -> None:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise VxlandError(f"{what} {value!r} is outside 1..65535")


def _take(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in table:
        return default
    value = table.pop(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise VxlandError(f"{where}: {key} must be {names}, not {value!r}")
    return value


def _strings(table: dict[str, Any], key: str, where: str, default: list[str] | None = None) -> list[str] | None:
    value = _take(table, key, list, where, default)
    if value is not None and not all(isinstance(v, str) for v in value):
        raise VxlandError(f"{where}: {key} must be a list of strings")
    return value


def _no_leftovers(table: dict[str, Any], where: str) -> None:
    if table:
        raise VxlandError(f"{where}: unknown key{'s' if len(table) > 1 else ''} {', '.join(sorted(table))}")


def _network(raw: dict[str, Any], where: str) -> NetworkSpec:
    raw = dict(raw)
    vni = _take(raw, "vni", int, where)
    tap = _take(raw, "tap", str, where)
    if vni is None or tap is None:
        raise VxlandError(f"{where}: vni and tap are required")
    where = f"{where} (vni {vni})"
    static = []
    for i, s in enumerate(_take(raw, "static", list, where, [])):
        if not isinstance(s, dict):
            raise VxlandError(f"{where}: static[{i}] must be a table with mac and vtep")
        s = dict(s)
        mac, vtep, ip = _take(s, "mac", str, where), _take(s, "vtep", str, where), _take(s, "ip", str, where)
        _no_leftovers(s, f"{where} static[{i}]")
        if mac is None or vtep is None:
            raise VxlandError(f"{where}: static[{i}] needs mac and vtep")
        try:
            static.append(StaticEntry(wire.mac_to_bytes(mac), vtep, parse_ip(ip) if ip is not None else None))
        except ValueError as e:
            raise VxlandError(f"{where}: {e}") from None
    peers = _strings(raw, "peers", where, [])
    spec = NetworkSpec(
        vni=vni, tap=tap, bridge=_take(raw, "bridge", str, where), mtu=_take(raw, "mtu", int, where),
        peers=peers, group=_take(raw, "group", str, where), ageing=float(_take(raw, "ageing", (int, float), where, DEFAULT_AGEING)),
        max_learned=_take(raw, "max_learned", int, where, DEFAULT_MAX_LEARNED),
        max_evpn=_take(raw, "max_evpn", int, where, DEFAULT_MAX_EVPN),
        learning=_take(raw, "learning", bool, where, True), static=static,
        accept_from=_take(raw, "accept_from", str, where), accept_prefixes=_strings(raw, "accept_prefixes", where),
        neigh_suppress=_take(raw, "neigh_suppress", bool, where, False),
        evpn=_take(raw, "evpn", bool, where, False), learn_remote=_take(raw, "learn_remote", bool, where),
        route_target=_take(raw, "route_target", str, where), etcd=_take(raw, "etcd", bool, where, False),
        subnets=_strings(raw, "subnets", where, []), block_prefix=_take(raw, "block_prefix", int, where),
        block_prefix6=_take(raw, "block_prefix6", int, where))
    _no_leftovers(raw, where)
    return spec


def _evpn(raw: Any, where: str) -> EvpnConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise VxlandError(f"{where}: evpn must be a table")
    raw = dict(raw)
    where = f"{where}: [evpn]"
    asn = _take(raw, "asn", int, where)
    if asn is None:
        raise VxlandError(f"{where}: asn is required")
    neighbors = []
    for i, n in enumerate(_take(raw, "neighbors", list, where, [])):
        if not isinstance(n, dict):
            raise VxlandError(f"{where}: neighbors[{i}] must be a table with address and asn")
        n = dict(n)
        address, peer_as = _take(n, "address", str, where), _take(n, "asn", int, where, asn)
        client = _take(n, "route_reflector_client", bool, where, False)
        password = _take(n, "password", str, where)
        _no_leftovers(n, f"{where} neighbors[{i}]")
        if address is None:
            raise VxlandError(f"{where}: neighbors[{i}] needs an address")
        neighbors.append(EvpnNeighbor(address, peer_as, client, password))
    config = EvpnConfig(asn=asn, router_id=_take(raw, "router_id", str, where),
                        gobgpd=_take(raw, "gobgpd", str, where, "run"), api=_take(raw, "api", str, where, "127.0.0.1:50051"),
                        hold_time=_take(raw, "hold_time", int, where, 9), neighbors=neighbors)
    _no_leftovers(raw, where)
    return config


def _etcd(raw: Any, where: str) -> EtcdConfig | None:
    if raw is None:
        return None
    raw = dict(raw)
    where = f"{where}: [etcd]"
    endpoints = _strings(raw, "endpoints", where)
    if not endpoints:
        raise VxlandError(f"{where}: endpoints is required (the members: https://ADDRESS:2379, ...)")
    config = EtcdConfig(endpoints=endpoints, prefix=_take(raw, "prefix", str, where, "/vxland"),
                        ca=_take(raw, "ca", str, where), cert=_take(raw, "cert", str, where),
                        key=_take(raw, "key", str, where), ttl=_take(raw, "ttl", int, where, 10),
                        block_ttl=_take(raw, "block_ttl", int, where, 86400), host=_take(raw, "host", str, where))
    _no_leftovers(raw, where)
    return config


def parse_toml(text: str, origin: str = "config") -> DaemonConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise VxlandError(f"{origin}: not valid TOML: {e}") from None
    local = _take(raw, "local", str, origin)
    if local is None:
        raise VxlandError(f"{origin}: local (the underlay address) is required")
    networks = _take(raw, "network", list, origin, [])
    ports = _take(raw, "source_ports", list, origin, list(wire.SOURCE_PORTS))
    if len(ports) != 2 or not all(isinstance(p, int) for p in ports):
        raise VxlandError(f"{origin}: source_ports must be [min, max]")
    config = DaemonConfig(
        local=local,
        networks=[_network(n, f"{origin}: network[{i}]") if isinstance(n, dict) else
                  _bad(f"{origin}: network[{i}] must be a table") for i, n in enumerate(networks)],
        port=_take(raw, "port", int, origin, wire.VXLAN_PORT),
        source_ports=(ports[0], ports[1]),
        ttl=_take(raw, "ttl", int, origin, wire.DEFAULT_TTL),
        group_ttl=_take(raw, "group_ttl", int, origin, wire.DEFAULT_GROUP_TTL),
        control=_take(raw, "control", str, origin, DEFAULT_CONTROL),
        datapath=_take(raw, "datapath", str, origin, "native"),
        offloads=_take(raw, "offloads", bool, origin, True),
        datapath_thread=_take(raw, "datapath_thread", bool, origin, True),
        queues=_take(raw, "queues", int, origin, 0),
        datapath_threads=_take(raw, "datapath_threads", int, origin, 0),
        tos=_take(raw, "tos", (int, str), origin, 0),
        df=_take(raw, "df", str, origin, "set"),
        reserved_bits=_take(raw, "reserved_bits", str, origin, "ignore"),
        inner_vlan=_take(raw, "inner_vlan", str, origin, "discard"),
        accept_from=_take(raw, "accept_from", str, origin, "any"),
        accept_prefixes=_strings(raw, "accept_prefixes", origin, []),
        user=_take(raw, "user", str, origin),
        metrics=_take(raw, "metrics", str, origin),
        metrics_allow=_strings(raw, "metrics_allow", origin, []),
        cni_data_dir=_take(raw, "cni_data_dir", str, origin, DEFAULT_CNI_DATA_DIR),
        evpn=_evpn(_take(raw, "evpn", dict, origin), origin),
        etcd=_etcd(_take(raw, "etcd", dict, origin), origin),
    )
    _no_leftovers(raw, origin)
    return config.validate()


def _bad(message: str) -> Any:
    raise VxlandError(message)


def load_toml(path: str) -> DaemonConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise VxlandError(f"cannot read config file {path}: {e.strerror}") from None
    return parse_toml(text, path)
