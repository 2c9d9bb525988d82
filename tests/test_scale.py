"""Cost that grows no faster than the work (issue 19), pinned by counting operations, not by
timing them: what one learned MAC, one move, one trusted VTEP costs in calls into the data
path, whatever the table's size.  bench/scale.py measures the times."""

import pytest

from vxland.datapath import BATCH, NetworkConfig, ReferenceDataPlane
from vxland.fdb import ForwardingTable


class Counting(ReferenceDataPlane):
    """The reference data plane, counting the calls the control plane makes into it."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name in ("set_entry", "delete_entry", "set_full", "set_trust", "trust_vtep", "set_flood"):
            calls = super().__getattribute__("calls")

            def counted(*args, **kwargs):
                calls[name] = calls.get(name, 0) + 1
                return attr(*args, **kwargs)
            return counted
        return attr


def mac(i):
    return bytes([2, 0]) + i.to_bytes(4, "big")


def table(dp, **kwargs):
    view = dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1", tap_fd=-1, own_mac=mac(0xFFFF)))
    return ForwardingTable(42, view, port="vx0", ageing=300.0, max_learned=kwargs.pop("max_learned", 200_000),
                           family=4, local="192.0.2.1", **kwargs)


@pytest.mark.parametrize("n", [100, 10_000])
def test_a_learned_mac_is_one_call_into_the_data_path_and_a_move_one_more(n):
    """Learning used to tell the data path 'not full' after every MAC (a second call each)."""
    dp = Counting()
    t = table(dp)
    for i in range(n):
        t.see(mac(i), "192.0.2.2", 1.0)
    assert dp.calls.get("set_entry") == n and dp.calls.get("set_full", 0) == 0
    for i in range(n):
        t.see(mac(i), "192.0.2.3", 2.0)                         # every one moves
    assert dp.calls.get("set_entry") == 2 * n and dp.calls.get("set_full", 0) == 0
    for i in range(n):
        t.see(mac(i), "192.0.2.3", 3.0)                         # refreshed where it is: no call
    assert dp.calls.get("set_entry") == 2 * n


def test_the_table_filling_up_is_said_to_the_data_path_once():
    dp = Counting()
    t = table(dp, max_learned=50)
    for i in range(60):
        t.see(mac(i), "192.0.2.2", 1.0)
    assert t.learned_count() == 50 and t.learn_refused == 10
    assert dp.calls.get("set_entry") == 50 and dp.calls.get("set_full") == 1


@pytest.mark.parametrize("n", [10, 1000])
def test_each_trusted_vtep_is_one_call_never_the_whole_set(n):
    """With accept_from = "known", every static or EVPN entry naming a new VTEP used to send
    the whole trusted set to C again: quadratic (4000 VTEPs, 53 s)."""
    dp = Counting()
    t = table(dp, accept_from="known")
    whole = dp.calls.get("set_trust", 0)
    for i in range(n):
        t.add_static(mac(i), f"10.0.{i >> 8}.{i & 255 or 1}" if i & 255 else f"10.1.{i >> 8}.1", 1.0)
    assert dp.calls.get("set_trust", 0) == whole
    assert dp.calls.get("trust_vtep") == len({e.vtep for e in t.entries()})


@pytest.mark.parametrize("plane", ["reference", "native"])
def test_sightings_past_a_batch_are_counted_and_the_mac_reported_on_its_next_frame(plane):
    """A batch has room for BATCH sightings: ARP from as many new MACs is two each (the MAC and
    its address, with neighbour suppression), and the rest were lost without a count.  They
    are counted -- equally in C and in the reference -- and since a MAC's entry is made only
    when the control plane takes its sighting, its next frame reports it again."""
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import raw

    from vxland.native import NativeDataPlane
    dp = ReferenceDataPlane() if plane == "reference" else NativeDataPlane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1", tap_fd=-1, own_mac=mac(0xFFFF),
                                    neigh_suppress=True))
    vxlan = bytes([0x08, 0, 0, 0, 0, 0, 42, 0])
    arp = [vxlan + raw(Ether(src=m, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=m, psrc=f"10.0.0.{i + 1}",
                                                                   pdst="10.0.0.254"))
           for i, m in enumerate(mac(i).hex(":") for i in range(BATCH))]
    _, sightings = dp.decap([(d, "192.0.2.2") for d in arp], 1.0)
    assert len(sightings) == BATCH and dp.dropped_events() == BATCH
    seen = {s.mac for s in sightings if s.ip is None}
    missed = [i for i in range(BATCH) if mac(i) not in seen]
    assert missed                                               # their next frames, in a batch with room
    _, again = dp.decap([(arp[i], "192.0.2.2") for i in missed], 1.5)
    assert {s.mac for s in again if s.ip is None} == {mac(i) for i in missed}


def test_the_scale_benchmark_runs_its_in_memory_sweeps(tmp_path):
    """bench/scale.py --quick, as a user runs it from a clone: every sweep gives its points,
    and the counts it reports hold (one trusted-set call per VTEP, one copy per remote)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "bench" / "scale.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "scale.json").read_text())["results"]
    assert set(results) == {"macs", "trusted", "vnis", "replication", "evpn", "churn", "flood"}
    assert [p["n"] for p in results["macs"]] == [100, 10_000]
    assert all(p["trust_vtep"] == p["n"] and p["set_trust"] == 0 for p in results["trusted"])
    assert all(p["copies_per_frame"] == p["n"] for p in results["replication"])
    assert results["evpn"][0]["n"] == 1000 and results["evpn"][0]["install_per_s"] > 0   # (all in, all out:
                                                                                          # point_evpn checks)
    assert results["churn"][0]["moves"] == 1000     # (each one checked in the table by point_churn)
    assert results["flood"][0] == {**results["flood"][0], "flooded_to": 255, "left_out": 1}


