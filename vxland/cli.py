"""The `vxland` command: run the daemon, or talk to a running one over its control socket."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable

from . import __version__, wire
from .config import (DEFAULT_CONTROL, DEFAULT_MAX_LEARNED, DaemonConfig, EvpnConfig, EvpnNeighbor, NetworkSpec,
                     StaticEntry, load_toml)
from .errors import VxlandError
from .fdb import DEFAULT_AGEING, FDB_COLUMNS, fdb_rows_json

DESCRIPTION = """\
vxland is a userspace VXLAN tunnel endpoint (RFC 7348).  It reads Ethernet frames
from a TAP device, encapsulates them in UDP to the remote VTEP that a learned
forwarding table names (or to every remote on the flood list, for broadcast,
multicast and unknown destinations), and decapsulates what arrives back into
the TAP.  Attach the TAP to a Linux bridge and containers on different hosts
share one Ethernet segment.  It interoperates with the kernel's own VXLAN."""

RUN_EPILOG = """\
examples:
  vxland run --local 192.0.2.1 --vni 42 --tap vx42 --bridge br0 --peer 192.0.2.2
  vxland run --local 192.0.2.1 --vni 42 --tap vx42 --bridge br0 \\
             --evpn-asn 65000 --evpn-neighbor 192.0.2.2 --evpn-neighbor 192.0.2.3@65001
  vxland run --config /etc/vxland.toml

With --evpn-asn (or [evpn] in the file), no peer list is needed: vxland runs
gobgpd, announces its VNI and the MACs behind its TAP as BGP EVPN routes, and
builds its flood list and forwarding table from everyone else's.  With [etcd]
in the file (and etcd = true in a network), the hosts find each other in an
etcd cluster instead, and each claims an address block there that the CNI
plugin hands out (flannel's model; `vxland etcd show`).  A host that stops
renewing its lease is gone from every table within the [etcd] ttl.

The overlay MTU (what containers should use; `vxland networks show`) defaults
to the underlay interface's MTU minus 50 (IPv4 outer headers plus the inner
Ethernet header; minus 70 over IPv6), because a VTEP must not fragment; a
larger frame is answered with ICMP "fragmentation needed".
A TAP that vxland creates is removed when it stops; one created beforehand
as persistent (ip tuntap add mode tap NAME) stays.  Learned entries age out
after --ageing seconds without traffic *from* the MAC (a busy one is refreshed
every ageing/30 seconds, at least every second).  Needs root, or
CAP_NET_ADMIN and CAP_NET_RAW; started as root it runs as user vxland once
its devices are open (--user).  SIGHUP reloads --config.  Exit status: 0 after
SIGINT/SIGTERM, 2 for bad arguments or configuration, 1 when the daemon cannot
start or can no longer forward (a TAP deleted, its data-path thread ended,
its network's subnets contradicting the etcd store's)."""

CLIENT_EPILOG = f"Talks to the daemon over its control socket (default {DEFAULT_CONTROL}); --json prints machine-readable output."


