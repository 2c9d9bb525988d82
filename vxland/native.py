"""The C fast path behind the data-path interface of datapath.ReferenceDataPlane.

A thin cffi wrapper: configuration calls copy Python values into the C
dataplane's structures; the pumps are one C call per batch (the GIL is released
for its duration); the in-memory encap/decap used by tests convert lists.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from .datapath import (BATCH, BATCH_BYTES, Counters, Datagram, DropReason, EntryKind, NetworkConfig, NetworkView,
                       PumpResult, Sighting)
from .offload import OffloadError, VirtioNetHdr

try:
    from ._fastpath import ffi, lib
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "vxland's C fast path (vxland._fastpath) is not built: run `pip install .` "
        "(or use --datapath reference)") from e

assert lib.VX_BATCH == BATCH and lib.VX_BATCH_BYTES == BATCH_BYTES and lib.VX_DROP_MAX == len(DropReason)

_ENCAP_OUT = lib.VX_MAX_FLOOD
TAKE = 4096                     # sightings taken from the thread's queue (VX_MAX_EVENTS) per call


def _addr(address: str | None):
    a = ffi.new("struct vx_addr *")
    if address is not None:
        ip = ipaddress.ip_address(address)
        a.family = lib.VX_AF_INET6 if ip.version == 6 else lib.VX_AF_INET
        ffi.memmove(a.ip, ip.packed, len(ip.packed))
    return a


def _addr_str(a) -> str:
    if a.family == lib.VX_AF_INET6:
        return str(ipaddress.IPv6Address(bytes(ffi.buffer(a.ip, 16))))
    return str(ipaddress.IPv4Address(bytes(ffi.buffer(a.ip, 4))))


class _Vteps:
    """VTEP addresses both ways, remembered: every sighting names one, every learned entry
    passes one to C, and parsing it with ipaddress each time was half of a MAC move's cost.
    The same str object comes back for the same address (the table's entries share it).
    Bounded: addresses come from the wire, so past `limit` it starts again empty."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._c: dict[str, Any] = {}              # str -> struct vx_addr * (read-only inputs)
        self._str: dict[bytes, str] = {}          # family byte + 16 address bytes -> str

    def c(self, address: str):
        a = self._c.get(address)
        return a if a is not None else self._remember(self._c, address, _addr)

    def str(self, a) -> str:
        key = bytes((a.family,)) + bytes(ffi.buffer(a.ip, 16))
        s = self._str.get(key)
        return s if s is not None else self._remember(self._str, key, lambda _: _addr_str(a))

    def _remember(self, known: dict, key: Any, make: Any) -> Any:
        if len(known) >= self.limit:
            known.clear()
        value = known[key] = make(key)
        return value


_vteps = _Vteps()
_NO_ADDR = _addr(None)


def _sightings(array, n: int) -> list[Sighting]:
    return [Sighting(s.net, bytes(ffi.buffer(s.mac, 6)), None if s.local else _vteps.str(s.vtep),
                     _addr_str(s.ip) if s.ip.family else None)
            for s in (array[i] for i in range(n))]


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


class NativeDataPlane:
    """The data path in C (native/*.c, interface native/fastpath.h)."""

    name = "native"

    def __init__(self) -> None:
        self._dp = ffi.gc(lib.vx_dataplane_new(), lib.vx_dataplane_free)
        if self._dp == ffi.NULL:
            raise MemoryError("vx_dataplane_new failed")
        self._result = ffi.new("struct vx_pump_result *")
        self.replies: list[tuple[int, bytes]] = []   # frames encap answered into TAPs (take_replies)

    def take_replies(self) -> list[tuple[int, bytes]]:
        replies, self.replies = self.replies, []
        return replies

    # ---- configuration -----------------------------------------------------
    def add_network(self, net: int, config: NetworkConfig) -> NetworkView:
        self.update_network(net, config)
        return NetworkView(self, net)

    def update_network(self, net: int, config: NetworkConfig) -> None:
        """Set a network's configuration; one in use keeps its counters, flood list and trust."""
        c = ffi.new("struct vx_network_config *")
        c.vni = config.vni
        c.tap_fd = config.tap_fd
        if len(config.tap_queues) > lib.VX_MAX_QUEUES:
            raise ValueError(f"{len(config.tap_queues)} TAP queues: at most {lib.VX_MAX_QUEUES}")
        c.n_queues = len(config.tap_queues)
        for q, fd in enumerate(config.tap_queues):
            c.queue_fds[q] = fd
        ffi.memmove(c.own_mac, config.own_mac, 6)
        c.learning, c.learn_remote, c.snoop_tap = int(config.learning), int(config.learn_remote), int(config.snoop_tap)
        c.local = _addr(config.local)[0]
        c.dst_port = config.dst_port
        c.src_port_min, c.src_port_max = config.src_ports
        c.ttl = config.ttl
        c.vnet_hdr = int(config.vnet_hdr)
        c.tos, c.tos_inherit, c.df = config.tos, int(config.tos_inherit), int(config.df)
        c.drop_reserved, c.carry_vlan = int(config.drop_reserved), int(config.carry_vlan)
        c.group_ttl = config.group_ttl
        c.mtu, c.tap_uso, c.underlay_mtu = config.mtu, int(config.tap_uso), config.underlay_mtu
        c.neigh_suppress = int(config.neigh_suppress)
        c.refresh = config.refresh
        if not 0 <= net < lib.VX_MAX_NETS or config.src_ports[0] > config.src_ports[1]:
            raise ValueError(f"bad network {net} or source port range {config.src_ports}")
        _check(lib.vx_network_set(self._dp, net, c), "vx_network_set")

    def remove_network(self, net: int) -> None:
        lib.vx_network_del(self._dp, net)

    def set_entry(self, net: int, mac: bytes, vtep: str | None, kind: EntryKind) -> None:
        rc = lib.vx_fdb_set(self._dp, net, mac, vtep is None, _NO_ADDR if vtep is None else _vteps.c(vtep), kind)
        if rc < 0:                                 # (inline: a MAC move is a few of these calls)
            _check(rc, "vx_fdb_set")

    def delete_entry(self, net: int, mac: bytes) -> None:
        lib.vx_fdb_del(self._dp, net, mac)

    def set_flood(self, net: int, remotes: list[str]) -> None:
        array = ffi.new("struct vx_addr[]", max(1, len(remotes)))
        for i, r in enumerate(remotes):           # (each type-3 route re-sends the list: 256 at most,
            array[i] = _vteps.c(r)[0]               # each address parsed once)
        _check(lib.vx_flood_set(self._dp, net, array, len(remotes)), "vx_flood_set")

    def set_full(self, net: int, full: bool) -> None:
        _check(lib.vx_network_set_full(self._dp, net, int(full)), "vx_network_set_full")

    def set_neigh_full(self, net: int, full: bool) -> None:
        _check(lib.vx_network_set_neigh_full(self._dp, net, int(full)), "vx_network_set_neigh_full")

    def set_neighbour(self, net: int, ip: str, mac: bytes) -> None:
        _check(lib.vx_neigh_set(self._dp, net, _addr(ip), mac), "vx_neigh_set")

    def delete_neighbour(self, net: int, ip: str) -> None:
        lib.vx_neigh_del(self._dp, net, _addr(ip))

    def neighbour_count(self) -> int:
        return lib.vx_neigh_count(self._dp)

    def set_trust(self, net: int, on: bool, vteps: list[str], prefixes: list[str]) -> None:
        addresses = ffi.new("struct vx_addr[]", max(1, len(vteps)))
        for i, v in enumerate(vteps):
            addresses[i] = _addr(v)[0]
        nets = ffi.new("struct vx_prefix[]", max(1, len(prefixes)))
        for i, text in enumerate(prefixes):
            network = ipaddress.ip_network(text)
            nets[i].addr = _addr(str(network.network_address))[0]
            nets[i].len = network.prefixlen
        _check(lib.vx_trust_set(self._dp, net, int(on), addresses, len(vteps), nets, len(prefixes)),
               "vx_trust_set")

    def trust_vtep(self, net: int, vtep: str, trusted: bool) -> None:
        _check(lib.vx_trust_vtep(self._dp, net, _addr(vtep), int(trusted)), "vx_trust_vtep")

    def counters(self, net: int) -> Counters:
        out = ffi.new("struct vx_counters *")
        _check(lib.vx_counters_read(self._dp, net, out), "vx_counters_read")
        return self._counters(out)

    def underlay_counters(self) -> Counters:
        return self.counters(-1)

    def fdb_size(self) -> int:
        return lib.vx_fdb_count(self._dp)

    @staticmethod
    def _counters(c) -> Counters:
        return Counters(c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes,
                        [c.drops[i] for i in range(len(DropReason))], c.csum_completed, c.too_big_replies,
                        c.suppressed, c.learn_refused, c.neigh_refused)

    # ---- offloads ------------------------------------------------------------------
    def set_gso(self, gso: bool) -> None:
        lib.vx_set_gso(self._dp, int(gso))

    def gso_enabled(self) -> bool:
        return bool(lib.vx_gso_enabled(self._dp))

    def gso_sockets(self) -> int:
        return lib.vx_gso_sockets(self._dp)

    def gso_split(self, vh: bytes, frame: bytes, net: int = 0) -> list[bytes]:
        buf = ffi.from_buffer(bytearray(frame))
        hdr = ffi.new("struct vx_vnet_hdr *")
        ffi.memmove(hdr, vh, lib.VX_VNET_HLEN)
        out = ffi.new("struct vx_packet[]", lib.VX_MAX_PKTS)
        heads = ffi.new("uint8_t[]", lib.VX_MAX_PKTS * lib.VX_SEG_HEAD)
        n = lib.vx_gso_split(hdr, buf, len(frame), net, out, lib.VX_MAX_PKTS, heads)
        if n < 0:
            raise OffloadError("virtio header does not describe the frame")
        return [bytes(ffi.buffer(p.data, p.len)) + (bytes(ffi.buffer(p.payload, p.payload_len))
                                                     if p.payload_len else b"")
                for p in (out[i] for i in range(n))]

    def coalesce(self, frames: list[tuple[int, bytes]], offloads: list[VirtioNetHdr | None] | None = None,
                 udp: bool = True) -> list[tuple[int, bytes, bytes]]:
        keep = [ffi.from_buffer(bytes(f)) for _, f in frames]
        pk = ffi.new("struct vx_packet[]", max(1, len(frames)))
        for i, (net, f) in enumerate(frames):
            pk[i].data, pk[i].len, pk[i].net = keep[i], len(f), net
            if offloads and offloads[i]:
                ffi.memmove(ffi.addressof(pk[i], "vh"), offloads[i].encode(), lib.VX_VNET_HLEN)
        out = ffi.new("struct vx_tap_frame[]", max(1, len(frames)))
        n = lib.vx_coalesce(pk, len(frames), int(udp), out, len(frames))
        result = []
        for t in (out[i] for i in range(n)):
            vh = bytes(ffi.buffer(ffi.addressof(t, "vh"), lib.VX_VNET_HLEN))
            if t.count == 1:
                frame = bytes(frames[t.first][1])
            else:
                frame = bytes(ffi.buffer(t.head, t.hdr_len)) + b"".join(
                    bytes(frames[k][1])[t.hdr_len:] for k in range(t.first, t.first + t.count))
            result.append((t.net, vh, frame))
        return result

    # ---- in memory (tests, tools) ----------------------------------------------
    def encap(self, packets: list[tuple[int, bytes]], now: float) -> tuple[list[Datagram], list[Sighting]]:
        out_datagrams: list[Datagram] = []
        out_sightings: list[Sighting] = []
        out = ffi.new("struct vx_datagram[]", _ENCAP_OUT)
        consumed = ffi.new("int *")
        n_sightings = ffi.new("int *")
        sightings = ffi.new("struct vx_sighting[]", BATCH)
        replies = ffi.new("struct vx_reply[]", lib.VX_MAX_REPLIES)
        n_replies = ffi.new("int *")
        for start in range(0, len(packets), BATCH):
            chunk = packets[start:start + BATCH]
            keep = [ffi.from_buffer(bytes(frame)) for _, frame in chunk]
            pk = ffi.new("struct vx_packet[]", len(chunk))
            for i, (net, frame) in enumerate(chunk):
                pk[i].data, pk[i].len, pk[i].net = keep[i], len(frame), net
            n_sightings[0] = 0
            done = 0
            while done < len(chunk):
                n_replies[0] = 0
                m = lib.vx_encap(self._dp, now, pk + done, len(chunk) - done, consumed,
                                 out, _ENCAP_OUT, sightings, n_sightings, replies, n_replies)
                self.replies += [(r.net, bytes(ffi.buffer(r.frame, r.len)))
                                 for r in (replies[i] for i in range(n_replies[0]))]
                for d in (out[i] for i in range(m)):
                    out_datagrams.append(Datagram(
                        d.net, _addr_str(d.dst), bytes(ffi.buffer(d.header, d.header_len)),
                        bytes(ffi.buffer(d.frame, d.frame_len))))
                done += consumed[0]
            out_sightings += _sightings(sightings, n_sightings[0])
        return out_datagrams, out_sightings

    def decap(self, packets: list[tuple], now: float) -> tuple[list[tuple[int, bytes]], list[Sighting]]:
        out_frames: list[tuple[int, bytes]] = []
        out_sightings: list[Sighting] = []
        n_sightings = ffi.new("int *")
        sightings = ffi.new("struct vx_sighting[]", BATCH)
        for start in range(0, len(packets), BATCH):
            chunk = packets[start:start + BATCH]
            keep = [ffi.from_buffer(bytearray(payload)) for payload, *_ in chunk]
            pk = ffi.new("struct vx_packet[]", len(chunk))
            for i, (payload, peer, *extra) in enumerate(chunk):
                pk[i].data, pk[i].len = keep[i], len(payload)
                pk[i].peer = _addr(peer)[0]
                pk[i].outer_tos, pk[i].vh.gso_size = (list(extra) + [0, 0])[:2]
            n_sightings[0] = 0
            lib.vx_decap(self._dp, now, pk, len(chunk), sightings, n_sightings)
            out_frames += [(pk[i].net, bytes(ffi.buffer(pk[i].data, pk[i].len)))
                           for i in range(len(chunk)) if pk[i].net >= 0]
            out_sightings += _sightings(sightings, n_sightings[0])
        return out_frames, out_sightings

    # ---- the pumps ---------------------------------------------------------------
    def pump_tap(self, net: int, raw_sock: socket.socket, now: float) -> PumpResult:
        r = self._result
        _check(lib.vx_pump_tap(self._dp, net, raw_sock.fileno(), now, r), "vx_pump_tap")
        return PumpResult(r.packets, _sightings(r.sightings, r.n_sightings), bool(r.again), r.error)

    def pump_underlay(self, udp_sock: socket.socket, now: float) -> PumpResult:
        r = self._result
        lib.vx_pump_underlay(self._dp, udp_sock.fileno(), now, r)
        return PumpResult(r.packets, _sightings(r.sightings, r.n_sightings), bool(r.again), r.error)

    # ---- the data-path thread (native/thread.c) ----------------------------------------
    threaded = True            # the daemon may hand the wake-ups to a thread of C

    def start_thread(self, raw_sock: socket.socket, threads: int = 1) -> int:
        """Start the data-path threads, sending on raw_sock; the fd that becomes readable when
        sightings or a failed TAP wait (take_events)."""
        _check(lib.vx_thread_start(self._dp, raw_sock.fileno(), threads), "vx_thread_start")
        self._events = ffi.new("struct vx_sighting[]", TAKE)
        self._error_net = ffi.new("int *")
        return lib.vx_thread_event_fd(self._dp)

    def watch_tap(self, net: int) -> None:
        """Every queue of the network's TAP."""
        _check(lib.vx_thread_watch_tap(self._dp, net), "vx_thread_watch_tap")

    def watch_underlay(self, sock: socket.socket, queue: int = 0) -> None:
        """A receiving socket, as queue pair `queue`'s (what it receives goes to TAP queue `queue`)."""
        _check(lib.vx_thread_watch_underlay(self._dp, sock.fileno(), queue), "vx_thread_watch_underlay")

    def thread_count(self) -> int:
        return lib.vx_thread_count(self._dp)

    def queue_packets(self) -> dict[str, list[int]]:
        """What each queue pair carried: frames read from TAP queues (every TAP's queue q
        summed), datagrams from underlay sockets, by queue."""
        out = ffi.new("uint64_t[]", lib.VX_MAX_QUEUES)
        found = {}
        for kind, underlay in (("tap", 0), ("underlay", 1)):
            n = lib.vx_thread_queue_packets(self._dp, underlay, out, lib.VX_MAX_QUEUES)
            found[kind] = [int(out[i]) for i in range(n)]
        return found

    def unwatch(self, fd: int) -> None:
        """Stop watching fd (before it is closed)."""
        lib.vx_thread_unwatch(self._dp, fd)

    def thread_failed(self) -> int:
        """0 while the data-path thread serves; else the errno it ended with."""
        return lib.vx_thread_failed(self._dp)

    #: take_events calls that empty a full queue
    event_slices = lib.VX_MAX_EVENTS // TAKE + 1

    def take_events(self) -> tuple[list[Sighting], list[tuple[int, int]]]:
        """What the thread queued: sightings (at most TAKE a call: a burst of new MACs is learned
        in slices, between which the event loop serves the rest; the event fd stays readable
        while more wait), and (network, errno) of TAPs that failed for good."""
        n = lib.vx_thread_take(self._dp, self._events, TAKE)
        sightings = _sightings(self._events, n)
        errors = []
        while err := lib.vx_thread_tap_error(self._dp, self._error_net):
            errors.append((self._error_net[0], err))
        return sightings, errors

    def dropped_events(self) -> int:
        return lib.vx_thread_dropped_events(self._dp)

    def stop_thread(self) -> None:
        lib.vx_thread_stop(self._dp)