@pytest.mark.parametrize("plane", ["reference", "native"])
def test_a_busy_mac_is_reported_once_a_refresh_interval_not_once_a_second(plane):
    """Every busy MAC used to be a sighting a second only to refresh its age: 100k busy MACs,
    100k sightings a second of Python.  The daemon makes the interval a 30th of the ageing time
    (10 s at the default 300 s); moves are still reported within a tenth of a second."""
    from vxland.daemon import refresh_interval
    from vxland.native import NativeDataPlane
    assert refresh_interval(300.0) == 10.0 and refresh_interval(2.0) == 1.0
    dp = ReferenceDataPlane() if plane == "reference" else NativeDataPlane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1", tap_fd=-1, own_mac=mac(0xFFFF),
                                    refresh=refresh_interval(300.0)))
    dp.set_flood(0, ["192.0.2.2"])
    busy = [mac(i) for i in range(100)]
    for m in busy:
        dp.set_entry(0, m, None, 0)                              # learned behind the TAP
    frames = [(0, b"\xff" * 6 + m + b"\x88\xb5" + bytes(46)) for m in busy]
    reported = 0
    for second in range(31):
        reported += len(dp.encap(frames, 100.0 + second)[1])
    assert reported == 100 * 4                                   # at 100, 110, 120 and 130 s: not 3100
    vtep = "192.0.2.9"
    vxlan = bytes([0x08, 0, 0, 0, 0, 0, 42, 0])
    _, moved = dp.decap([(vxlan + f[1], vtep) for f in frames[:10]], 131.0)
    assert {s.mac for s in moved} == set(busy[:10])              # a move is news at once


def test_a_routes_vni_is_found_by_its_targets_not_by_trying_every_vni(monkeypatch):
    """decode used to try every served VNI's every import target on every route: with 256 VNIs
    served, 256 comparisons a route.  Now the targets' values are looked up."""
    from vxland.evpn.routes import MacRoute, decode, encode
    from vxland.evpn.targets import ImportIndex, RouteTarget
    calls = []
    original = RouteTarget.matches
    monkeypatch.setattr(RouteTarget, "matches", lambda self, asn, value: calls.append(1) or original(self, asn, value))
    index = ImportIndex({vni: [] for vni in range(1, 257)})
    path = encode(MacRoute(200, mac(1), None, "198.51.100.7"), asn=65000, router_id="198.51.100.7", rd_index=1)
    decoded = decode(path, index, "192.0.2.1")
    assert decoded.route is not None and decoded.route.vni == 200 and len(calls) == 1


