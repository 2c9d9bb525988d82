"""Prometheus metrics: what `vxland stats` reports, in the exposition format, over HTTP.

Off unless `--metrics ADDR:PORT` (or `metrics = "ADDR:PORT"` in the config) is given;
`metrics_allow` limits who may scrape.  The HTTP endpoint is served on the daemon's own
event loop, not in a thread of Python: a scrape is one short callback on the control plane,
which reads the data path's counters under its lock (held by the data-path threads for the
table steps of a batch, never across a syscall).  Clients are bounded (MetricsServer says how) without
locking real scrapers out.  The numbers are those of Daemon.stats(), turned into metric
families here:

    vxland_build_info{version,datapath}                  1
    vxland_start_time_seconds                            when the daemon started (Unix time)
    vxland_rx_packets_total{vni} / _rx_bytes_total       frames decapsulated into the TAP, inner bytes
    vxland_tx_packets_total{vni} / _tx_bytes_total       datagrams sent on the underlay, inner bytes
    vxland_drops_total{vni,reason}                       by reason; vni="" for the underlay's own
    vxland_checksums_completed_total{vni}                inner checksums a kernel VTEP left partial
    vxland_fdb_entries{vni,kind}                         kind learned | static | evpn
    vxland_flood_list_remotes{vni}                       remotes BUM frames go to (the group included)
    vxland_learn_refused_total{vni}                      frames from MACs not learned: the VNI was full
    vxland_too_big_replies_total{vni}                    ICMP answers to frames too big for the tunnel
    vxland_suppressed_total{vni}                         ARP/ND requests answered, not flooded
    vxland_neighbours{vni}                               addresses known for suppression
    vxland_neigh_refused_total{vni}                      addresses not learned (caps, rate)
    vxland_neigh_conflicts_total{vni}                    claims of an address another MAC holds
    vxland_neigh_contested{vni}                          addresses two live MACs claim (not answered)
    vxland_evpn_refused_total{vni}                       EVPN entries not installed (max_evpn)
    vxland_flood_refused_total{vni}                      EVPN flood-list VTEPs left out
    vxland_offload_enabled{offload}                      tap | udp_gso | udp_gro: 1 or 0
    vxland_udp_gso_sockets                               sockets the GSO pool holds
    vxland_reloads_total{result}                         done | refused
    vxland_internal_errors_total                         bugs caught (see the log)
    vxland_datapath_thread                               1 while the native data path's thread pumps
    vxland_sightings_dropped_total                       MAC sightings lost (the thread's queue or a batch full)
    vxland_metrics_rejected_total{reason}                scrapers turned away: not_allowed | evicted |
                                                         too_large | timeout

and with [evpn]:

    vxland_evpn_connected                                1 while gobgpd answers
    vxland_evpn_sessions{state}                          BGP sessions by state (established, active, ...)
    vxland_evpn_routes{direction}                        announced | received, now
    vxland_evpn_route_updates_total{kind}                received | withdrawn | announced | withdrawn_ours
    vxland_evpn_ignored_total{reason}                    routes not used, by why
    vxland_evpn_resyncs_total / _resync_corrections_total  whole-table resynchronisations, and what they fixed
    vxland_evpn_gobgpd_restarts_total                    a gobgpd that vxland runs, restarted
    vxland_evpn_duplicate_macs_total                     MACs frozen for moving too often (RFC 7432 §15.1)
    vxland_evpn_frozen_macs                              ... frozen now
    vxland_evpn_connections_total                        connections made to gobgpd's API
    vxland_evpn_tables_cleared_total                     routes removed: no gobgpd for the hold time
    vxland_evpn_static_conflicts_total                   routes for a MAC that is static here
    vxland_evpn_table_refusals_total                     route actions the tables refused (caps, VTEPs)
    vxland_evpn_internal_errors_total                    internal errors of the EVPN service

and with [etcd]:

    vxland_etcd_connected                                1 while the store answers
    vxland_etcd_retries                                  attempts since it last answered (0 when it does)
    vxland_etcd_routes{direction}                        announced | received, now
    vxland_etcd_route_updates_total{kind}                received | withdrawn | announced | withdrawn_ours
    vxland_etcd_ignored_total{reason}                    keys not used, by why
    vxland_etcd_held_back                                MAC routes whose VTEP is no member, held now
    vxland_etcd_blocks{vni,state}                        1 for each network's address-block state
                                                         (held | claiming | lost | exhausted | none | refused)
    vxland_etcd_{resyncs,compactions,connections,fail_overs,lease_losses,block_lease_losses,block_losses,
                 block_races,stale_deleted,restored,static_conflicts,table_refusals,internal_errors}_total
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from . import __version__
from .errors import VxlandError

log = logging.getLogger("vxland.metrics")

MAX_CLIENTS = 16
# The classic text format, which every Prometheus reads (the names here are all classic ones).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


def parse_address(text: str) -> tuple[str, int]:
    """ADDR:PORT, [IPv6]:PORT, or :PORT (every address) -> (host, port); VxlandError if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise VxlandError(f"metrics {text!r}: want ADDR:PORT, e.g. 127.0.0.1:9475")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


