"""Prometheus metrics: what `vxland stats` reports, in the exposition format, over HTTP.

Off unless `--metrics ADDR:PORT` (or `metrics = "ADDR:PORT"` in the config) is given.  The
HTTP endpoint is served on the daemon's own event loop, not in a thread of Python: a scrape
is one short callback on the control plane, which reads the data path's counters under its
lock (held by the data-path thread for one batch at a time, never across a wait), the request is read with a size and time limit, and at most MAX_CLIENTS scrapers are
served at once.  The numbers are those of Daemon.stats(), turned into metric families here:

    vxland_build_info{version,datapath}                  1
    vxland_start_time_seconds                            when the daemon started (Unix time)
    vxland_rx_packets_total{vni} / _rx_bytes_total       frames decapsulated into the TAP, inner bytes
    vxland_tx_packets_total{vni} / _tx_bytes_total       datagrams sent on the underlay, inner bytes
    vxland_drops_total{vni,reason}                       by reason; vni="" for the underlay's own
    vxland_checksums_completed_total{vni}                inner checksums a kernel VTEP left partial
    vxland_fdb_entries{vni,kind}                         kind learned | static | evpn
    vxland_flood_list_remotes{vni}                       remotes BUM frames go to (the group included)
    vxland_learn_refused_total{vni}                      MACs not learned: the VNI was full
    vxland_offload_enabled{offload}                      tap | udp_gso | udp_gro: 1 or 0
    vxland_udp_gso_sockets                               sockets the GSO pool holds
    vxland_reloads_total{result}                         done | refused
    vxland_internal_errors_total                         bugs caught (see the log)
    vxland_datapath_thread                               1 while the native data path's thread pumps
    vxland_sightings_dropped_total                       MAC sightings the thread's queue had no room for

and with [evpn]:

    vxland_evpn_connected                                1 while gobgpd answers
    vxland_evpn_sessions{state}                          BGP sessions by state (established, active, ...)
    vxland_evpn_routes{direction}                        announced | received, now
    vxland_evpn_route_updates_total{kind}                received | withdrawn | announced | withdrawn_ours
    vxland_evpn_ignored_total{reason}                    routes not used, by why
    vxland_evpn_resyncs_total / _resync_corrections_total  whole-table resynchronisations, and what they fixed
    vxland_evpn_gobgpd_restarts_total                    a gobgpd that vxland runs, restarted
    vxland_evpn_duplicate_macs_total                     MACs frozen for moving too often (RFC 7432 §15.1)
"""

from __future__ import annotations

import asyncio
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


def families(stats: dict[str, Any], started_unix: float) -> Iterator[Any]:
    """Prometheus metric families from a Daemon.stats() snapshot."""
    info = InfoMetricFamily("vxland_build", "vxland's version and data path", labels=["version", "datapath"])
    info.add_metric([__version__, stats["datapath"]], {})
    yield info
    yield GaugeMetricFamily("vxland_start_time_seconds", "When the daemon started, in Unix time", value=started_unix)
    counters = {name: CounterMetricFamily(f"vxland_{name}", text, labels=["vni"]) for name, text in (
        ("rx_packets", "Frames decapsulated and written to the TAP"),
        ("rx_bytes", "Inner frame bytes written to the TAP"),
        ("tx_packets", "Datagrams sent on the underlay"),
        ("tx_bytes", "Inner frame bytes sent on the underlay"),
        ("checksums_completed", "Inner checksums received in the partial form a kernel VTEP leaves, finished"),
        ("learn_refused", "MACs not learned because the VNI held max_learned entries"))}
    drops = CounterMetricFamily("vxland_drops", "Frames and datagrams dropped, by reason", labels=["vni", "reason"])
    fdb = GaugeMetricFamily("vxland_fdb_entries", "Forwarding table entries", labels=["vni", "kind"])
    flood = GaugeMetricFamily("vxland_flood_list_remotes", "Remote VTEPs (and group) a BUM frame goes to",
                              labels=["vni"])
    underlay = dict(stats["drops"])
    for v in stats["vnis"]:
        vni = str(v["vni"])
        for name in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "learn_refused"):
            counters[name].add_metric([vni], v[name])
        counters["checksums_completed"].add_metric([vni], v["csum_completed"])
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
    yield from counters.values()
    yield from (drops, fdb, flood)
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
    yield CounterMetricFamily("vxland_sightings_dropped", "MAC sightings the data-path thread's queue had "
                              "no room for (reported again within a second)", value=stats["sightings_dropped"])
    if "evpn" in stats:
        yield from _evpn_families(stats["evpn"])


def _evpn_families(e: dict[str, Any]) -> Iterator[Any]:
    yield GaugeMetricFamily("vxland_evpn_connected", "1 while gobgpd answers", value=int(e["connected"]))
    sessions = GaugeMetricFamily("vxland_evpn_sessions", "BGP sessions by state", labels=["state"])
    for state, count in sorted(e["sessions"].items()):
        sessions.add_metric([state], count)
    yield sessions
    routes = GaugeMetricFamily("vxland_evpn_routes", "EVPN routes announced and used now", labels=["direction"])
    routes.add_metric(["announced"], e["routes_announced"])
    routes.add_metric(["received"], e["routes_in_use"])
    yield routes
    updates = CounterMetricFamily("vxland_evpn_route_updates", "Route updates", labels=["kind"])
    for kind, key in (("received", "routes_received"), ("withdrawn", "routes_withdrawn"),
                      ("announced", "announced"), ("withdrawn_ours", "withdrawn")):
        updates.add_metric([kind], e[key])
    yield updates
    ignored = CounterMetricFamily("vxland_evpn_ignored", "Routes not used, by reason", labels=["reason"])
    for reason, count in sorted(e["ignored"].items()):
        ignored.add_metric([reason], count)
    yield ignored
    for name, key, text in (("resyncs", "resyncs", "Whole-table resynchronisations with gobgpd"),
                            ("resync_corrections", "resync_corrections", "Table changes a periodic resync made"),
                            ("gobgpd_restarts", "gobgpd_restarts", "Restarts of the gobgpd vxland runs"),
                            ("duplicate_macs", "duplicates", "MACs frozen for moving too often")):
        yield CounterMetricFamily(f"vxland_evpn_{name}", text, value=e[key])


class _Collector:
    def __init__(self, stats: Callable[[], dict[str, Any]], started_unix: float) -> None:
        self._stats, self._started = stats, started_unix

    def collect(self) -> Iterator[Any]:
        return families(self._stats(), self._started)


class MetricsServer:
    """GET /metrics on ADDR:PORT, answered on the event loop."""

    def __init__(self, address: str, stats: Callable[[], dict[str, Any]], started_unix: float | None = None) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(stats, started_unix if started_unix is not None else time.time()))
        self.scrapes = 0
        self._server: asyncio.AbstractServer | None = None
        self._clients = 0

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True,
                                                      limit=MAX_REQUEST)
        except OSError as e:
            raise VxlandError(f"cannot serve metrics on {self.address}: {e.strerror}") from None
        log.info("metrics on http://%s/metrics", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + [""]
            if method not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
            elif path.split("?")[0] in ("/metrics", "/"):
                status, body, kind = "200 OK", generate_latest(self.registry), CONTENT_TYPE
                self.scrapes += 1
            else:
                status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + (body if method == "GET" else b""))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError,
                ValueError):
            pass
        finally:
            self._clients -= 1
            writer.close()
