"""The scale benchmark: how vxland's costs grow with its tables (issue 19).

Each sweep varies one size and measures, at each point, what that size should not make
slower per unit of work:

  macs         MACs learned in one VNI (1 .. 100k): control-plane CPU per learned MAC and per
               MAC move, RSS, and the time of `fdb show`, `stats` and an ageing scan
  trusted      VTEPs in the trusted set (accept_from = "known"), added one by one through
               static entries as EVPN adds them (1 .. 4000): time in all, calls into C
  vnis         networks in one daemon (1 .. 256): the time of `stats` and a metrics scrape
  replication  remotes in the flood list (1 .. 256): head-end copies per second of one
               broadcast frame (the C encapsulation, sans-IO: the sends are not included)
  evpn         EVPN MAC routes (1k .. 50k, over 100 VTEPs) taken by the EVPN service as
               gobgpd's watch hands them over, then withdrawn: routes per second each way
  flood        VTEPs joining one VNI (64 .. 4000), a type-3 route each in its own watch event:
               CPU per route (the flood list holds 256; past it they are left out, counted)
  churn        steady churn on a table of 1k .. 50k EVPN MAC routes: MACs moving to another
               VTEP (new path with MAC mobility seq + 1, the old one withdrawn): CPU per move
  bgp          the same from a real speaker: routes added to one host's gobgpd, carried over
               iBGP to the other's gobgpd and vxland (1k .. 10k; needs root and gobgpd)
  wire         two hosts in namespaces; a burst of new source MACs from one container at the
               wire's rate (1 .. 100k): how many are learned within 5 s, sightings lost; then
               the lost ones sent again, paced, and at the full table: RSS, fdb show, and TCP,
               UDP 64 B, and UDP 64 B over 1 and 10k flows, against one MAC (needs root)

The in-memory sweeps run the daemon's own code (vxland.daemon.Daemon with the native data
path, networks without devices), each point in a fresh process so that its RSS is its own.
Writes scale.json and scale.png into bench/results/ (or --out).

    .venv/bin/python bench/scale.py [--sweeps macs,trusted,vnis,replication,evpn,churn,flood,wire,bgp] [--quick] [--out DIR]

The evpn and churn sweeps start where gobgpd's watch ends; bgp adds the BGP session and both
gobgpds.  The README's Scale section says what is and is not measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

SWEEPS = {
    "macs": [100, 1_000, 10_000, 100_000],
    "trusted": [1, 250, 1000, 4000],
    "vnis": [1, 16, 64, 256],
    "replication": [1, 8, 64, 256],
    "evpn": [1_000, 10_000, 50_000],
    "churn": [1_000, 10_000, 50_000],
    "flood": [64, 256, 1000, 4000],
    "bgp": [1_000, 10_000],
    "wire": [1, 10_000, 100_000],
}
QUICK = {"macs": [100, 10_000], "trusted": [1, 1000], "vnis": [1, 16], "replication": [1, 64], "evpn": [1_000], "churn": [1_000], "flood": [256],
         "bgp": [1_000], "wire": [1, 10_000]}


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def mac(i: int, first: int = 2) -> bytes:
    return bytes([first, 0]) + i.to_bytes(4, "big")


def daemon_with(vnis: int = 1, max_learned: int = 8192, evpn_config=None, **network):
    """A Daemon with the native data path and `vnis` networks that have no devices (with an
    [evpn] section `evpn_config`, but no EVPN service: a sweep makes its own)."""
    from vxland.config import DaemonConfig, NetworkSpec
    from vxland.daemon import Daemon, return_freed_memory
    return_freed_memory()                           # as Daemon.open does
    specs = [NetworkSpec(vni=100 + i, tap=f"vx{i}", peers=["192.0.2.2"], max_learned=max_learned, **network)
             for i in range(vnis)]
    cfg = DaemonConfig(local="192.0.2.1", networks=specs, datapath="native", evpn=evpn_config).validate()
    daemon = Daemon(cfg, clock=time.monotonic)
    for i, spec in enumerate(specs):
        tap = SimpleNamespace(name=spec.tap, fd=-1, mac=mac(0xEE00 + i), vnet_hdr=False, uso=False, mtu=1450,
                              queues=(), fds=(-1,), overflow_drops=lambda: 0)
        daemon._add_network(i, spec, tap)
    return daemon


def timed(step) -> float:
    start = time.process_time()
    step()
    return time.process_time() - start


# ---- in-memory points (each in its own process: --point SWEEP N) ----------------------------

def point_macs(n: int) -> dict:
    import gc

    from vxland.datapath import Sighting
    daemon = daemon_with(max_learned=max(n, 8192))
    before = rss_mib()
    batch = 4096                                    # as the data-path thread's ring hands them over
    learn = 0.0
    for start in range(0, n, batch):
        sightings = [Sighting(0, mac(i), "192.0.2.2") for i in range(start, min(n, start + batch))]
        learn += timed(lambda s=sightings: daemon._learn(s, time.monotonic()))
    gc.collect()
    grown = rss_mib() - before
    moved = min(n, 20_000)
    moves = [Sighting(0, mac(i), "192.0.2.3") for i in range(moved)]
    move = timed(lambda: daemon._learn(moves, time.monotonic()))
    show = timed(lambda: json.loads(json.dumps({"ok": True, "result": daemon._fdb_show(compact=True)})))
    stats = timed(daemon._stats)
    ageing = timed(lambda: [net.table.expire(time.monotonic()) for net in daemon.networks])
    assert daemon.networks[0].table.learned_count() == n
    return {"n": n, "learn_us": learn / n * 1e6, "move_us": move / moved * 1e6, "rss_grown_mib": grown,
            "rss_mib": rss_mib(), "fdb_show_s": show, "stats_s": stats, "ageing_scan_s": ageing}


def point_trusted(n: int) -> dict:
    daemon = daemon_with(accept_from="known")
    dp = daemon.dataplane
    calls = {"trust_vtep": 0, "set_trust": 0}
    for name in calls:
        original = getattr(dp, name)

        def counting(*args, name=name, original=original):
            calls[name] += 1
            return original(*args)
        setattr(dp, name, counting)
    table = daemon.networks[0].table
    vteps = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, n + 1)]
    spent = timed(lambda: [table.add_static(mac(i), vtep, time.monotonic()) for i, vtep in enumerate(vteps)])
    return {"n": n, "total_s": spent, "per_vtep_us": spent / n * 1e6, **calls}


def point_vnis(n: int) -> dict:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from vxland.metrics import families
    daemon = daemon_with(vnis=n)
    for net in daemon.networks:
        for i in range(100):
            net.table.add_static(mac(i), "192.0.2.9", time.monotonic())
    stats = timed(daemon._stats)

    class Collector:
        def collect(self):
            return families(daemon._stats(), time.time())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    scrape = timed(lambda: generate_latest(registry))
    return {"n": n, "stats_s": stats, "scrape_s": scrape, "scrape_bytes": len(generate_latest(registry))}


def point_replication(n: int) -> dict:
    """The C encapsulation alone (vx_encap, as the data path calls it; native.encap would add
    a Python object per copy): a batch of 64 broadcast frames to n remotes."""
    from vxland.native import ffi, lib
    daemon = daemon_with()
    remotes = [f"198.51.{100 + i // 250}.{1 + i % 250}" for i in range(n - 1)]
    daemon.networks[0].table.set_evpn_flood(remotes)
    dp = daemon.dataplane._dp
    broadcast = ffi.from_buffer(b"\xff" * 6 + mac(1) + b"\x08\x06" + bytes(46))
    pk = ffi.new("struct vx_packet[]", 64)
    out = ffi.new("struct vx_datagram[]", lib.VX_MAX_FLOOD)
    consumed, n_sightings, n_replies = ffi.new("int *"), ffi.new("int *"), ffi.new("int *")
    sightings = ffi.new("struct vx_sighting[]", lib.VX_BATCH)
    replies = ffi.new("struct vx_reply[]", lib.VX_MAX_REPLIES)

    def batch() -> int:
        copies = done = 0
        for i in range(64):
            pk[i].data, pk[i].len, pk[i].net = broadcast, 60, 0
        n_sightings[0] = 0
        while done < 64:
            n_replies[0] = 0
            copies += lib.vx_encap(dp, time.monotonic(), pk + done, 64 - done, consumed, out, lib.VX_MAX_FLOOD,
                                   sightings, n_sightings, replies, n_replies)
            if consumed[0] <= 0:
                raise SystemExit("scale: replication: vx_encap consumed no frame")
            done += consumed[0]
        return copies
    copies = batch()
    if copies != 64 * n:
        raise SystemExit(f"scale: replication: {copies} copies of 64 frames to {n} remotes")
    rounds = max(1, 200_000 // copies)
    spent = timed(lambda: [batch() for _ in range(rounds)])
    return {"n": n, "copies_per_frame": copies / 64, "copies_per_s": rounds * copies / spent,
            "us_per_copy": spent / (rounds * copies) * 1e6}


def as_gobgpd(path):
    """`path` as gobgpd's watch gives it: with MP_REACH_NLRI naming the next hop and the route's
    own NLRI (encode builds what AddPath takes, without it)."""
    from vxland.evpn.gobgp import attribute_pb2 as attr
    next_hop = attr.NextHopAttribute()
    [p for p in path.pattrs if p.Unpack(next_hop)]
    path.pattrs.add().Pack(attr.MpReachNLRIAttribute(family=path.family, next_hops=[next_hop.next_hop],
                                                     nlris=[path.nlri]))
    return path


def evpn_service():
    """A daemon's first table (the native data path) and an EVPN service serving it, without
    gobgpd: the service's decode, RIB and table steps, as gobgpd's watch drives them."""
    from vxland.config import EvpnConfig
    from vxland.evpn.service import EvpnService
    config = EvpnConfig(asn=65000, gobgpd="external")
    daemon = daemon_with(evpn_config=config, evpn=True)
    service = EvpnService(config.validate("192.0.2.1"), "192.0.2.1")
    service.add_network(daemon.networks[0].spec, daemon.networks[0].table, 0)
    return daemon.networks[0].table, service


def point_evpn(n: int) -> dict:
    """n type-2 routes (over 100 remote VTEPs, each with its type-3 route) as gobgpd's watch
    hands them over -- encoded, then taken by the EVPN service of a daemon whose table is the
    native one (no gobgpd: the service's decode, RIB and table steps) -- then withdrawn."""
    from vxland.evpn.routes import FloodRoute, MacRoute, encode
    table, service = evpn_service()
    vteps = [f"198.51.{100 + i // 250}.{1 + i % 250}" for i in range(100)]
    paths = [as_gobgpd(encode(FloodRoute(100, v), asn=65000, router_id=v, rd_index=1)) for v in vteps]
    paths += [as_gobgpd(encode(MacRoute(100, mac(i, first=6), None, vteps[i % len(vteps)]), asn=65000,
                               router_id=vteps[i % len(vteps)], rd_index=1)) for i in range(n)]
    install = timed(lambda: service._take(paths))
    assert table.evpn_count() == n, (table.evpn_count(), n, dict(service.ignored))
    for path in paths:
        path.is_withdraw = True
    withdraw = timed(lambda: service._take(paths))
    assert table.evpn_count() == 0
    return {"n": n, "install_per_s": len(paths) / install, "withdraw_per_s": len(paths) / withdraw,
            "install_us": install / len(paths) * 1e6, "rss_mib": rss_mib()}


def point_churn(n: int) -> dict:
    """Steady churn on a table of n EVPN MAC routes: MACs moving between VTEPs as gobgpd's watch
    reports a move -- the new path (MAC mobility seq + 1) and the old one's withdrawal -- in
    batches of 100 moves. Per-move CPU should not grow with n; at M moves/s the event loop
    spends M times it."""
    from vxland.evpn.routes import FloodRoute, MacRoute, encode
    table, service = evpn_service()
    vteps = [f"198.51.{100 + i // 250}.{1 + i % 250}" for i in range(100)]

    def path(i: int, seq: int, withdraw: bool = False):
        vtep = vteps[(i + seq) % len(vteps)]
        p = as_gobgpd(encode(MacRoute(100, mac(i, first=6), None, vtep, seq=seq), asn=65000, router_id=vtep,
                             rd_index=1))
        p.is_withdraw = withdraw
        return p
    service._take([as_gobgpd(encode(FloodRoute(100, v), asn=65000, router_id=v, rd_index=1)) for v in vteps])
    service._take([path(i, 0) for i in range(n)])
    moved = min(n, 5000)
    batches = [[p for i in range(start, min(moved, start + 100)) for p in (path(i, 1), path(i, 0, withdraw=True))]
               for start in range(0, moved, 100)]
    spent = timed(lambda: [service._take(batch) for batch in batches])
    assert table.evpn_count() == n
    moved_right = sum(1 for i in range(moved) if table.lookup(mac(i, first=6)).vtep == vteps[(i + 1) % len(vteps)])
    assert moved_right == moved, (moved_right, moved, dict(service.ignored))
    per_move = spent / moved
    return {"n": n, "moves": moved, "move_us": per_move * 1e6, "loop_share_at_1000_per_s": per_move * 1000,
            "rss_mib": rss_mib()}


def point_flood(n: int) -> dict:
    """n VTEPs joining a VNI, each with its type-3 route in a watch event of its own (a fabric
    coming up host by host): CPU per route, and what the table did with the flood list."""
    from vxland.evpn.routes import FloodRoute, encode
    table, service = evpn_service()
    vteps = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, n + 1)]
    paths = [as_gobgpd(encode(FloodRoute(100, v), asn=65000, router_id=v, rd_index=1)) for v in vteps]
    logging.getLogger("vxland").setLevel(logging.CRITICAL)      # (the log lines are not what is measured)
    spent = timed(lambda: [service._take([p]) for p in paths])
    assert len(table.evpn_remotes) == min(n, 255) and table.flood_refused == max(0, n - 255)
    return {"n": n, "route_us": spent / n * 1e6, "total_s": spent, "flooded_to": len(table.evpn_remotes),
            "left_out": table.flood_refused}


