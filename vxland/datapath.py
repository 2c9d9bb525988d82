"""The data path: what happens to each frame and datagram, a batch at a time.

Two implementations of one interface, chosen at run time (`--datapath`):

* `native.NativeDataPlane` - the C fast path (native/*.c), the default;
* `ReferenceDataPlane` here - the same semantics in plain Python, slow and
  obvious, held equal to the C path by tests/test_differential.py.

Per frame from the TAP (encap): runt check, destination lookup (a learned
remote: one copy; local: drop; multicast or unknown: one copy per flood-list
remote), source sighting, outer headers (wire.outer_headers_v4).  Per datagram
from the underlay (decap): header checks, VNI -> network, inner source checks,
source sighting, the inner frame to the TAP.  Policy - what to learn - is not
here but in fdb.ForwardingTable, which hears of sightings and writes back.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, TypeVar

from . import offload, wire

BATCH = 64                    # VX_BATCH: frames or datagrams per pump call, at most
BATCH_BYTES = 65536           # VX_BATCH_BYTES: ... and about this many bytes
SLOT = 65536                  # VX_SLOT: the largest frame read at once
MAX_NETS = 256
MAX_FLOOD = 256
MAX_TRUSTED = 65536           # VX_MAX_TRUSTED: VTEPs one network's trust set names
MAX_PREFIXES = 16             # VX_MAX_PREFIXES
MAX_REPLIES = 64              # VX_MAX_REPLIES: answers one encap call makes at most
REPLY_RATE, REPLY_BURST = 100.0, 10.0    # answers into a TAP per second, and in a burst
NEIGH_RATE, NEIGH_BURST = 200.0, 400.0   # VX_NEIGH_RATE, VX_NEIGH_BURST: new addresses reported
SIGHTING_INTERVAL = 1.0       # a known MAC (or neighbour) is reported again after this long
MOVE_INTERVAL = 0.1           # one that moved, after this long (a bouncing MAC is not a sighting per frame)
SOL_UDP, UDP_GRO = 17, 104
VLAN_TYPES = (b"\x81\x00", b"\x88\xa8")      # 802.1Q, 802.1ad
T = TypeVar("T")


class DropReason(enum.IntEnum):
    """Why a frame or datagram was dropped (the VX_DROP_* of native/fastpath.h)."""
    short_datagram = 0        # UDP payload shorter than the VXLAN header
    no_i_flag = 1             # VXLAN I flag clear
    unknown_vni = 2           # no network configured for the VNI
    truncated_inner = 3       # inner frame shorter than an Ethernet header
    bad_source_mac = 4        # inner source MAC multicast or zero
    own_source_mac = 5        # inner source MAC is our TAP's own
    static_conflict = 6       # source MAC is a static entry somewhere else
    runt_frame = 7            # frame from the TAP shorter than 14 bytes
    local_destination = 8     # destination MAC is behind our own TAP
    no_remote = 9             # flooding needed, flood list empty
    too_big = 10              # outer packet larger than the underlay MTU
    underlay_busy = 11        # socket buffer full
    underlay_error = 12       # other send error (no route, ...)
    tap_busy = 13             # TAP queue full
    tap_error = 14            # other TAP write error (device down, ...)
    bad_offload = 15          # TAP super-frame that its virtio header does not describe
    reserved_bits = 16        # reserved VXLAN bits set, and policy says drop (as the kernel)
    inner_vlan = 17           # 802.1Q-tagged inner frame, and policy says discard (RFC 7348 §6.1)
    ecn_not_ect = 18          # outer CE over a non-ECT inner packet (RFC 6040 §4.2)
    gro_oversize = 19         # datagrams of one UDP GRO read past what one pump call holds
    untrusted_vtep = 20       # from a VTEP the network does not trust (accept_from = "known")


class DF(enum.IntEnum):
    """The outer DF bit (ip-link's df): never set, always set, or as the inner IPv4 packet."""
    unset = 0
    set = 1
    inherit = 2


@dataclass
class Counters:
    rx_packets: int = 0       # frames decapsulated and written to the TAP
    rx_bytes: int = 0         # inner frame bytes of those
    tx_packets: int = 0       # datagrams sent on the underlay
    tx_bytes: int = 0         # inner frame bytes of those
    drops: list[int] = field(default_factory=lambda: [0] * len(DropReason))
    csum_completed: int = 0   # inner checksums received in the kernel's partial form, completed
    too_big_replies: int = 0  # ICMP "fragmentation needed" / "packet too big" written to the TAP
    suppressed: int = 0       # ARP requests / neighbour solicitations answered, not flooded
    learn_refused: int = 0    # frames whose source MAC was not reported: the VNI was full
    neigh_refused: int = 0    # ARP/ND frames naming a new address not reported (full, or the rate)

    def drop(self, reason: DropReason) -> None:
        self.drops[reason] += 1

    def drops_by_name(self) -> dict[str, int]:
        return {r.name: self.drops[r] for r in DropReason}


class EntryKind(enum.IntEnum):
    """What made a forwarding entry (VX_FDB_* in native/fastpath.h).  learned: moves when its MAC
    is seen elsewhere, ages; static: never moves (frames claiming its MAC from elsewhere are
    dropped), never ages; evpn: a BGP route's, moved and removed by the control plane only --
    seen behind the local TAP it is reported (the MAC moved here), behind another remote VTEP
    it is neither learned nor dropped."""
    learned = 0
    static = 1
    evpn = 2


@dataclass(frozen=True)
class NetworkConfig:
    """What the data path needs to know of one VNI."""
    vni: int
    local: str                          # outer source address
    tap_fd: int = -1                    # -1: driven in memory only
    tap_queues: tuple[int, ...] = ()     # a multi-queue TAP's queues (the first is tap_fd); the C threads' only
    own_mac: bytes = b"\x00" * 6        # the TAP's MAC: never accepted as a remote source
    learning: bool = True
    learn_remote: bool = True           # learn from what remote VTEPs send (EVPN fabrics: off)
    snoop_tap: bool = False             # report the TAP's ARP/ND senders' addresses (EVPN MAC+IP)
    dst_port: int = wire.VXLAN_PORT
    src_ports: tuple[int, int] = wire.SOURCE_PORTS
    ttl: int = wire.DEFAULT_TTL
    vnet_hdr: bool = False              # the TAP carries a virtio_net_hdr (offloads on)
    tos: int = 0                        # outer DSCP when not inherited
    tos_inherit: bool = False           # outer DSCP = inner DSCP
    df: DF = DF.set
    drop_reserved: bool = False         # drop datagrams with reserved bits set (the kernel's way)
    carry_vlan: bool = False            # carry 802.1Q-tagged inner frames (RFC 7348 §6.1: discard)
    group_ttl: int = wire.DEFAULT_GROUP_TTL  # outer TTL to a multicast group
    mtu: int = 1500                     # the TAP's MTU: a received TCP super-frame is cut to fit it
    underlay_mtu: int = 0               # a larger outer packet is answered with ICMP, dropped (0: no check)
    neigh_suppress: bool = False        # answer ARP and neighbour solicitations for known neighbours
    tap_uso: bool = False               # the TAP takes UDP GSO writes (Linux 6.2 and later)
    refresh: float = SIGHTING_INTERVAL  # a known MAC where it was is reported again after this long


def _refresh(config: NetworkConfig) -> float:
    """As C keeps it: a float, and 1 s when not positive."""
    refresh = struct.unpack("=f", struct.pack("=f", config.refresh))[0]
    return refresh if refresh > 0 else SIGHTING_INTERVAL


class Sighting(NamedTuple):
    """A source MAC seen behind the TAP (vtep None) or a remote VTEP -- and, from an ARP or
    ND frame with neighbour suppression on, the IP it has."""
    net: int
    mac: bytes
    vtep: str | None
    ip: str | None = None


class Datagram(NamedTuple):
    """One outer packet: `header` (IPv4+UDP+VXLAN) then `frame`, to `dst`."""
    net: int
    dst: str
    header: bytes
    frame: bytes


class _Decapsulated(NamedTuple):
    """An inner frame for a TAP, and how the TAP write must describe it (offload.inner_offload):
    a checksum or a segmentation left for the TAP's kernel to finish, or None."""
    net: int
    frame: bytes
    vh: offload.VirtioNetHdr | None


class PumpResult(NamedTuple):
    packets: int                  # frames or datagrams taken in
    sightings: list[Sighting]
    again: bool                   # the batch was full: more may be waiting
    error: int                    # errno of a failed read, else 0


def drop_reason_for_send(err: int) -> DropReason:
    if err == errno.EMSGSIZE:
        return DropReason.too_big
    if err in (errno.EAGAIN, errno.ENOBUFS):
        return DropReason.underlay_busy
    return DropReason.underlay_error


class NetworkView:
    """One VNI's slice of a data plane: the `LookupMirror` a ForwardingTable writes to."""

    def __init__(self, dataplane: "ReferenceDataPlane", net: int) -> None:
        self._dp, self._net = dataplane, net

    def set_entry(self, mac: bytes, vtep: str | None, kind: EntryKind) -> None:
        self._dp.set_entry(self._net, mac, vtep, kind)

    def delete_entry(self, mac: bytes) -> None:
        self._dp.delete_entry(self._net, mac)

    def set_flood(self, remotes: list[str]) -> None:
        self._dp.set_flood(self._net, remotes)

    def set_full(self, full: bool) -> None:
        self._dp.set_full(self._net, full)

    def set_trust(self, on: bool, vteps: list[str], prefixes: list[str]) -> None:
        self._dp.set_trust(self._net, on, vteps, prefixes)

    def trust_vtep(self, vtep: str, trusted: bool) -> None:
        self._dp.trust_vtep(self._net, vtep, trusted)

    def set_neighbour(self, ip: str, mac: bytes) -> None:
        self._dp.set_neighbour(self._net, ip, mac)

    def delete_neighbour(self, ip: str) -> None:
        self._dp.delete_neighbour(self._net, ip)

    def set_neigh_full(self, full: bool) -> None:
        self._dp.set_neigh_full(self._net, full)


@dataclass
class _Slot:
    vtep: str | None
    kind: EntryKind
    reported: float = -1e300
    mac: bytes = b""               # a neighbour's MAC


@dataclass
class _Network:
    config: NetworkConfig
    counters: Counters = field(default_factory=Counters)
    flood: list[str] = field(default_factory=list)
    full: bool = False
    neigh_full: bool = False
    neigh_tokens: float = 0.0
    neigh_stamp: float = 0.0
    trust: bool = False
    trusted: set[str] = field(default_factory=set)
    reply_tokens: float = 0.0
    reply_stamp: float = 0.0
    prefixes: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)

    def trusts(self, vtep: str) -> bool:
        if not self.trust or vtep in self.trusted:
            return True
        address = ipaddress.ip_address(vtep)
        return any(address.version == p.version and address in p for p in self.prefixes)