#: Per-VNI figures of Daemon.stats() -> (metric name, a counter (else a gauge), help).  Every
#: figure of a VNI is here but its name, TAP and drops (vxland_drops_total), its FDB sizes
#: (vxland_fdb_entries) and flood list (vxland_flood_list_remotes).
PER_VNI = {
    "rx_packets": ("rx_packets", True, "Frames decapsulated and written to the TAP"),
    "rx_bytes": ("rx_bytes", True, "Inner frame bytes written to the TAP"),
    "tx_packets": ("tx_packets", True, "Datagrams sent on the underlay"),
    "tx_bytes": ("tx_bytes", True, "Inner frame bytes sent on the underlay"),
    "csum_completed": ("checksums_completed", True,
                       "Inner checksums received in the partial form a kernel VTEP leaves, finished"),
    "learn_refused": ("learn_refused", True, "Frames from MACs not learned because the VNI held max_learned"),
    "too_big_replies": ("too_big_replies", True, "ICMP fragmentation-needed / packet-too-big answers to the TAP"),
    "suppressed": ("suppressed", True, "ARP requests and neighbour solicitations answered, not flooded"),
    "neighbours": ("neighbours", False, "Addresses known for ARP/ND suppression (contested ones included)"),
    "neigh_refused": ("neigh_refused", True, "Addresses not learned: the VNI or the MAC held all it may, or too "
                                             "many new ones a second"),
    "neigh_conflicts": ("neigh_conflicts", True, "Claims of an address another live MAC (or a static or EVPN "
                                                 "entry) holds: forged ARP/ND, or two hosts with one address"),
    "neigh_contested": ("neigh_contested", False, "Addresses two live MACs claim: answered for by nobody"),
    "evpn_refused": ("evpn_refused", True, "EVPN entries and addresses not installed: max_evpn, or too many VTEPs"),
    "flood_refused": ("flood_refused", True, "EVPN flood-list VTEPs left out: unusable here, or no room"),
}


def families(stats: dict[str, Any], started_unix: float) -> Iterator[Any]:
    """Prometheus metric families from a Daemon.stats() snapshot."""
    info = InfoMetricFamily("vxland_build", "vxland's version and data path", labels=["version", "datapath"])
    info.add_metric([__version__, stats["datapath"]], {})
    yield info
    yield GaugeMetricFamily("vxland_start_time_seconds", "When the daemon started, in Unix time", value=started_unix)
    per_vni = {key: (CounterMetricFamily if total else GaugeMetricFamily)(
        f"vxland_{name}", text, labels=["vni"]) for key, (name, total, text) in PER_VNI.items()}
    drops = CounterMetricFamily("vxland_drops", "Frames and datagrams dropped, by reason", labels=["vni", "reason"])
    fdb = GaugeMetricFamily("vxland_fdb_entries", "Forwarding table entries", labels=["vni", "kind"])
    flood = GaugeMetricFamily("vxland_flood_list_remotes", "Remote VTEPs (and group) a BUM frame goes to",
                              labels=["vni"])
    underlay = dict(stats["drops"])
    for v in stats["vnis"]:
        vni = str(v["vni"])
        for key, family in per_vni.items():
            family.add_metric([vni], v[key])
        for reason, count in v["drops"].items():
            drops.add_metric([vni, reason], count)
            underlay[reason] -= count
        fdb.add_metric([vni, "learned"], v["fdb_learned"])
        fdb.add_metric([vni, "static"], v["fdb_entries"] - v["fdb_learned"] - v["fdb_evpn"])
        fdb.add_metric([vni, "evpn"], v["fdb_evpn"])
        flood.add_metric([vni], v["flood_list"])
    for reason, count in underlay.items():
        if reason != "tap_overflow":              # a TAP's: always per network
            drops.add_metric(["", reason], count)
    yield from per_vni.values()
    yield from (drops, fdb, flood)
    rejected = CounterMetricFamily("vxland_metrics_rejected", "Metrics clients turned away, by why",
                                   labels=["reason"])
    for reason, count in sorted(stats.get("metrics_rejected", {}).items()):
        rejected.add_metric([reason], count)
    yield rejected
    offload = GaugeMetricFamily("vxland_offload_enabled", "Offloads in use (1) or not (0)", labels=["offload"])
    for name in ("tap", "udp_gso", "udp_gro"):
        offload.add_metric([name], int(bool(stats["offloads"][name])))
    yield offload
    yield GaugeMetricFamily("vxland_udp_gso_sockets", "UDP sockets the GSO send pool holds",
                            value=stats["offloads"]["udp_gso_sockets"])
    reloads = CounterMetricFamily("vxland_reloads", "Configuration reloads", labels=["result"])
    for result, count in stats["reloads"].items():
        reloads.add_metric([result], count)
    yield reloads
    yield CounterMetricFamily("vxland_internal_errors", "Internal errors caught (see the log)",
                              value=stats["internal_errors"])
    yield GaugeMetricFamily("vxland_datapath_thread", "1 while the native data path's own thread pumps",
                            value=int(stats["datapath_thread"]))
    yield CounterMetricFamily("vxland_sightings_dropped", "MAC sightings lost: the data-path thread's queue "
                              "or a batch had no room (the MAC's next frame reports it again)", value=stats["sightings_dropped"])
    if "evpn" in stats:
        yield from _evpn_families(stats["evpn"])
    if "etcd" in stats:
        yield from _etcd_families(stats["etcd"])