def test_fdb_show_json_is_one_row_a_line_and_the_same_json():
    import json

    from vxland.cli import to_json
    rows = [{"mac": mac(i).hex(":"), "vni": 42, "vtep": "192.0.2.2", "static": False, "type": "learned",
             "age": 1.5, "ips": ["10.0.0.1"]} for i in range(3)]
    text = to_json(rows)
    assert json.loads(text) == rows and len(text.splitlines()) == 2 + len(rows)
    assert json.loads(to_json([])) == [] and json.loads(to_json({"a": [1]})) == {"a": [1]}


def test_fdb_show_compact_rows_are_the_objects_and_the_table():
    """The CLI asks fdb.show for compact rows (FDB_COLUMNS); --json turns them back into the
    objects the verb gives everyone else, and the table reads them as they are."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from scale import daemon_with
    from vxland.cli import show_fdb
    from vxland.fdb import FDB_COLUMNS, fdb_row
    clock = [100.0]
    daemon = daemon_with(1)
    daemon.clock = lambda: clock[0]
    table = daemon.networks[0].table
    table.see(mac(1), "192.0.2.2", 97.63)
    table.add_static(mac(2), None, 100.0, "10.0.0.2")
    compact = daemon._fdb_show(compact=True)
    assert tuple(compact["columns"]) == FDB_COLUMNS
    objects = daemon._fdb_show()
    assert [fdb_row(r) for r in compact["rows"]] == objects
    assert objects[0] == {"mac": mac(1).hex(":"), "vni": 100, "vtep": "192.0.2.2", "static": False,
                          "type": "learned", "age": 2.3}
    assert objects[1] == {"mac": mac(2).hex(":"), "vni": 100, "port": "vx0", "static": True, "type": "static",
                          "age": 0.0, "ips": ["10.0.0.2"]}
    lines = show_fdb(compact).splitlines()
    assert lines[0].split() == ["MAC", "VNI", "DESTINATION", "TYPE", "AGE", "IP"]
    assert lines[1].split() == [mac(1).hex(":"), "100", "192.0.2.2", "learned", "2s", "-"]
    assert lines[2].split() == [mac(2).hex(":"), "100", "port", "vx0", "static", "-", "10.0.0.2"]


FREED = """
import ctypes, sys
from vxland.daemon import return_freed_memory
if sys.argv[1] == "fixed":
    return_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

libc.free(libc.malloc(4 << 20))          # (glibc's threshold follows a freed mapping's size)
before = rss()
block = libc.malloc(2 << 20)
ctypes.memset(block, 1, 2 << 20)
libc.free(block)
print(rss() - before)
"""


def test_a_freed_big_block_goes_back_to_the_system():
    """What return_freed_memory (Daemon.open) is for: a table's old array or a big reply, once
    freed, leaves the RSS; without it glibc keeps a 2 MiB block in its heap after a 4 MiB one was
    freed (the control shows the test sees the difference)."""
    import subprocess
    import sys

    def kept(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", FREED, mode], check=True, capture_output=True,
                                  text=True).stdout)
    assert kept("default") >= 1 << 20
    assert kept("fixed") < 256 << 10


def test_fdb_show_json_written_from_compact_rows_is_what_the_encoder_writes():
    """`fdb show --json` writes the compact rows straight (fdb_rows_json): byte for byte what
    fdb_row and the JSON encoder give, odd port names, non-ASCII and every column's forms included."""
    from vxland.cli import to_json
    from vxland.fdb import fdb_row, fdb_rows_json
    rows = [["02:00:00:00:00:01", 100, "192.0.2.2", None, False, "learned", 23, None],
            ["02:00:00:00:00:02", 100, None, 'v"x\\0}, {é\n', True, "static", 0, ["10.0.0.2", "2001:db8::2"]],
            ["02:00:00:00:00:03", 16777215, "2001:db8::7", None, False, "evpn", 1234567, ["10.0.0.3"]],
            ["02:00:00:00:00:04", 1, None, "vx0", False, "learned", 7, []]]
    assert fdb_rows_json(rows) == to_json([fdb_row(r) for r in rows])
    assert fdb_rows_json([]) == to_json([])