class _Parser(argparse.ArgumentParser):
    """One line for a usage mistake, pointing at --help, instead of the whole usage block."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"vxland: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def _vni(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= wire.VNI_MAX:
        raise argparse.ArgumentTypeError(f"VNI {value} is outside 0..{wire.VNI_MAX}")
    return value


def _tos(text: str) -> int | str:
    if text == "inherit":
        return text
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor inherit") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"tos {value} is outside 0..255")
    return value


def _port_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.replace(":", "-").split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN-MAX") from None
    return lo, hi


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", metavar="PATH", default=DEFAULT_CONTROL,
                   help=f"the daemon's control socket (default {DEFAULT_CONTROL})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vxland", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vxland {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    run = verbs.add_parser("run", help="run the VTEP daemon", description=DESCRIPTION, epilog=RUN_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", metavar="FILE", help="TOML file with any number of networks "
                     "(see the README); the flags below then only override its top-level settings")
    run.add_argument("--local", metavar="IP", help="underlay address, IPv4 or IPv6: outer source, and where "
                     "VXLAN is received; the peers must be of its family")
    run.add_argument("--vni", type=_vni, help="the VXLAN network identifier (0..16777215)")
    run.add_argument("--tap", metavar="NAME", help="TAP device to create (or attach to) for this VNI")
    run.add_argument("--bridge", metavar="BR", help="attach the TAP to this existing Linux bridge")
    run.add_argument("--peer", metavar="IP", action="append", default=[],
                     help="remote VTEP for the flood list (broadcast, multicast, unknown unicast); repeatable")
    run.add_argument("--group", metavar="IP",
                     help="a multicast group for broadcast, multicast and unknown unicast, besides the "
                          "flood list; joined on the underlay interface (RFC 7348 §4.2)")
    run.add_argument("--static", metavar="MAC=IP", action="append", default=[],
                     help="a permanent FDB entry: MAC behind VTEP IP; repeatable")
    run.add_argument("--port", type=int, help=f"VXLAN UDP port (default {wire.VXLAN_PORT}; the kernel's is 8472)")
    run.add_argument("--source-ports", type=_port_range, metavar="MIN-MAX",
                     help="range of outer UDP source ports, chosen per inner flow (default 49152-65535)")
    run.add_argument("--ttl", type=int, help=f"outer IP TTL or hop limit (default {wire.DEFAULT_TTL})")
    run.add_argument("--group-ttl", type=int, metavar="N",
                     help=f"outer TTL to a multicast group (default {wire.DEFAULT_GROUP_TTL}, as the kernel)")
    run.add_argument("--tos", type=_tos, metavar="N|inherit",
                     help="the outer TOS byte (DSCP x 4, as ip-link's tos: 184 is DSCP 46), or inherit the "
                          "inner one (default 0); the ECN bits always follow the inner packet (RFC 6040)")
    run.add_argument("--df", choices=("set", "unset", "inherit"),
                     help="outer DF bit: always, never, or as the inner IPv4 packet (default set); "
                          "vxland never fragments either way")
    run.add_argument("--reserved-bits", choices=("ignore", "drop"),
                     help="received VXLAN headers with reserved bits set: ignore them as RFC 7348 says "
                          "(default), or drop the datagram as the Linux kernel does")
    run.add_argument("--inner-vlan", choices=("discard", "carry"),
                     help="802.1Q-tagged inner frames: discard as RFC 7348 §6.1 says (default), "
                          "or carry them as Linux does")
    run.add_argument("--accept-from", choices=("any", "known"),
                     help="take VXLAN from any VTEP (default, as the kernel), or only from known ones: "
                          "the flood list, static entries' VTEPs and --accept-prefix")
    run.add_argument("--accept-prefix", metavar="PREFIX", action="append", default=None,
                     help="with --accept-from known, also take VXLAN from VTEPs in this prefix "
                          "(e.g. 198.51.100.0/24); repeatable")
    run.add_argument("--mtu", type=int, help="the overlay MTU containers should use (default: underlay MTU - 50, "
                     "or - 70 over IPv6); the TAP itself takes any frame and answers too-big ones with ICMP")
    run.add_argument("--ageing", type=float, default=None, metavar="SECONDS",
                     help=f"lifetime of a learned entry without traffic from it (default {DEFAULT_AGEING:g})")
    run.add_argument("--max-learned", type=int, metavar="N",
                     help=f"cap on learned entries per VNI (default {DEFAULT_MAX_LEARNED}; "
                          "past it new MACs are flooded to, not learned)")
    run.add_argument("--no-learning", action="store_true", help="learn nothing: static entries and flooding only")
    run.add_argument("--neigh-suppress", action="store_true",
                     help="answer ARP requests and IPv6 neighbour solicitations from the TAP for addresses "
                          "whose MAC is known (learned from remote ARP/ND, or static), instead of flooding them")
    evpn = run.add_argument_group("BGP EVPN (through gobgpd; the file's [evpn] section says the same)")
    evpn.add_argument("--evpn-asn", type=int, metavar="ASN",
                      help="announce and learn this network over BGP EVPN, as this AS")
    evpn.add_argument("--evpn-neighbor", metavar="IP[@ASN]", action="append", default=[],
                      help="a BGP neighbor (iBGP unless @ASN names another AS); repeatable")
    evpn.add_argument("--evpn-router-id", metavar="IPv4", help="the BGP router id (default --local)")
    evpn.add_argument("--evpn-api", metavar="ADDR:PORT", help="gobgpd's gRPC API, on loopback (default 127.0.0.1:50051)")
    evpn.add_argument("--gobgpd", choices=("run", "external"),
                      help="run: vxland runs gobgpd itself (default); external: one runs already, its "
                           "neighbors in its own configuration")
    evpn.add_argument("--learn-remote", dest="learn_remote", action="store_const", const=True, default=None,
                      help="with EVPN, also learn MACs from what remote VTEPs send (off by default: the "
                           "routes say where MACs are)")
    run.add_argument("--control", metavar="PATH", help=f"control socket (default {DEFAULT_CONTROL})")
    run.add_argument("--metrics", metavar="ADDR:PORT",
                     help="serve Prometheus metrics at http://ADDR:PORT/metrics (off by default; "
                          "e.g. 127.0.0.1:9475, [::1]:9475, or :9475 for every address)")
    run.add_argument("--metrics-allow", metavar="PREFIX", action="append", default=None,
                     help="serve metrics only to scrapers in this prefix (repeatable; default: any)")
    run.add_argument("--user", metavar="USER",
                     help="once its devices and sockets are open, run as this user, keeping only "
                          "CAP_NET_ADMIN and CAP_NET_RAW (default, when started as root: vxland, which "
                          "scripts/install.sh makes; root keeps uid 0)")
    run.add_argument("--cni-data-dir", metavar="DIR",
                     help="the CNI plugin's dataDir, whose containers get their entries back when vxland "
                          "starts (default /var/lib/cni/vxland)")
    run.add_argument("--datapath", choices=("native", "reference"),
                     help="native: the C fast path (default); reference: the pure-Python path")
    run.add_argument("--no-datapath-thread", dest="datapath_thread", action="store_const", const=False,
                     default=None, help="have the event loop wake for each readable TAP and socket instead of "
                     "the native data path's own thread (more latency and CPU; for comparison)")
    run.add_argument("--queues", type=int, metavar="N",
                     help="queues per TAP and underlay sockets, which the kernel spreads flows over so that "
                          "a sparse flow does not wait behind a bulk one (1-16; default: one per core, at "
                          "least 4; 1: one of each); the data-path threads only")
    run.add_argument("--datapath-threads", type=int, metavar="N",
                     help="data-path threads, each serving its share of the queues (1-16; default: one per "
                          "core, at most one per queue)")
    run.add_argument("--no-offloads", dest="offloads", action="store_const", const=False, default=None,
                     help="turn off TAP segmentation/checksum offload and UDP GSO/GRO (for kernels "
                          "or NICs that misbehave with them)")
    run.add_argument("-v", "--verbose", action="count", default=0,
                     help="log more (-v: learning and ageing, at debug level)")

    fdb = verbs.add_parser("fdb", help="show or change the forwarding table", epilog=CLIENT_EPILOG)
    fdb_verbs = fdb.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = fdb_verbs.add_parser("show", help="list entries: MAC, VNI, VTEP or local port, static, age",
                             epilog=CLIENT_EPILOG)
    p.add_argument("--vni", type=_vni, help="only this VNI")
    _client_options(p)
    p = fdb_verbs.add_parser("add", help="add a static entry (never ages, never moves)", epilog=CLIENT_EPILOG)
    p.add_argument("--mac", required=True)
    p.add_argument("--vni", type=_vni, required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--vtep", metavar="IP", help="the remote VTEP the MAC is behind")
    where.add_argument("--local", action="store_true", help="the MAC is behind this host's TAP (a container here)")
    p.add_argument("--ip", metavar="ADDRESS", help="the IPv4 or IPv6 address the MAC has (for ARP/ND suppression)")
    _client_options(p)
    p = fdb_verbs.add_parser("del", help="delete an entry, learned or static", epilog=CLIENT_EPILOG)
    p.add_argument("--mac", required=True)
    p.add_argument("--vni", type=_vni, required=True)
    _client_options(p)

    peers = verbs.add_parser("peers", help="show or change a VNI's flood list", epilog=CLIENT_EPILOG)
    peer_verbs = peers.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = peer_verbs.add_parser("show", help="list the flood list of each VNI", epilog=CLIENT_EPILOG)
    p.add_argument("--vni", type=_vni, help="only this VNI")
    _client_options(p)
    for action, text in (("add", "append a remote VTEP"), ("del", "remove a remote VTEP")):
        p = peer_verbs.add_parser(action, help=f"{text} to/from the flood list", epilog=CLIENT_EPILOG)
        p.add_argument("--vni", type=_vni, required=True)
        p.add_argument("address", metavar="IP")
        _client_options(p)

    p = verbs.add_parser("stats", help="per-VNI packet and byte counters, and drops by reason",
                         epilog=CLIENT_EPILOG)
    _client_options(p)

    evpn_parser = verbs.add_parser("evpn", help="BGP EVPN: sessions and routes", epilog=CLIENT_EPILOG)
    evpn_verbs = evpn_parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = evpn_verbs.add_parser("show", help="gobgpd, its BGP sessions, the routes announced and received",
                              description="What the EVPN service knows: the gobgpd it talks to, each BGP "
                              "session (state, uptime, EVPN routes received and accepted), the routes vxland "
                              "announces (type 3 per VNI, type 2 per local MAC and address) and those it uses "
                              "from others, and its counters.", epilog=CLIENT_EPILOG)
    _client_options(p)

    etcd_parser = verbs.add_parser("etcd", help="etcd: the store, this host's blocks, the routes",
                                   epilog=CLIENT_EPILOG)
    etcd_verbs = etcd_parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = etcd_verbs.add_parser("show", help="the store, the address blocks held, the routes written and read",
                              description="What the etcd control plane knows: the endpoint it talks to (or "
                              "that it is retrying), each network's address blocks and their state (held, "
                              "claiming, lost, exhausted, none, refused), the routes this host writes (its "
                              "VTEP per VNI, each local MAC and address) and those it uses from others, and "
                              "its counters.", epilog=CLIENT_EPILOG)
    _client_options(p)

    networks = verbs.add_parser("networks", help="show the networks: VNI, TAP, bridge, MTU, address blocks",
                                epilog=CLIENT_EPILOG)
    network_verbs = networks.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = network_verbs.add_parser("show", help="each network's VNI, TAP, bridge and the MTU its containers "
                                 "should use", epilog=CLIENT_EPILOG)
    p.add_argument("--vni", type=_vni, help="only this VNI")
    _client_options(p)

    p = verbs.add_parser("reload", help="re-read the config file and apply the difference live",
                         description="Ask the daemon to read its --config file again and apply what changed, "
                         "without a restart: networks added and removed, flood lists, groups, static entries, "
                         "ageing, caps, acceptance, outer-header options.  Networks that did not change lose "
                         "nothing.  What cannot change live (local, port, datapath, offloads, control, user) "
                         "refuses the whole reload, and the running configuration is kept.  SIGHUP does the same.",
                         epilog=CLIENT_EPILOG)
    _client_options(p)

    p = verbs.add_parser("capture", help="write what a port carries to a pcap file",
                         description="Capture what vxland's TAP (inner frames) or underlay (VXLAN "
                         "datagrams to and from its port) carries, into a pcap file that Wireshark and "
                         "tshark read.  GSO super-packets are split into the packets the wire carries.  "
                         "Run it in the daemon's network namespace.", epilog=CLIENT_EPILOG)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--side", choices=("tap", "underlay"), help="ask the daemon which device to watch")
    where.add_argument("--interface", metavar="IF", help="watch this device; no daemon needed")
    p.add_argument("--vni", type=_vni, help="with --side tap: the network whose TAP to watch (default the first)")
    p.add_argument("--port", type=int, help="keep only UDP to or from this port (default: the daemon's, "
                   "with --side underlay)")
    p.add_argument("--as-received", action="store_true",
                   help="write the bytes as the kernel holds them: GSO super-packets whole, and inner "
                        "checksums that a sender left to offload unfinished (what a userspace VTEP reads "
                        "from a virtual link), instead of what a wire would carry")
    p.add_argument("-w", "--write", metavar="FILE", required=True, help="the pcap file to write")
    p.add_argument("-c", "--count", type=int, help="stop after this many packets")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--control", metavar="PATH", default=DEFAULT_CONTROL,
                   help=f"the daemon's control socket, with --side (default {DEFAULT_CONTROL})")

    p = verbs.add_parser("demo", help="build two hosts in network namespaces and show containers "
                         "talking through vxland (ping, iperf3)")
    p.add_argument("--seconds", type=int, default=3, help="iperf3 duration per direction (default 3)")
    p.add_argument("--datapath", choices=("native", "reference"), default="native")
    p.add_argument("--containers", choices=("podman",), metavar="ENGINE",
                   help="podman: real containers started by Podman (with a store of its own) and "
                   "attached by vxland's CNI plugin, instead of bare namespaces; needs podman, runc, "
                   "containernetworking-plugins and busybox-static")
    return parser


def config_from_args(args: argparse.Namespace) -> DaemonConfig:
    if args.config:
        config = load_toml(args.config)
        for flag in ("vni", "tap", "bridge", "mtu", "ageing", "max_learned", "group"):
            if getattr(args, flag) is not None:
                raise VxlandError(f"--{flag.replace('_', '-')} describes a network: with --config, "
                                  "put it in the file's [[network]] table")
        if args.peer or args.static or args.no_learning or args.neigh_suppress or args.learn_remote:
            raise VxlandError("--peer, --static, --no-learning, --neigh-suppress and --learn-remote describe "
                              "a network: with --config, put them in the file")
        if args.evpn_asn is not None or args.evpn_neighbor or args.evpn_router_id or args.evpn_api or args.gobgpd:
            raise VxlandError("the --evpn-* flags and --gobgpd describe [evpn]: with --config, put it in the file")
    else:
        missing = [f"--{f}" for f in ("local", "vni", "tap") if getattr(args, f) is None]
        if missing:
            raise VxlandError(f"missing {', '.join(missing)} (or give --config FILE)")
        static = []
        for item in args.static:
            mac, sep, vtep = item.partition("=")
            if not sep:
                raise VxlandError(f"--static {item!r}: want MAC=IP")
            try:
                static.append(StaticEntry(wire.mac_to_bytes(mac), vtep))
            except ValueError as e:
                raise VxlandError(f"--static: {e}") from None
        config = DaemonConfig(local=args.local, networks=[NetworkSpec(
            vni=args.vni, tap=args.tap, bridge=args.bridge, mtu=args.mtu, peers=list(args.peer), group=args.group,
            ageing=args.ageing if args.ageing is not None else DEFAULT_AGEING,
            max_learned=args.max_learned if args.max_learned is not None else DEFAULT_MAX_LEARNED,
            learning=not args.no_learning, static=static, neigh_suppress=args.neigh_suppress,
            evpn=args.evpn_asn is not None, learn_remote=args.learn_remote)])
        config.evpn = _evpn_from_args(args)
    for flag, attr in (("local", "local"), ("port", "port"), ("source_ports", "source_ports"),
                       ("ttl", "ttl"), ("group_ttl", "group_ttl"), ("control", "control"), ("datapath", "datapath"),
                       ("offloads", "offloads"), ("datapath_thread", "datapath_thread"), ("queues", "queues"),
                       ("datapath_threads", "datapath_threads"), ("tos", "tos"), ("df", "df"),
                       ("reserved_bits", "reserved_bits"), ("inner_vlan", "inner_vlan"),
                       ("accept_from", "accept_from"), ("accept_prefix", "accept_prefixes"), ("user", "user"),
                       ("metrics", "metrics"), ("metrics_allow", "metrics_allow"), ("cni_data_dir", "cni_data_dir")):
        value = getattr(args, flag)
        if value is not None:
            setattr(config, attr, value)
    return config.validate()


def _evpn_from_args(args: argparse.Namespace) -> EvpnConfig | None:
    if args.evpn_asn is None:
        if args.evpn_neighbor or args.evpn_router_id or args.evpn_api or args.gobgpd or args.learn_remote:
            raise VxlandError("the --evpn-* flags, --gobgpd and --learn-remote need --evpn-asn")
        return None
    neighbors = []
    for item in args.evpn_neighbor:
        address, sep, asn = item.partition("@")
        try:
            neighbors.append(EvpnNeighbor(address, int(asn) if sep else args.evpn_asn))
        except ValueError:
            raise VxlandError(f"--evpn-neighbor {item!r}: want IP or IP@ASN") from None
    return EvpnConfig(asn=args.evpn_asn, router_id=args.evpn_router_id, gobgpd=args.gobgpd or "run",
                      api=args.evpn_api or "127.0.0.1:50051", neighbors=neighbors)


# ---- output ------------------------------------------------------------------------

def _table(rows: list[list[Any]], header: list[str]) -> str:
    """Columns padded to their widest cell, two spaces apart: one format string for every row
    (100k rows of `fdb show` in a tenth of a second, not half a second cell by cell)."""
    columns = [list(map(str, column)) for column in zip(header, *rows)]
    widths = [max(map(len, column)) for column in columns]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + ("  {}" if len(widths) > 1 else "{}")
    return "\n".join(line.format(*r).rstrip() for r in zip(*columns))


def show_fdb(shown: dict[str, Any]) -> str:
    """The compact rows of fdb.show (fdb.FDB_COLUMNS) as a table."""
    rows = shown["rows"]
    if not rows:
        return "(no entries)"
    return _table([[mac, vni, vtep or f"port {port}", kind, f"{age // 10}s" if kind == "learned" else "-",
                    ", ".join(ips) if ips else "-"] for mac, vni, vtep, port, _, kind, age, ips in rows],
                  ["MAC", "VNI", "DESTINATION", "TYPE", "AGE", "IP"])


def show_evpn(s: dict[str, Any]) -> str:
    how = f"run by vxland, pid {s['pid']}" if s["gobgpd"] == "run" else "external"
    lines = [f"AS {s['asn']}, router id {s['router_id']}; gobgpd at {s['api']} ({how}), "
             f"{'connected' if s['connected'] else 'NOT CONNECTED'}", ""]
    lines.append(_table([[p.get("address", "?"), p.get("asn", "?"), p.get("state", p.get("error", "?")),
                          p.get("uptime") or "-", p.get("received", "-"), p.get("accepted", "-")] for p in s["peers"]],
                        ["NEIGHBOR", "AS", "STATE", "UP SINCE", "RECEIVED", "ACCEPTED"]) if s["peers"]
                 else "(no sessions)")

    c = s["counters"]
    return "\n".join(lines + _routes_and_counters(s, f"resyncs {c['resyncs']} (corrections {c['resync_corrections']}); "
                                                   f"gobgpd restarts {c['gobgpd_restarts']}"))


def _routes_and_counters(s: dict[str, Any], more: str) -> list[str]:
    """A control plane's routes both ways, and its counters: `evpn show` and `etcd show`."""
    def routes(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "  (none)"
        return _table([[r["vni"], r["type"], r.get("mac", "-"), r.get("ip") or "-", r["vtep"],
                        r.get("seq", "-") if r["type"] == 2 else "-",
                        "sticky" if r.get("sticky") else ""] for r in rows],
                      ["VNI", "TYPE", "MAC", "IP", "VTEP", "SEQ", ""])
    c = s["counters"]
    return (["", "announced:", routes(s["announced"]), "", "received:", routes(s["received"]), "",
             f"routes received {c['routes_received']}, withdrawn {c['routes_withdrawn']}, ignored "
             f"{sum(c['ignored'].values())}; {more}; duplicate MACs {c['duplicates']}"]
            + [f"  ignored: {reason}: {n}" for reason, n in sorted(c["ignored"].items())])


def show_etcd(s: dict[str, Any]) -> str:
    c = s["counters"]
    lines = [f"host {s['host']}, prefix {s['prefix']}, route lease {s['ttl']} s, block lease {s['block_ttl']} s; "
             f"{'connected to ' + c['endpoint'] if c['connected'] else 'NOT CONNECTED (retrying)'}",
             f"endpoints: {', '.join(s['endpoints'])}", ""]
    for vni, a in c["networks"].items():
        blocks = ", ".join(f"{b['block']} ({b['first']} - {b['last']})" for b in a.get("blocks", []))
        lines.append(f"VNI {vni}: addresses {a.get('state', '-')}{': ' + blocks if blocks else ''}")
    return "\n".join(lines + _routes_and_counters(s, (
        f"held back (no such member) {c['held_back']}; resyncs {c['resyncs']}, compactions {c['compactions']}; "
        f"lease losses {c['lease_losses']}, block losses {c['block_losses'] + c['block_lease_losses']}; "
        f"stale keys deleted {c['stale_deleted']}")))


def show_networks(rows: list[dict[str, Any]]) -> str:
    def addresses(r: dict[str, Any]) -> str:
        a = r.get("addresses")
        if a is None:
            return "-"
        return ", ".join(b["block"] for b in a["blocks"]) + f" ({a['state']})" if a["blocks"] else a["state"]
    return _table([[r["vni"], r["tap"], r["bridge"] or "-", r["mtu"], addresses(r)] for r in rows],
                  ["VNI", "TAP", "BRIDGE", "MTU", "ADDRESSES"])


def show_peers(rows: list[dict[str, Any]]) -> str:
    plane = next((k for r in rows for k in ("evpn_peers", "etcd_peers") if k in r), None)
    if plane is not None:
        return _table([[r["vni"], ", ".join(r["peers"]) or "(none)", ", ".join(r.get(plane, [])) or "-",
                        r.get("group") or "-"] for r in rows],
                      ["VNI", "FLOOD LIST", f"FROM {plane.split('_')[0].upper()}", "GROUP"])
    return _table([[r["vni"], ", ".join(r["peers"]) or "(none)", r.get("group") or "-"] for r in rows],
                  ["VNI", "FLOOD LIST", "GROUP"])


def show_stats(s: dict[str, Any]) -> str:
    thread = ", own thread" if s.get("datapath_thread") else ""
    lines = [f"data path: {s['datapath']}{thread}, up {s['uptime']:.0f}s", ""]
    lines.append(_table([[v["vni"], v["tap"], v["rx_packets"], v["rx_bytes"], v["tx_packets"],
                          v["tx_bytes"], sum(v["drops"].values()), v["fdb_entries"]] for v in s["vnis"]],
                        ["VNI", "TAP", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES", "DROPS", "FDB"]))
    dropped = {k: v for k, v in s["drops"].items() if v}
    lines += ["", "drops by reason:" if dropped else "no drops"]
    lines += [f"  {k:<20} {v}" for k, v in sorted(dropped.items())]
    if s.get("sightings_dropped"):
        lines.append(f"sightings dropped: {s['sightings_dropped']} (the control plane fell behind, or more "
                     "than 64 new MACs and addresses in one batch; their next frames report them again)")
    if s.get("internal_errors"):
        lines.append(f"internal errors: {s['internal_errors']} (see the daemon's log)")
    return "\n".join(lines)


def capture(args: argparse.Namespace) -> int:
    from .capture import Capture
    from .control import request
    interface, port = args.interface, args.port
    if args.side:
        stats = request(args.control, "stats")
        if args.side == "underlay":
            interface = stats["underlay"]["interface"]
            port = port or stats["underlay"]["port"]
        else:
            vnis = [v for v in stats["vnis"] if args.vni is None or v["vni"] == args.vni]
            if not vnis:
                raise VxlandError(f"no network with VNI {args.vni}")
            interface = vnis[0]["tap"]
    if args.count is None and args.seconds is None:
        print(f"vxland: capturing on {interface} until interrupted", file=sys.stderr)
    n = 0
    try:
        n = Capture(interface, port, args.as_received).write(args.write, args.count, args.seconds)
    except KeyboardInterrupt:
        pass
    print(f"vxland: {n} packets from {interface} written to {args.write}", file=sys.stderr)
    return 0


def client(args: argparse.Namespace) -> int:
    from .control import request
    if args.verb == "stats":
        verb, call, shown = "stats", {}, show_stats
    elif args.verb == "reload":
        verb, call, shown = "reload", {}, lambda r: "\n".join(f"reloaded: {c}" for c in r["changes"])
    elif args.verb == "evpn":
        verb, call, shown = "evpn.show", {}, show_evpn
    elif args.verb == "etcd":
        verb, call, shown = "etcd.show", {}, show_etcd
    elif args.verb == "networks":
        verb, call, shown = "networks.show", {"vni": args.vni}, show_networks
    elif args.verb == "fdb":
        verb = f"fdb.{args.action}"
        call = {"vni": args.vni, **({"compact": True} if args.action == "show" else {})}
        if args.action in ("add", "del"):
            call["mac"] = args.mac
        if args.action == "add":
            call.update({"local": True} if args.local else {"vtep": args.vtep})
            if args.ip:
                call["ip"] = args.ip
        shown = show_fdb if args.action == "show" else (lambda r: "ok")
    else:
        verb = f"peers.{args.action}"
        call = {"vni": args.vni}
        if args.action != "show":
            call["address"] = args.address
        shown = show_peers if args.action == "show" else (lambda r: "flood list of VNI "
                                                          f"{r['vni']}: {', '.join(r['peers']) or '(none)'}")
    result = request(args.control, verb, call, timeout=60.0 if verb == "reload" else 5.0)
    if verb == "fdb.show":
        if not isinstance(result, dict) or tuple(result.get("columns", ())) != FDB_COLUMNS:
            raise VxlandError("the daemon's fdb.show answer has other columns: a vxland of another version?")
        if args.json:
            try:
                print(fdb_rows_json(result["rows"]))
            except (TypeError, ValueError, KeyError) as e:
                raise VxlandError(f"the daemon's fdb.show answer has a malformed row ({e})") from None
            return 0
    print(to_json(result) if args.json else shown(result))
    return 0


_ROW = json.JSONEncoder(separators=(", ", ": "))


def to_json(result: Any) -> str:
    """--json: a list of rows (fdb show, peers show) one row a line, which the C encoder writes
    (indent=2 is pure Python: 0.8 s for 100k rows); anything else indented."""
    if isinstance(result, list) and all(isinstance(row, dict) for row in result):
        return "[\n" + ",\n".join(map(_ROW.encode, result)) + "\n]" if result else "[]"
    return json.dumps(result, indent=2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "run":
        try:
            config = config_from_args(args)
        except VxlandError as e:
            print(f"vxland: {e}", file=sys.stderr)
            return 2
    try:
        if args.verb == "run":
            # -v makes vxland's own loggers (learning, moves, ageing) say more, not its libraries'
            logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                format="%(asctime)s vxland %(levelname)s %(message)s")
            logging.getLogger("vxland").setLevel(logging.DEBUG if args.verbose else logging.INFO)
            return run(config, (lambda: config_from_args(args)) if args.config else None)
        if args.verb == "capture":
            return capture(args)
        if args.verb == "demo":
            from .demo import demo
            return demo(seconds=args.seconds, datapath=args.datapath, engine=args.containers)
        return client(args)
    except VxlandError as e:
        print(f"vxland: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run(config: DaemonConfig, reread: Callable[[], DaemonConfig] | None = None) -> int:
    import uvloop

    from .daemon import Daemon
    daemon = Daemon(config, reread=reread)
    daemon.open()                 # devices and sockets before the loop: see Daemon.serve
    try:
        uvloop.run(daemon.serve())
    finally:
        daemon.close()
    return daemon.exit_status