def _route_families(plane: str, e: dict[str, Any]) -> Iterator[Any]:
    """What EVPN and etcd count alike: routes now, route updates, what was ignored."""
    routes = GaugeMetricFamily(f"vxland_{plane}_routes", "Routes announced and used now", labels=["direction"])
    routes.add_metric(["announced"], e["routes_announced"])
    routes.add_metric(["received"], e["routes_in_use"])
    yield routes
    updates = CounterMetricFamily(f"vxland_{plane}_route_updates", "Route updates", labels=["kind"])
    for kind, key in (("received", "routes_received"), ("withdrawn", "routes_withdrawn"),
                      ("announced", "announced"), ("withdrawn_ours", "withdrawn")):
        updates.add_metric([kind], e[key])
    yield updates
    ignored = CounterMetricFamily(f"vxland_{plane}_ignored", "Routes not used, by reason", labels=["reason"])
    for reason, count in sorted(e["ignored"].items()):
        ignored.add_metric([reason], count)
    yield ignored


def _etcd_families(e: dict[str, Any]) -> Iterator[Any]:
    yield GaugeMetricFamily("vxland_etcd_connected", "1 while the store answers", value=int(e["connected"]))
    yield GaugeMetricFamily("vxland_etcd_retries", "Attempts since the store last answered", value=e["retries"])
    yield from _route_families("etcd", e)
    yield GaugeMetricFamily("vxland_etcd_held_back", "MAC routes held back: their VTEP is no member",
                            value=e["held_back"])
    blocks = GaugeMetricFamily("vxland_etcd_blocks", "Each network's address-block state", labels=["vni", "state"])
    for vni, a in e["networks"].items():
        if a:
            blocks.add_metric([vni, a["state"]], 1)
    yield blocks
    for key in ("resyncs", "compactions", "connections", "fail_overs", "lease_losses", "block_lease_losses",
                "block_losses", "block_races", "stale_deleted", "restored", "static_conflicts", "table_refusals",
                "internal_errors"):
        yield CounterMetricFamily(f"vxland_etcd_{key}", f"etcd control plane: {key.replace('_', ' ')}", value=e[key])


def _evpn_families(e: dict[str, Any]) -> Iterator[Any]:
    yield GaugeMetricFamily("vxland_evpn_connected", "1 while gobgpd answers", value=int(e["connected"]))
    sessions = GaugeMetricFamily("vxland_evpn_sessions", "BGP sessions by state", labels=["state"])
    for state, count in sorted(e["sessions"].items()):
        sessions.add_metric([state], count)
    yield sessions
    yield from _route_families("evpn", e)
    for name, key, text in (("resyncs", "resyncs", "Whole-table resynchronisations with gobgpd"),
                            ("resync_corrections", "resync_corrections", "Table changes a periodic resync made"),
                            ("gobgpd_restarts", "gobgpd_restarts", "Restarts of the gobgpd vxland runs"),
                            ("duplicate_macs", "duplicates", "MACs frozen for moving too often"),
                            ("connections", "connections", "Connections made to gobgpd's API"),
                            ("tables_cleared", "tables_cleared", "Times the routes were removed: no gobgpd for "
                                                                 "longer than the hold time"),
                            ("static_conflicts", "static_conflicts", "Routes for a MAC that is static here"),
                            ("table_refusals", "table_refusals", "Route actions the tables refused (caps, "
                                                                 "unusable VTEPs)"),
                            ("internal_errors", "internal_errors", "Internal errors of the EVPN service")):
        yield CounterMetricFamily(f"vxland_evpn_{name}", text, value=e[key])
    yield GaugeMetricFamily("vxland_evpn_frozen_macs", "MACs frozen as duplicates now", value=e["frozen"])