def test_a_vteps_routes_have_their_attributes_parsed_once_and_the_memory_of_them_is_bounded(monkeypatch):
    """decode parsed every path attribute of every route; the routes of one VTEP carry the same
    attributes, so a set is parsed once (NLRI and RD still once a route).  A peer that sends ever
    new sets finds the memory of them bounded, and each still decoded right."""
    from vxland.evpn import routes
    from vxland.evpn.routes import MacRoute, decode, encode
    from vxland.evpn.targets import ImportIndex
    from vxland.evpn.gobgp import attribute_pb2 as attr
    index = ImportIndex({200: []})
    paths = [encode(MacRoute(200, mac(i), None, "198.51.100.7"), asn=65000, router_id="198.51.100.7", rd_index=1)
             for i in range(100)]
    for path in paths:                               # as gobgpd gives them: MP_REACH_NLRI with the route's NLRI
        reach = path.pattrs.add()
        reach.Pack(attr.MpReachNLRIAttribute(family=path.family, next_hops=["198.51.100.7"], nlris=[path.nlri]))
    routes._attributes_seen.clear()
    calls = []
    original = routes._unpack
    monkeypatch.setattr(routes, "_unpack", lambda message, *types: calls.append(1) or original(message, *types))
    decoded = [decode(p, index, "192.0.2.1").route for p in paths]
    assert decoded == [MacRoute(200, mac(i), None, "198.51.100.7") for i in range(100)]
    per_set = len(calls) - 3 * 100                   # the NLRI, its RD and MP_REACH_NLRI: three a route
    assert 0 < per_set <= 8                          # next hop, communities, each community: once in all
    big = encode(MacRoute(200, mac(500), None, "198.51.100.7", seq=9), asn=65000, router_id="198.51.100.7", rd_index=1)
    communities = attr.ExtendedCommunitiesAttribute()
    [p for p in big.pattrs if p.Unpack(communities)][0].Pack(attr.ExtendedCommunitiesAttribute(
        communities=list(communities.communities) * 60))              # a peer's set of 2 KiB: decoded ...
    size = len(routes._attributes_seen)
    assert decode(big, index, "192.0.2.1").route.mac == mac(500) and len(routes._attributes_seen) == size  # ... not kept
    monkeypatch.setattr(routes, "_unpack", original)
    for seq in range(routes._ATTRIBUTES_CACHED + 10):
        route = MacRoute(200, mac(7), None, "198.51.100.7", seq=seq + 1)
        assert decode(encode(route, asn=65000, router_id="198.51.100.7", rd_index=1), index, "192.0.2.1").route == route
        assert len(routes._attributes_seen) <= routes._ATTRIBUTES_CACHED