POINTS = {"churn": point_churn, "flood": point_flood, "evpn": point_evpn, "macs": point_macs, "trusted": point_trusted, "vnis": point_vnis, "replication": point_replication}


def run_point(sweep: str, n: int) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--point", sweep, str(n)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"scale: {sweep} at {n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


# ---- on the wire: two hosts in namespaces ------------------------------------------------------

BURST = """
import socket, sys
import time
n, first, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range(n):
    src = bytes([2, first]) + i.to_bytes(4, "big")
    s.send(b"\\xff" * 6 + src + b"\\x88\\xb5" + bytes(46))
    if pause and i % 1000 == 999:
        time.sleep(pause)
"""


FLOWS = """
import socket, struct, sys, time
src_mac, dst_mac, src_ip, dst_ip, flows, seconds = sys.argv[1:7]
flows, seconds = int(flows), float(seconds)

def checksum(header):
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0x4000, 64, 17, 0,
                 socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
ether = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\\x08\\x00"
frames = [ether + ip + struct.pack("!HHHH", 10000 + f, 9, 26, 0) + bytes(18) for f in range(flows)]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
rounds = [(frames * (1000 // flows + 1))[:1000]] if flows < 1000 else \\
    [frames[i:i + 1000] for i in range(0, flows, 1000)]
sent, i, end = 0, 0, time.monotonic() + seconds
while time.monotonic() < end:
    i += 1
    for frame in rounds[i % len(rounds)]:
        try:
            s.send(frame)
            sent += 1
        except BlockingIOError:
            pass
print(sent)
"""


def flows_kpps(h1, h2, flows: int, seconds: float) -> dict:
    """UDP 64 B from h1's container to h2's over `flows` source ports (a raw socket, as fast as
    Python sends): datagrams offered and what h2's container received, per second."""
    def received() -> int:
        return int(subprocess.run(["ip", "netns", "exec", h2.container_ns, "cat",
                                   "/sys/class/net/eth0/statistics/rx_packets"],
                                  capture_output=True, text=True, check=True).stdout)
    before = received()
    sent = subprocess.run(["ip", "netns", "exec", h1.container_ns, sys.executable, "-c", FLOWS, h1.container_mac,
                           h2.container_mac, h1.container_ip, h2.container_ip, str(flows), str(seconds)],
                          capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    time.sleep(0.5)
    return {"offered_kpps": int(sent) / seconds / 1e3, "delivered_kpps": (received() - before) / seconds / 1e3}


def wire_point(n: int, seconds: float) -> dict:
    from bench.run import udp64
    from vxland.topology import Topology
    with Topology() as t:
        h1, h2 = t.hosts
        for h in (h1, h2):
            t.start_vxland(h, "--max-learned", str(n + 1000))
        for _ in range(20):
            if t.ping(h1, h2, count=2, interval=0.1).returncode == 0:
                break
        else:
            raise SystemExit("scale: wire: the containers cannot ping each other")
        start = time.monotonic()
        subprocess.run(["ip", "netns", "exec", h1.container_ns, sys.executable, "-c", BURST, str(n), "7"],
                       check=True, timeout=300)
        burst_s = time.monotonic() - start
        learned_at = {}
        for wait in (1.0, 5.0):
            time.sleep(max(0.0, start + burst_s + wait - time.monotonic()))
            learned_at[f"{wait:g}s"] = h2.vxland_json("stats")["vnis"][0]["fdb_learned"]
        stats, sender = h2.vxland_json("stats"), h1.vxland_json("stats")     # what the burst lost, and where
        burst = {"burst_s": burst_s, "learned": learned_at, "sightings_dropped": stats["sightings_dropped"],
                 "sender_learned": sender["vnis"][0]["fdb_learned"],
                 "lost_before_vxland": {"sender_tap_overflow": sender["drops"].get("tap_overflow", 0),
                                        "receiver_underlay_overflow": stats["drops"].get("underlay_overflow", 0)}}
        # The table, not its learning, is what is measured next: the MACs whose frames the
        # burst lost are sent again, paced (1000 frames, then 20 ms), as their next frames.
        for _ in range(3):
            if h2.vxland_json("stats")["vnis"][0]["fdb_learned"] >= n:
                break
            subprocess.run(["ip", "netns", "exec", h1.container_ns, sys.executable, "-c", BURST, str(n), "7",
                            "0.02"], check=True, timeout=600)
            time.sleep(2)
        table, rss = h2.vxland_json("stats")["vnis"][0]["fdb_learned"], rss_mib(h2.process.pid)
        begin = time.monotonic()
        h2.vxland("fdb", "show", "--json")
        show = time.monotonic() - begin
        out = {"n": n, **burst, "table": table, "rss_mib": rss, "fdb_show_s": show,
               "rss_after_show_mib": rss_mib(h2.process.pid),
               "tcp_gbps": t.iperf3(h1, h2, seconds)["end"]["sum_received"]["bits_per_second"] / 1e9,
               "udp64": udp64(t, h1, h2, seconds),
               "udp64_flows": {str(f): flows_kpps(h1, h2, f, seconds) for f in (1, 10_000)}}
        return out


SPEAKER = """
import asyncio, json, sys, time
from vxland.evpn.routes import MacRoute, encode
from vxland.evpn.speaker import Speaker
n, vtep, first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

async def main():
    speaker = Speaker("127.0.0.1:50051")
    paths = [encode(MacRoute(42, bytes([first, 0]) + i.to_bytes(4, "big"), None, vtep), asn=65000,
                    router_id=vtep, rd_index=1) for i in range(n)]
    room = asyncio.Semaphore(64)                    # calls in flight: gobgpd answers each in turn

    async def call(step, arg):
        async with room:
            return await step(arg)
    start = time.monotonic()
    uuids = await asyncio.gather(*(call(speaker.add, p) for p in paths))
    added = time.monotonic() - start
    print(json.dumps({"added_s": added}), flush=True)
    sys.stdin.readline()                            # withdraw when told
    start = time.monotonic()
    await asyncio.gather(*(call(speaker.delete, u) for u in uuids))
    print(json.dumps({"deleted_s": time.monotonic() - start}), flush=True)
    await speaker.close()
asyncio.run(main())
"""


def bgp_point(n: int) -> dict:
    """n MAC routes added to h2's gobgpd (gRPC, pipelined) and carried over iBGP to h1's gobgpd
    and vxland: the time until h1's table holds them all, then until their withdrawal empties
    it -- the whole path a route takes, BGP included."""
    from vxland.topology import Topology
    with Topology() as t:
        h1, h2 = t.hosts
        for h, other in ((h1, h2), (h2, h1)):
            t.start_vxland(h, "--evpn-asn", "65000", "--evpn-neighbor", other.underlay_ip, peers=[])
        deadline = time.monotonic() + 60
        while not all(p.get("state") == "established" for p in h1.vxland_json("evpn", "show")["peers"]):
            if time.monotonic() > deadline:
                raise SystemExit("scale: bgp: the session did not come up")
            time.sleep(0.5)

        def evpn_entries() -> int:
            return h1.vxland_json("stats")["vnis"][0]["fdb_evpn"]

        def until(done, seconds: float = 120) -> float:
            start = time.monotonic()
            while not done():
                if time.monotonic() - start > seconds:
                    counters = h1.vxland_json("evpn", "show")["counters"]
                    raise SystemExit(f"scale: bgp: {evpn_entries()} EVPN entries on h1, not converged "
                                     f"in {seconds:g} s ({counters})")
                time.sleep(0.05)
            return time.monotonic() - start

        base = evpn_entries()
        start = time.monotonic()
        speaker = subprocess.Popen(["ip", "netns", "exec", h2.ns, sys.executable, "-c", SPEAKER, str(n),
                                    h2.underlay_ip, "6"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": os.path.join(HERE, "..")})
        try:
            line = speaker.stdout.readline()
            if not line:
                raise SystemExit(f"scale: bgp: the speaker failed (exit {speaker.wait()})")
            added = json.loads(line)["added_s"]
            until(lambda: evpn_entries() >= base + n)
            installed = time.monotonic() - start
            rss = rss_mib(h1.process.pid)
            start = time.monotonic()
            speaker.stdin.write("\n")
            speaker.stdin.flush()
            until(lambda: evpn_entries() <= base, seconds=max(120, n / 40))   # (gobgpd deletes ~100/s)
            withdrawn = time.monotonic() - start
            deleted = json.loads(speaker.stdout.readline() or "{}").get("deleted_s")
        finally:
            speaker.kill()
            speaker.wait()
        return {"n": n, "added_to_speaker_s": added, "installed_s": installed, "installed_per_s": n / installed,
                "deleted_from_speaker_s": deleted, "withdrawn_s": withdrawn, "withdrawn_per_s": n / withdrawn,
                "rss_mib": rss}


# ---- the report ----------------------------------------------------------------------------------

def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("macs", "learn_us", "µs per learned MAC"), ("macs", "move_us", "µs per MAC move"),
              ("macs", "rss_mib", "RSS, MiB"), ("macs", "fdb_show_s", "fdb show, s"),
              ("trusted", "per_vtep_us", "µs per trusted VTEP added"), ("vnis", "scrape_s", "metrics scrape, s"),
              ("replication", "us_per_copy", "µs per flooded copy"),
              ("evpn", "install_per_s", "EVPN routes installed / s"), ("churn", "move_us", "µs per EVPN MAC move"),
              ("flood", "route_us", "µs per type-3 route"),
              ("bgp", "installed_per_s", "over BGP: routes installed / s"), ("wire", "tcp_gbps", "TCP Gbit/s")]
    panels = [p for p in panels if p[0] in results]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (sweep, key, label) in zip(axes.flat, panels):
        points = results[sweep]
        ax.plot([p["n"] for p in points], [p[key] for p in points], "o-")
        ax.set_xscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel({"macs": "MACs", "trusted": "VTEPs", "vnis": "VNIs", "replication": "remotes",
                       "wire": "MACs on the wire", "evpn": "EVPN routes", "churn": "EVPN routes in the table", "flood": "VTEPs in the VNI", "bgp": "routes from gobgpd"}[sweep], fontsize=8)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", default="macs,trusted,vnis,replication,evpn,churn,flood",
                    help="comma-separated, of: " + ", ".join(SWEEPS) + " (wire and bgp need root; default: the in-memory ones)")
    ap.add_argument("--quick", action="store_true", help="two points per sweep (what CI runs)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run of the wire sweep")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--point", nargs=2, metavar=("SWEEP", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.point:
        print(json.dumps(POINTS[args.point[0]](int(args.point[1]))))
        return 0
    sweeps = [s for s in args.sweeps.split(",") if s]
    unknown = [s for s in sweeps if s not in SWEEPS]
    if unknown:
        ap.error(f"unknown sweep {', '.join(unknown)}; the sweeps are {', '.join(SWEEPS)}")
    results: dict = {}
    for sweep in sweeps:
        results[sweep] = []
        for n in (QUICK if args.quick else SWEEPS)[sweep]:
            point = wire_point(n, args.seconds) if sweep == "wire" else bgp_point(n) if sweep == "bgp" \
                else run_point(sweep, n)
            results[sweep].append(point)
            print(sweep, json.dumps(point), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scale.json"), "w") as f:
        json.dump({"when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "results": results}, f, indent=1)
    try:
        plot(results, os.path.join(args.out, "scale.png"))
    except ImportError:
        print("scale: matplotlib is missing (scripts/install.sh --bench): no picture", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