class _Collector:
    def __init__(self, stats: Callable[[], dict[str, Any]], started_unix: float) -> None:
        self._stats, self._started = stats, started_unix

    def collect(self) -> Iterator[Any]:
        return families(self._stats(), self._started)


class MetricsServer:
    """GET /metrics on ADDR:PORT, answered on the event loop.

    Clients are bounded without locking real scrapers out: at most MAX_CLIENTS connections at
    once, and when a new one finds them all taken, the oldest that has not sent its request yet
    makes room (an idle or slow client, never a scrape being answered) -- a real scraper sends
    its request at once.  A request head longer than MAX_REQUEST is answered 431, one that does
    not come within REQUEST_TIMEOUT is dropped; what the client still sends is read and
    discarded, briefly, before the close, so that it sees the answer and not a reset.  With
    `allow` (prefixes), other addresses are closed at once.  Each of these is counted."""

    def __init__(self, address: str, stats: Callable[[], dict[str, Any]], started_unix: float | None = None,
                 allow: list[str] | tuple[str, ...] = ()) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.allow = [ipaddress.ip_network(p, strict=False) for p in allow]
        self.rejected: dict[str, int] = {"not_allowed": 0, "evicted": 0, "too_large": 0, "timeout": 0}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self._with_own_counts(stats),
                                          started_unix if started_unix is not None else time.time()))
        self.scrapes = 0
        self._server: asyncio.AbstractServer | None = None
        self._waiting: dict[asyncio.StreamWriter, float] = {}    # no request yet: since when
        self._serving = 0

    def _with_own_counts(self, stats: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        return lambda: {**stats(), "metrics_rejected": dict(self.rejected)}

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True,
                                                      limit=MAX_REQUEST)
        except OSError as e:
            raise VxlandError(f"cannot serve metrics on {self.address}: {e.strerror}") from None
        log.info("metrics on http://%s/metrics%s", self.address,
                 f" for {', '.join(map(str, self.allow))}" if self.allow else "")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        if not self.allow:
            return True
        peer = writer.get_extra_info("peername")
        try:
            address = ipaddress.ip_address(peer[0].split("%")[0])
        except (TypeError, ValueError, IndexError):
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address.version == p.version and address in p for p in self.allow)

    def _make_room(self) -> bool:
        """Room for one more client: True if there is, or the oldest waiting one was evicted."""
        if len(self._waiting) + self._serving < MAX_CLIENTS:
            return True
        if not self._waiting:
            return False
        oldest = min(self._waiting, key=self._waiting.__getitem__)
        del self._waiting[oldest]
        oldest.close()                        # its _serve sees the end of its stream
        self.rejected["evicted"] += 1
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._allowed(writer):
            self.rejected["not_allowed"] += 1
            writer.close()
            return
        if not self._make_room():
            writer.close()
            return
        self._waiting[writer] = time.monotonic()
        serving = False
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            if self._waiting.pop(writer, None) is None:
                return                                # evicted meanwhile
            self._serving += 1
            serving = True
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + [""]
            if method not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
            elif path.split("?")[0] in ("/metrics", "/"):
                status, body, kind = "200 OK", generate_latest(self.registry), CONTENT_TYPE
                self.scrapes += 1
            else:
                status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
            await self._answer(writer, status, body, kind, method == "HEAD")
        except asyncio.LimitOverrunError:
            self.rejected["too_large"] += 1
            await self._answer(writer, "431 Request Header Fields Too Large", b"request head too large\n",
                               "text/plain", False, reader)
        except asyncio.TimeoutError:
            self.rejected["timeout"] += 1
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._waiting.pop(writer, None)
            if serving:
                self._serving -= 1
            writer.close()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: str, body: bytes, kind: str, head_only: bool,
                      reader: asyncio.StreamReader | None = None) -> None:
        try:
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + (b"" if head_only else body))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
            if reader is not None:                # unread input would turn the close into a reset
                writer.write_eof()
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline and await asyncio.wait_for(reader.read(65536), 1.0):
                    pass
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