def test_a_flood_list_growing_by_type_3_routes_parses_each_vtep_once(monkeypatch):
    """Each type-3 route re-sends the VNI's flood list to C (256 at most); its addresses were
    parsed again every time: 100 VTEPs joining cost 5050 parses.  Now each VTEP once."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from scale import daemon_with
    from vxland import native
    daemon = daemon_with(1)
    table = daemon.networks[0].table
    vteps = [f"198.51.100.{i}" for i in range(1, 101)]
    native._vteps._c.clear()
    parsed = []
    original = native._addr
    monkeypatch.setattr(native, "_addr", lambda address: parsed.append(address) or original(address))
    for k in range(1, len(vteps) + 1):
        table.set_evpn_flood(vteps[:k])
    assert len(parsed) == len(set(parsed)) and set(parsed) == {*vteps, "192.0.2.2"}   # (and the configured peer)


def test_type_3_routes_one_by_one_cost_each_vtep_one_check_and_room_logged_a_few_times(caplog):
    """A VNI whose type-3 routes name more VTEPs than the flood list holds, sent one by one
    (each route sends the list to the table -- its first FLOOD_SHOWN and their number, not the
    fabric): every VTEP listed is checked once, C hears of the flood list only when it changes,
    each VTEP left out is counted once, and the log says so in a few lines (at 1, 2, 4, ...
    left out), not a line naming them all for every route."""
    import logging

    from test_fdb import Recorder
    from vxland.datapath import MAX_FLOOD
    from vxland.evpn.rib import FLOOD_SHOWN, EvpnRib, SetFlood
    from vxland.evpn.route_types import FloodRoute
    mirror = Recorder()
    table = ForwardingTable(100, mirror, port="vx0", family=4)
    checked, pushed = [], []
    original_remote, original_flood = table._remote, mirror.set_flood
    table._remote = lambda v: checked.append(v) or original_remote(v)
    mirror.set_flood = lambda remotes: pushed.append(len(remotes)) or original_flood(remotes)
    rib = EvpnRib("192.0.2.1")
    rib.add_network(100)
    n = 600
    vteps = [f"10.0.{i >> 8}.{i & 255}" for i in range(1, n + 1)]
    listed_refused = 0
    with caplog.at_level(logging.INFO, logger="vxland"):
        for i, vtep in enumerate(vteps):
            for action in rib.receive(("rd", 3, 0, vtep), FloodRoute(100, vtep), 0.0):
                if isinstance(action, SetFlood):
                    listed_refused += len(table.set_evpn_flood(list(action.vteps), action.total))
    assert listed_refused == FLOOD_SHOWN - MAX_FLOOD
    assert len(checked) == len(set(checked)) and set(checked) == set(vteps[:FLOOD_SHOWN])   # (past them: a count)
    assert len(pushed) == MAX_FLOOD                  # each VTEP that fits; none past it
    assert table.flood_refused == n - MAX_FLOOD
    room_lines = [r for r in caplog.records if "left out" in r.getMessage()]
    assert 1 <= len(room_lines) <= 10 and all(len(r.getMessage()) < 300 for r in room_lines)
    assert mirror.flood == sorted(vteps, key=lambda v: tuple(map(int, v.split("."))))[:MAX_FLOOD]


def test_a_watch_event_of_thousands_of_routes_is_carried_out_without_recursing():
    """A watch event of 3000 routes: the changes the tables report back were drained by
    recursion, one frame each, and overflowed the stack."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from scale import evpn_service
    from vxland.evpn.routes import FloodRoute as Flood, MacRoute, encode
    table, service = evpn_service()
    vtep = "198.51.100.7"
    paths = [encode(Flood(100, vtep), asn=65000, router_id=vtep, rd_index=1)]
    paths += [encode(MacRoute(100, bytes([6, 0]) + i.to_bytes(4, "big"), None, vtep), asn=65000, router_id=vtep, rd_index=1)
              for i in range(3000)]
    service._take(paths)
    assert table.evpn_count() == 3000 and table.lookup(bytes([6, 0]) + (2999).to_bytes(4, "big")).vtep == vtep


def test_a_resync_of_thousands_of_type_3_routes_sets_the_flood_list_once_and_names_its_head():
    """A listing (gobgpd's after a reconnection, etcd's at start) of 2000 type-3 routes gave
    2000 SetFloods of up to 2000 VTEPs each -- a gigabyte at 16k.  Now one, of FLOOD_SHOWN
    VTEPs and their number."""
    from vxland.evpn.rib import FLOOD_SHOWN, EvpnRib, SetFlood
    from vxland.evpn.route_types import FloodRoute
    rib = EvpnRib("192.0.2.1")
    rib.add_network(100)
    vteps = [f"10.0.{i >> 8}.{i & 255}" for i in range(1, 2001)]
    actions = rib.resync({("rd", 3, 0, v): FloodRoute(100, v) for v in vteps}, 0.0)
    floods = [a for a in actions if isinstance(a, SetFlood)]
    assert len(floods) == 1 and floods[0].total == 2000 and len(floods[0].vteps) == FLOOD_SHOWN
    assert list(floods[0].vteps) == sorted(vteps, key=lambda v: tuple(map(int, v.split("."))))[:FLOOD_SHOWN]