class ReferenceDataPlane:
    """The data path in plain Python: the specification the C path is tested against."""

    name = "reference"
    threaded = False           # the event loop calls its pumps

    def __init__(self) -> None:
        self._nets: dict[int, _Network] = {}
        self._fdb: dict[tuple[int, bytes], _Slot] = {}
        self._neighbours: dict[tuple[int, str], _Slot] = {}     # (network, IP) -> its MAC in .vtep
        self._underlay = Counters()
        self.replies: list[tuple[int, bytes]] = []   # frames answered into the TAP (take_replies)
        self._sightings_missed = 0                   # past BATCH in one batch (the MAC's next frame tells)

    def take_replies(self) -> list[tuple[int, bytes]]:
        """The frames encap answered into TAPs since the last call: (network, frame)."""
        replies, self.replies = self.replies, []
        return replies

    # ---- configuration (called by the control plane) --------------------------
    def add_network(self, net: int, config: NetworkConfig) -> NetworkView:
        if not 0 <= net < MAX_NETS:
            raise ValueError(f"network index {net} outside 0..{MAX_NETS - 1}")
        lo, hi = config.src_ports
        if lo > hi:
            raise ValueError(f"source port range {lo}-{hi} is empty")
        self._nets[net] = _Network(config)
        return NetworkView(self, net)

    def update_network(self, net: int, config: NetworkConfig) -> None:
        """Change a network's configuration; it keeps its counters, flood list and trust."""
        if config.src_ports[0] > config.src_ports[1]:
            raise ValueError(f"source port range {config.src_ports[0]}-{config.src_ports[1]} is empty")
        self._nets[net].config = config

    def remove_network(self, net: int) -> None:
        self._nets.pop(net, None)
        for key in [k for k in self._fdb if k[0] == net]:
            del self._fdb[key]
        for key in [k for k in self._neighbours if k[0] == net]:
            del self._neighbours[key]

    def set_entry(self, net: int, mac: bytes, vtep: str | None, kind: EntryKind) -> None:
        slot = self._fdb.get((net, mac))
        if slot is None:
            self._fdb[(net, mac)] = _Slot(vtep, EntryKind(kind))
        else:
            slot.vtep, slot.kind = vtep, EntryKind(kind)

    def delete_entry(self, net: int, mac: bytes) -> None:
        self._fdb.pop((net, mac), None)

    def set_flood(self, net: int, remotes: list[str]) -> None:
        if len(remotes) > MAX_FLOOD:
            raise ValueError(f"a flood list holds at most {MAX_FLOOD} remotes")
        self._nets[net].flood = list(remotes)

    def set_full(self, net: int, full: bool) -> None:
        self._nets[net].full = full

    def set_neigh_full(self, net: int, full: bool) -> None:
        self._nets[net].neigh_full = full

    def set_neighbour(self, net: int, ip: str, mac: bytes) -> None:
        slot = self._neighbours.setdefault((net, ip), _Slot(None, EntryKind.learned))
        slot.mac = mac

    def delete_neighbour(self, net: int, ip: str) -> None:
        self._neighbours.pop((net, ip), None)

    def neighbour_count(self) -> int:
        return len(self._neighbours)

    def set_trust(self, net: int, on: bool, vteps: list[str], prefixes: list[str]) -> None:
        if len(vteps) > MAX_TRUSTED or len(prefixes) > MAX_PREFIXES:
            raise ValueError(f"a trust set holds at most {MAX_TRUSTED} VTEPs and {MAX_PREFIXES} prefixes")
        nw = self._nets[net]
        nw.trust, nw.trusted = on, set(vteps)
        nw.prefixes = [ipaddress.ip_network(p) for p in prefixes]

    def trust_vtep(self, net: int, vtep: str, trusted: bool) -> None:
        nw = self._nets[net]
        if trusted and vtep not in nw.trusted and len(nw.trusted) >= MAX_TRUSTED:
            raise OSError(errno.ENOSPC, f"a trust set holds at most {MAX_TRUSTED} VTEPs")
        (nw.trusted.add if trusted else nw.trusted.discard)(vtep)

    def counters(self, net: int) -> Counters:
        return self._nets[net].counters

    def underlay_counters(self) -> Counters:
        return self._underlay

    def fdb_size(self) -> int:
        return len(self._fdb)

    event_slices = 1                                 # (the reference has no thread, so no queue)

    def dropped_events(self) -> int:
        """Sightings lost: more than BATCH in one batch (native.py adds its thread's full queue)."""
        return self._sightings_missed

    # ---- learning -------------------------------------------------------------
    def _see_source(self, net: int, mac: bytes, vtep: str | None, now: float,
                    sightings: list[Sighting]) -> DropReason | None:
        slot = self._fdb.get((net, mac))
        if slot is not None:
            same = slot.vtep == vtep
            if slot.kind == EntryKind.static:
                return None if same else DropReason.static_conflict
            if slot.kind == EntryKind.evpn and (same or vtep is not None):
                return None                             # where it lives is BGP's to say
            nw = self._nets[net]
            if now - slot.reported < (_refresh(nw.config) if same else MOVE_INTERVAL):
                return None
        nw = self._nets[net]
        if not nw.config.learning or (vtep is not None and not nw.config.learn_remote):
            return None
        if slot is None and nw.full:
            nw.counters.learn_refused += 1
            return None
        if any(s.net == net and s.mac == mac and s.vtep == vtep for s in sightings[-8:]):
            return None
        if len(sightings) >= BATCH:
            self._sightings_missed += 1
            return None
        sightings.append(Sighting(net, mac, vtep))
        if slot is not None:
            slot.reported = now
        return None

    # ---- encapsulation: TAP -> underlay -----------------------------------------
    def encap(self, packets: list[tuple[int, bytes]], now: float) -> tuple[list[Datagram], list[Sighting]]:
        """Frames (network, bytes) from TAPs -> datagrams to send, and sightings."""
        out: list[Datagram] = []
        sightings: list[Sighting] = []
        for start in range(0, len(packets), BATCH):
            batch_sightings: list[Sighting] = []
            answered = len(self.replies)
            for net, frame in packets[start:start + BATCH]:
                out.extend(self._encap_one(net, bytes(frame), now, batch_sightings, answered))
            sightings.extend(batch_sightings)
        return out, sightings

    def _encap_one(self, net: int, frame: bytes, now: float, sightings: list[Sighting],
                   answered: int = 0) -> list[Datagram]:
        nw = self._nets[net]
        if len(frame) < wire.ETH_HLEN:
            nw.counters.drop(DropReason.runt_frame)
            return []
        dmac, smac = frame[0:6], frame[6:12]
        if nw.config.snoop_tap and nw.config.learning:    # who has which address behind the TAP (EVPN)
            self._snoop_neighbour(net, frame, None, now, sightings)
        if nw.config.neigh_suppress and wire.mac_is_multicast(dmac) and self._answer_neighbour(net, nw, frame, answered):
            if wire.mac_is_learnable(smac):
                self._see_source(net, smac, None, now, sightings)
            return []
        drop: DropReason | None = None
        dsts: list[str] | None = None
        if not nw.config.carry_vlan and frame[12:14] in VLAN_TYPES:
            drop = DropReason.inner_vlan
        elif not wire.mac_is_multicast(dmac):
            slot = self._fdb.get((net, dmac))
            if slot is not None and slot.vtep is None:
                drop = DropReason.local_destination
            elif slot is not None:
                dsts = [slot.vtep]
        if drop is None and dsts is None:
            dsts = nw.flood
            if not dsts:
                drop = DropReason.no_remote
        v6 = ipaddress.ip_address(nw.config.local).version == 6
        outer = (wire.IPV6_OVERHEAD if v6 else wire.IPV4_OVERHEAD) - wire.ETH_HLEN + len(frame)
        if drop is None and nw.config.underlay_mtu and outer > nw.config.underlay_mtu:
            drop = DropReason.too_big                   # never fragmented (RFC 7348 §4.3): answered
            self._answer_too_big(net, nw, frame, now, answered)
        if wire.mac_is_learnable(smac):
            reason = self._see_source(net, smac, None, now, sightings)
            if drop is None:
                drop = reason
        if drop is not None:
            nw.counters.drop(drop)
            return []
        c = nw.config
        sport = wire.source_port(frame, *c.src_ports)
        tos, dont_fragment = wire.inner_tos(frame)
        df = c.df == DF.set or (c.df == DF.inherit and dont_fragment)
        return [Datagram(net, dst, wire.outer_headers(
                    local=c.local, remote=dst, vni=c.vni, frame=frame, sport=sport, dport=c.dst_port,
                    ttl=c.group_ttl if ipaddress.ip_address(dst).is_multicast else c.ttl,
                    tos=wire.outer_tos(tos, c.tos, c.tos_inherit), df=df),
                    frame)
                for dst in dsts]

    def _answer_neighbour(self, net: int, nw: _Network, frame: bytes, answered: int) -> bool:
        """An ARP request or neighbour solicitation for a known neighbour: answered, not flooded."""
        n = wire.neighbour_frame(frame)
        if n is None or n.kind not in ("arp-request", "solicitation") or len(self.replies) - answered >= MAX_REPLIES:
            return False
        slot = self._neighbours.get((net, n.target))
        reply = wire.neighbour_reply(frame, slot.mac) if slot is not None else None
        if reply is None:
            return False
        self.replies.append((net, reply))
        nw.counters.suppressed += 1
        return True

    def _snoop_neighbour(self, net: int, frame: bytes, peer: str | None, now: float,
                         sightings: list[Sighting]) -> None:
        """Who has which address, from an ARP or ND frame a remote VTEP (or, peer None, the TAP) sent."""
        n = wire.neighbour_frame(frame)
        if n is None or n.sender_mac is None or not wire.is_host_address(n.sender) or n.sender_mac != frame[6:12]:
            return
        slot = self._neighbours.get((net, n.sender))
        if slot is not None:
            same = slot.mac == n.sender_mac
            if now - slot.reported < (SIGHTING_INTERVAL if same else MOVE_INTERVAL):
                return
        if len(sightings) >= BATCH:
            self._sightings_missed += 1
            return
        nw = self._nets[net]
        if slot is None and not self._new_address_allowed(nw, now):
            nw.counters.neigh_refused += 1
            return
        sightings.append(Sighting(net, n.sender_mac, peer, n.sender))
        if slot is not None:
            slot.reported = now

    @staticmethod
    def _new_address_allowed(nw: _Network, now: float) -> bool:
        """Not when the neighbour table is full; else at most NEIGH_RATE a second (a bucket)."""
        if nw.neigh_full:
            return False
        nw.neigh_tokens = min(NEIGH_BURST, nw.neigh_tokens + max(0.0, now - nw.neigh_stamp) * NEIGH_RATE)
        nw.neigh_stamp = now
        if nw.neigh_tokens < 1.0:
            return False
        nw.neigh_tokens -= 1.0
        return True

    def _answer_too_big(self, net: int, nw: _Network, frame: bytes, now: float, answered: int) -> None:
        if len(self.replies) - answered >= MAX_REPLIES:
            return
        elapsed = max(0.0, now - nw.reply_stamp)
        nw.reply_tokens = min(REPLY_BURST, nw.reply_tokens + elapsed * REPLY_RATE)
        nw.reply_stamp = now
        if nw.reply_tokens < 1.0:
            return
        v6 = ipaddress.ip_address(nw.config.local).version == 6
        reply = wire.too_big_reply(frame, nw.config.underlay_mtu - (wire.IPV6_OVERHEAD if v6 else wire.IPV4_OVERHEAD))
        if reply is not None:
            self.replies.append((net, reply))
            nw.reply_tokens -= 1.0
            nw.counters.too_big_replies += 1

    # ---- decapsulation: underlay -> TAP -----------------------------------------
    def decap(self, packets: list[tuple], now: float) -> tuple[list[tuple[int, bytes]], list[Sighting]]:
        """UDP payloads (bytes, outer source[, outer TOS[, GRO size of a tunnel super-packet]]) ->
        inner frames (network, bytes), and sightings."""
        frames, sightings = self._decap(packets, now)
        return [(net, frame) for net, frame, _ in frames], sightings

    def _decap(self, packets: list[tuple], now: float) -> tuple[list[_Decapsulated], list[Sighting]]:
        out: list[_Decapsulated] = []
        sightings: list[Sighting] = []
        for start in range(0, len(packets), BATCH):
            batch_sightings: list[Sighting] = []
            for payload, peer, *extra in packets[start:start + BATCH]:
                tos, gso_hint = (list(extra) + [0, 0])[:2]
                frame = self._decap_one(bytes(payload), peer, tos, gso_hint, now, batch_sightings)
                if frame is not None:
                    out.append(frame)
            sightings.extend(batch_sightings)
        return out, sightings

    def _decap_one(self, payload: bytes, peer: str, outer_tos: int, gso_hint: int, now: float,
                   sightings: list[Sighting]) -> _Decapsulated | None:
        try:
            header = wire.VxlanHeader.decode(payload)
        except wire.WireError:
            self._underlay.drop(DropReason.short_datagram)
            return None
        # Reserved bits are ignored on receipt, as RFC 7348 §5 says (the kernel drops them).
        if not header.flags & wire.FLAG_I:
            self._underlay.drop(DropReason.no_i_flag)
            return None
        net = self._network_of(header.vni)
        if net is None:
            self._underlay.drop(DropReason.unknown_vni)
            return None
        nw = self._nets[net]
        frame = payload[wire.VXLAN_HLEN:]
        smac = frame[6:12]
        reserved = payload[0] & ~wire.FLAG_I or any(payload[1:4]) or payload[7]
        if not nw.trusts(peer):
            drop = DropReason.untrusted_vtep            # before anything is learned from it
        elif nw.config.drop_reserved and reserved:
            drop = DropReason.reserved_bits
        elif len(frame) < wire.ETH_HLEN:
            drop = DropReason.truncated_inner
        elif not nw.config.carry_vlan and frame[12:14] in VLAN_TYPES:
            drop = DropReason.inner_vlan
        elif not wire.mac_is_learnable(smac):
            drop = DropReason.bad_source_mac
        elif smac == nw.config.own_mac:
            drop = DropReason.own_source_mac
        else:
            drop = self._see_source(net, smac, peer, now, sightings)
        if drop is None:                   # after learning, as in the kernel's vxlan_rcv
            decapsulated = wire.ecn_decapsulate(outer_tos, frame)
            if decapsulated is None:
                drop = DropReason.ecn_not_ect
            else:
                frame = decapsulated
        if drop is not None:
            nw.counters.drop(drop)
            return None
        if nw.config.neigh_suppress and nw.config.learning and nw.config.learn_remote:    # who has which address
            self._snoop_neighbour(net, frame, peer, now, sightings)
        # A kernel VTEP leaves inner checksums, and the segmentation of TSO/USO super-frames,
        # to the NIC; a veth or virtio-net passes them on unfinished.  The TAP write asks its
        # kernel to finish them; without a virtio header, finish the checksum here (a
        # super-frame is cut into segments at the write, with their checksums).
        vh = offload.inner_offload(frame, nw.config.mtu, gso_hint)
        if vh is not None:
            nw.counters.csum_completed += 1
            if not nw.config.vnet_hdr and not vh.gso_type:
                frame, vh = offload.finish_checksum(frame, vh), None
        nw.counters.rx_packets += 1
        nw.counters.rx_bytes += len(frame)
        return _Decapsulated(net, frame, vh)

    def _network_of(self, vni: int) -> int | None:
        for net in sorted(self._nets):
            if self._nets[net].config.vni == vni:
                return net
        return None

    # ---- the pumps: syscalls around encap and decap -----------------------------------
    # ---- offloads (see offload.py) -----------------------------------------------------
    def gso_split(self, vh: bytes, frame: bytes, net: int = 0) -> list[bytes]:
        return offload.gso_split(offload.VirtioNetHdr.decode(vh), frame)

    def coalesce(self, frames: list[tuple[int, bytes]], offloads: list[offload.VirtioNetHdr | None] | None = None,
                 udp: bool = True) -> list[tuple[int, bytes, bytes]]:
        return [(w.net, w.vh.encode(), w.frame) for w in offload.coalesce(frames, offloads, udp)]

    def set_gso(self, gso: bool) -> None:
        """UDP_SEGMENT sends are an optimisation of the C path only."""

    def gso_enabled(self) -> bool:
        return False

    def gso_sockets(self) -> int:
        return 0

    # ---- the pumps: syscalls around encap and decap -----------------------------------
    @staticmethod
    def _drain(read_one: Callable[[], T], size: Callable[[T], int]) -> tuple[list[T], int]:
        """read_one() until it would block, BATCH times or BATCH_BYTES at most: (what it
        read, errno or 0).  A small packet on another fd waits for no more than that."""
        got: list[T] = []
        total = 0
        while len(got) < BATCH and total < BATCH_BYTES:
            try:
                got.append(read_one())
                total += size(got[-1])
            except BlockingIOError:
                break
            except OSError as e:
                return got, e.errno or 0
        return got, 0

    def pump_tap(self, net: int, raw_sock: socket.socket, now: float) -> PumpResult:
        nw = self._nets[net]
        frames: list[tuple[int, bytes]] = []
        reads, error = self._drain(lambda: os.read(nw.config.tap_fd, SLOT), len)
        for data in reads:
            if not nw.config.vnet_hdr:
                frames.append((net, data))
                continue
            try:
                frames += [(net, f) for f in self.gso_split(data[:offload.VNET_HLEN], data[offload.VNET_HLEN:])]
            except offload.OffloadError:
                nw.counters.drop(DropReason.bad_offload)
        datagrams, sightings = self.encap(frames, now)
        for net_, reply in self.take_replies():          # answered (too big): back into the TAP
            try:
                os.write(self._nets[net_].config.tap_fd,
                         (offload.VirtioNetHdr().encode() if self._nets[net_].config.vnet_hdr else b"") + reply)
            except OSError:
                pass
        for d in datagrams:
            counters = self._nets[d.net].counters
            try:
                raw_sock.sendmsg([d.header, d.frame], [], 0, (d.dst, 0))
            except OSError as e:
                counters.drop(drop_reason_for_send(e.errno or 0))
                continue
            counters.tx_packets += 1
            counters.tx_bytes += len(d.frame)
        return PumpResult(len(reads), sightings, len(reads) == BATCH or sum(map(len, reads)) >= BATCH_BYTES, error)

    def pump_underlay(self, udp_sock: socket.socket, now: float) -> PumpResult:
        received: list[tuple[bytes, str, int, int]] = []
        reads, error = self._drain(lambda: udp_sock.recvmsg(SLOT, 64), lambda r: len(r[0]))
        for data, ancillary, _flags, (peer, _port, *_) in reads:
            # A UDP_GRO read holds several datagrams of one size (the last may be shorter):
            # split them here, never hand them on as one -- unless it is one datagram whose
            # inner frame is a super-packet of datagrams of that size.
            size = next((int.from_bytes(d[:4], "little") for level, kind, d in ancillary
                         if level == SOL_UDP and kind == UDP_GRO), 0) or len(data) or 1
            tos = next((d[0] for level, kind, d in ancillary if d and (level, kind) in (
                (socket.IPPROTO_IP, socket.IP_TOS), (socket.IPPROTO_IPV6, socket.IPV6_TCLASS))), 0)
            if offload.gro_is_one_packet(data, size):
                received.append((data, peer, tos, size if size <= 0xFFFF else 0))
                continue
            received += [(data[i:i + size], peer, tos, 0) for i in range(0, len(data), size)] or [(b"", peer, tos, 0)]
        frames, sightings = self._decap(received, now)
        writes: list[tuple[int, list[bytes], list[bytes]]] = []     # (net, frames received, TAP writes)
        offloaded: list[_Decapsulated] = []
        for d in frames:
            config = self._nets[d.net].config
            if not self._tap_takes(config, d.vh):
                try:
                    writes.append((d.net, [d.frame], self._cut_for_tap(config, d)))
                except offload.OffloadError:
                    counters = self._nets[d.net].counters
                    counters.rx_packets -= 1
                    counters.rx_bytes -= len(d.frame)
                    counters.drop(DropReason.bad_offload)
            elif config.vnet_hdr:
                offloaded.append(d)
            else:
                writes.append((d.net, [d.frame], [d.frame]))
        udp = all(n.config.tap_uso for n in self._nets.values() if n.config.vnet_hdr)
        merged = offload.coalesce([(d.net, d.frame) for d in offloaded], [d.vh for d in offloaded], udp)
        writes += [(w.net, w.frames, [w.vh.encode() + w.frame]) for w in merged]
        for net, carried, tap_writes in writes:
            nw = self._nets[net]
            try:
                for data in tap_writes:
                    os.write(nw.config.tap_fd, data)
            except OSError as e:
                reason = DropReason.tap_busy if e.errno == errno.EAGAIN else DropReason.tap_error
                for frame in carried:
                    nw.counters.rx_packets -= 1
                    nw.counters.rx_bytes -= len(frame)
                    nw.counters.drop(reason)
        return PumpResult(len(reads), sightings, len(reads) == BATCH or sum(len(r[0]) for r in reads) >= BATCH_BYTES,
                          error)

    @staticmethod
    def _tap_takes(config: NetworkConfig, vh: offload.VirtioNetHdr | None) -> bool:
        """Can the TAP take this frame as decap described it, in one write?"""
        if vh is None or not vh.gso_type:
            return True
        return config.vnet_hdr and ((vh.gso_type & ~offload.GSO_ECN) != offload.GSO_UDP_L4 or config.tap_uso)

    @staticmethod
    def _cut_for_tap(config: NetworkConfig, d: _Decapsulated) -> list[bytes]:
        """A super-frame the TAP cannot take as a GSO write, as the writes of its segments."""
        assert d.vh is not None
        plain = offload.VirtioNetHdr().encode() if config.vnet_hdr else b""
        return [plain + s for s in offload.gso_split(d.vh, d.frame)]
