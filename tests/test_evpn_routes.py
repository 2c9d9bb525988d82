"""EVPN without a daemon: routes decoded from what gobgpd really reported (tests/evpn/paths.json,
recorded by tests/evpn/record.py from vxland with FRR over iBGP and eBGP, a MAC moving both
ways), routes encoded and decoded again, and the RIB's decisions driven in memory."""

import json
import os

import pytest
from google.protobuf.json_format import ParseDict

from vxland.evpn import rib as R
from vxland.evpn.gobgp import gobgp_pb2 as api
from vxland.evpn.routes import FloodRoute, MacRoute, decode, encode
from vxland.evpn.targets import RouteTarget
from vxland.wire import mac_to_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDED = json.load(open(os.path.join(HERE, "evpn", "paths.json")))
LOCAL = RECORDED["hosts"]["vxland"]                     # 192.0.2.1
EBGP, IBGP = RECORDED["hosts"]["frr_ebgp"], RECORDED["hosts"]["frr_ibgp"]
MOVER = mac_to_bytes("02:42:0a:2a:00:03")                # h3's container, which moved to h1 and back
VNIS = {42: []}


def paths(kind=None, until=None):
    """The recorded paths (from "watch" or "list"), up to the mark `until`."""
    out = []
    for r in RECORDED["records"]:
        if r["from"] == "mark":
            if r["label"] == until:
                break
            continue
        if kind is None or r["from"] == kind:
            out.append(ParseDict(r["path"], api.Path()))
    return out


def decoded(kind=None, until=None, vnis=None):
    return [decode(p, VNIS if vnis is None else vnis, LOCAL) for p in paths(kind, until)]


def test_frr_routes_over_ebgp_and_ibgp_decode():
    routes = {d.route for d in decoded("watch", "after the containers spoke") if d.route}
    assert FloodRoute(42, EBGP) in routes and FloodRoute(42, IBGP) in routes      # RT 65001:42 and 65000:42
    assert MacRoute(42, mac_to_bytes("02:42:0a:2a:00:02"), None, EBGP) in routes
    assert MacRoute(42, MOVER, None, IBGP) in routes
    peers = {d.peer for d in decoded("watch", "after the containers spoke") if d.route}
    assert peers == {EBGP, IBGP}


def test_our_own_routes_come_back_and_are_skipped():
    ours = [d for d in decoded("list", "after the containers spoke") if d.ignored == "our own"]
    assert ours and all(d.peer == "" for d in ours)        # gobgp marks them with neighbor_ip "<nil>"
    assert {d.key[1] for d in ours} == {2, 3}


def test_mac_mobility_as_recorded():
    """h1 announced the container with sequence 1 when it moved there; FRR withdrew its own;
    back on h3, FRR announced sequence 2 (and vxland withdrew, not recorded as ours)."""
    watched = decoded("watch")
    withdrawn = [d for d in watched if d.withdrawn]
    assert any(d.key[3] == "02:42:0a:2a:00:03" and d.key[0].startswith(IBGP) for d in withdrawn)
    back = [d.route for d in watched if isinstance(d.route, MacRoute) and d.route.mac == MOVER and d.route.vtep == IBGP]
    assert [r.seq for r in back] == [0, 2]
    # seen from elsewhere (another local address), our own announcement carries sequence 1
    as_others_see = [decode(p, VNIS, "198.51.100.1").route for p in paths("watch") if not p.is_withdraw]
    assert MacRoute(42, MOVER, None, LOCAL, 1) in as_others_see


def test_a_withdrawal_names_the_same_nlri_as_its_route():
    watched = decoded("watch")
    for w in (d for d in watched if d.withdrawn):
        assert any(d.key == w.key and d.route is not None for d in watched) or w.key[0].startswith(LOCAL)


def test_route_targets_choose_the_vni():
    # an explicit import target takes only that AS's routes: FRR's eBGP ones (65001:42) are left out
    strict = decoded("watch", "after the containers spoke", {42: [RouteTarget(65000, 42)]})
    assert not any(d.route and d.route.vtep == EBGP for d in strict)
    assert any(d.ignored == "no route target of a VNI served here" for d in strict)
    # a VNI not served: nothing is taken
    assert all(d.route is None for d in decoded("watch", None, {7: []}))


@pytest.mark.parametrize("route", [
    FloodRoute(42, "198.51.100.7"),
    MacRoute(42, mac_to_bytes("02:00:00:00:00:01"), None, "198.51.100.7"),
    MacRoute(42, mac_to_bytes("02:00:00:00:00:01"), "10.0.0.1", "198.51.100.7", seq=5),
    MacRoute(4096, mac_to_bytes("02:00:00:00:00:01"), "2001:db8::1", "198.51.100.7", seq=1, sticky=True),
])
def test_encode_then_decode_is_the_same_route(route):
    path = encode(route, asn=65000, router_id="198.51.100.7", rd_index=3)
    d = decode(path, {route.vni: []}, "192.0.2.1")
    assert d.route == route and d.key[0] == "198.51.100.7:3"


def test_hostile_paths_are_ignored_with_a_reason():
    good = encode(MacRoute(42, mac_to_bytes("02:00:00:00:00:01"), None, "198.51.100.7"), asn=65000,
                  router_id="198.51.100.7", rd_index=1)
    no_hop = api.Path(family=good.family, nlri=good.nlri, pattrs=[p for p in good.pattrs
                                                                if "NextHop" not in p.type_url])
    assert decode(no_hop, VNIS, LOCAL).ignored == "no next hop"
    no_encap = encode(FloodRoute(42, "198.51.100.7"), asn=65000, router_id="198.51.100.7", rd_index=1)
    del no_encap.pattrs[:]
    assert decode(no_encap, VNIS, LOCAL).route is None
    multicast = encode(MacRoute(42, mac_to_bytes("01:00:5e:00:00:01"), None, "198.51.100.7"), asn=65000,
                       router_id="198.51.100.7", rd_index=1)
    assert "not a station MAC" in decode(multicast, VNIS, LOCAL).ignored
    other_family = api.Path(family=api.Family(afi=api.Family.AFI_IP, safi=api.Family.SAFI_UNICAST))
    assert decode(other_family, VNIS, LOCAL).ignored == "not EVPN"


def test_the_rib_replays_the_recording():
    """The recorded watch events through the RIB: at the end, the mover is behind h3 with the
    sequence number FRR gave it, and the flood list names both FRR VTEPs."""
    rib = R.EvpnRib(LOCAL)
    rib.add_network(42)
    actions = []
    for d in decoded("watch"):
        if d.withdrawn or d.ignored:
            actions += rib.withdraw(d.key, 0.0)
        else:
            actions += rib.receive(d.key, d.route, 0.0)
    assert R.SetFlood(42, (EBGP, IBGP)) in actions
    installs = [a for a in actions if isinstance(a, R.InstallMac) and a.mac == MOVER]
    assert installs and installs[-1].vtep == IBGP


# ---- the RIB's decisions ---------------------------------------------------------------------
A = mac_to_bytes("02:00:00:00:00:0a")
V1, V2, V3 = "192.0.2.2", "192.0.2.3", "192.0.2.4"


def mac_route(vtep, seq=0, ip=None, sticky=False, rd=None):
    route = MacRoute(42, A, ip, vtep, seq, sticky)
    return (rd or f"{vtep}:1", 2, 0, "02:00:00:00:00:0a", ip or "<nil>"), route


@pytest.fixture
def rib():
    r = R.EvpnRib(LOCAL)
    assert r.add_network(42) == [R.Announce(FloodRoute(42, LOCAL))]
    return r


def test_flood_lists_follow_type_3(rib):
    assert rib.receive(("rd", 3, 0, V2), FloodRoute(42, V2), 0) == [R.SetFlood(42, (V2,))]
    assert rib.receive(("rd1", 3, 0, V1), FloodRoute(42, V1), 0) == [R.SetFlood(42, (V1, V2))]
    assert rib.receive(("rd1", 3, 0, V1), FloodRoute(42, V1), 0) == []          # the same again
    assert rib.withdraw(("rd", 3, 0, V2), 0) == [R.SetFlood(42, (V1,))]
    assert rib.receive(("rd", 3, 0, V9 := "192.0.2.9"), FloodRoute(7, V9), 0) == []  # a VNI not served


def test_the_highest_sequence_then_the_lowest_vtep_wins(rib):
    k2, r2 = mac_route(V2)
    k1, r1 = mac_route(V1)
    assert rib.receive(k2, r2, 0) == [R.InstallMac(42, A, V2)]
    assert rib.receive(k1, r1, 0) == [R.InstallMac(42, A, V1)]                  # equal: lower address
    k3, r3 = mac_route(V3, seq=2)
    assert rib.receive(k3, r3, 0) == [R.InstallMac(42, A, V3)]                  # higher sequence
    kip, rip = mac_route(V3, seq=2, ip="10.0.0.5")
    assert rib.receive(kip, rip, 0) == [R.InstallIp(42, "10.0.0.5", A)]
    assert rib.withdraw(k3, 0) == []                                            # V3 still claims it (MAC+IP)
    assert rib.withdraw(kip, 0) == [R.InstallMac(42, A, V1), R.RemoveIp(42, "10.0.0.5")]
    assert rib.withdraw(k1, 0) + rib.withdraw(k2, 0) == [R.InstallMac(42, A, V2), R.RemoveMac(42, A)]


def test_a_mac_that_appears_here_takes_the_next_sequence_number(rib):
    k, r = mac_route(V2, seq=3)
    rib.receive(k, r, 0)
    actions = rib.set_local(42, A, True, ["10.0.0.1"], 1)
    assert R.Announce(MacRoute(42, A, None, LOCAL, 4)) in actions
    assert R.Announce(MacRoute(42, A, "10.0.0.1", LOCAL, 4)) in actions
    assert R.RemoveMac(42, A) in actions
    # the old owner's route goes away: nothing changes for us
    assert rib.withdraw(k, 2) == []
    # it leaves: withdrawn
    assert rib.set_local(42, A, False, [], 3) == [R.Withdraw(MacRoute(42, A, None, LOCAL, 4)),
                                                 R.Withdraw(MacRoute(42, A, "10.0.0.1", LOCAL, 4))]


def test_a_higher_claim_elsewhere_moves_it_away(rib):
    assert rib.set_local(42, A, True, [], 0) == [R.Announce(MacRoute(42, A, None, LOCAL, 0))]
    k, r = mac_route(V3, seq=1)
    assert rib.receive(k, r, 1) == [R.Withdraw(MacRoute(42, A, None, LOCAL, 0)), R.InstallMac(42, A, V3)]
    # the table replaced our entry; it tells the RIB, which has nothing more to do
    assert rib.set_local(42, A, False, [], 1) == []
    # a claim at our own sequence from a higher address loses to us
    rib2 = R.EvpnRib("192.0.2.1")
    rib2.add_network(42)
    rib2.set_local(42, A, True, [], 0)
    k, r = mac_route(V3, seq=0)
    assert rib2.receive(k, r, 0) == [R.Announce(MacRoute(42, A, None, "192.0.2.1", 1))]


def test_sticky_macs_do_not_move(rib):
    rib.set_local(42, A, True, [], 0, static=True)
    k, r = mac_route(V3, seq=9)
    assert rib.receive(k, r, 1) == [R.Announce(MacRoute(42, A, None, LOCAL, 10, sticky=True))]
    rib2 = R.EvpnRib(LOCAL)
    rib2.add_network(42)
    k, r = mac_route(V3, seq=0, sticky=True)
    rib2.receive(k, r, 0)
    assert rib2.set_local(42, A, True, [], 1) == []          # learned here: a sticky claim still wins


def test_a_mac_that_keeps_moving_here_is_frozen_as_a_duplicate(rib):
    seq = 0
    for i in range(6):
        k, r = mac_route(V3, seq=seq + 1)
        rib.receive(k, r, i)                                  # elsewhere, with a higher number
        rib.set_local(42, A, False, [], i)                    # (the table moved it away)
        actions = rib.set_local(42, A, True, [], i + 0.5)     # and here again
        seq = max((a.route.seq for a in actions if isinstance(a, R.Announce)), default=seq)
    assert rib.duplicates == 1 and rib.frozen() == [(42, A)]
    assert not [a for a in actions if isinstance(a, R.Announce)]
    assert rib.tick(10) == []
    later = rib.tick(400)                                     # the window passed: decided again
    assert any(isinstance(a, R.Announce) for a in later) and rib.frozen() == []


def test_resync_removes_what_is_gone_and_takes_what_is_new(rib):
    k1, r1 = mac_route(V1)
    rib.receive(k1, r1, 0)
    rib.receive(("rd", 3, 0, V1), FloodRoute(42, V1), 0)
    k2, r2 = mac_route(V2, seq=1)
    actions = rib.resync({k2: r2, ("rd2", 3, 0, V2): FloodRoute(42, V2)}, 1)
    assert R.InstallMac(42, A, V2) in actions and R.SetFlood(42, (V2,)) in actions
    assert rib.clear_received(2) == [R.RemoveMac(42, A), R.SetFlood(42, ())]


def test_removing_a_network_withdraws_all_of_it(rib):
    rib.set_local(42, A, True, ["10.0.0.1"], 0)
    actions = rib.remove_network(42)
    assert R.Withdraw(FloodRoute(42, LOCAL)) in actions and len(actions) == 3
    assert rib.announcements() == []


def test_a_network_served_again_takes_what_bgp_says_at_once(rib):
    k, r = mac_route(V2)
    rib.receive(k, r, 0)
    rib.receive(("rd", 3, 0, V2), FloodRoute(42, V2), 0)
    rib.remove_network(42)
    assert rib.add_network(42, 1) == [R.Announce(FloodRoute(42, LOCAL)), R.SetFlood(42, (V2,)),
                                      R.InstallMac(42, A, V2)]


# ---- a fleet with a hostile or odd neighbour ----------------------------------------------------
def test_an_unusable_flood_vtep_is_ignored_alone_and_the_list_keeps_following_type_3():
    """One type-3 route whose VTEP this underlay cannot reach (IPv6 in an IPv4 fabric, multicast,
    0.0.0.0 as the PMSI id) used to make the table refuse the whole flood list while the RIB
    took it as applied: VTEPs that joined later got no BUM traffic, departed ones kept it."""
    import ipaddress
    odd = []
    for vtep in ("2001:db8::7", "239.1.1.1", "0.0.0.0"):
        path = encode(FloodRoute(42, "198.51.100.9"), asn=65000, router_id="198.51.100.9", rd_index=1)
        for pattr in path.pattrs:                     # the PMSI tunnel's id names the VTEP
            if "PmsiTunnel" in pattr.type_url:
                from vxland.evpn.gobgp import attribute_pb2 as attr
                pmsi = attr.PmsiTunnelAttribute()
                pattr.Unpack(pmsi)
                pmsi.id = ipaddress.ip_address(vtep).packed
                pattr.Pack(pmsi)
        odd.append(decode(path, VNIS, LOCAL))
    assert all(d.route is None and "cannot reach" in d.ignored for d in odd)
    # and the table, given one anyway, leaves out that one alone
    from test_fdb import Recorder
    from vxland.fdb import ForwardingTable
    mirror = Recorder()
    table = ForwardingTable(42, mirror, family=4, local=LOCAL)
    assert table.set_evpn_flood([V1, "2001:db8::7", V2]) == ["2001:db8::7"]
    assert mirror.flood == [V1, V2] and table.flood_refused == 1
    table.set_evpn_flood([V2, "239.1.1.1", V3])                 # V1 left, V3 joined
    assert mirror.flood == [V2, V3]


def test_a_claim_at_the_last_sequence_number_is_tied_not_overflowed(rib):
    """A peer announces a MAC with sequence 0xFFFFFFFF.  The MAC appearing here cannot outbid it
    (32 bits, no wrap-around): it is announced at 0xFFFFFFFF too and the tie goes to the lower
    VTEP address -- never 2**32, which cannot be encoded."""
    k, r = mac_route(V3, seq=R.MAX_SEQ)                       # V3 = 192.0.2.4, above LOCAL
    rib.receive(k, r, 0)
    actions = rib.set_local(42, A, True, [], 1)
    ours = [a.route for a in actions if isinstance(a, R.Announce)]
    assert ours == [MacRoute(42, A, None, LOCAL, R.MAX_SEQ)] and R.RemoveMac(42, A) in actions
    encode(ours[0], asn=65000, router_id=LOCAL, rd_index=1)    # encodable
    low = R.EvpnRib("192.0.2.200")                            # a VTEP above the claimant loses the tie
    low.add_network(42)
    low.receive(*mac_route(V1, seq=R.MAX_SEQ), 0)
    assert low.set_local(42, A, True, [], 1) == []            # it follows V1, and says nothing
    assert not [a for a in low.set_local(42, A, True, [], 2) if isinstance(a, R.Announce)]


def evpn_service(**table_args):
    """The EVPN service without gobgpd (external, never started): the RIB and the tables, joined."""
    from test_fdb import Recorder
    from vxland.config import EvpnConfig, NetworkSpec
    from vxland.evpn.service import EvpnService
    from vxland.fdb import ForwardingTable
    service = EvpnService(EvpnConfig(asn=65000, router_id=LOCAL, gobgpd="external"), LOCAL, clock=lambda: 5.0)
    mirror = Recorder()
    table = ForwardingTable(42, mirror, family=4, local=LOCAL, **table_args)
    service.add_network(NetworkSpec(vni=42, tap="vx0", evpn=True), table, 0)
    return service, table, mirror


def test_a_peer_cannot_grow_the_tables_past_max_evpn():
    service, table, _ = evpn_service(max_evpn=3)
    for i in range(10):
        key, route = (f"{V2}:1", 2, 0, f"02:00:00:00:01:{i:02x}", "<nil>"), \
            MacRoute(42, bytes.fromhex(f"0200000001{i:02x}"), f"10.9.0.{i + 1}", V2)
        service._apply(service.rib.receive(key, route, 5.0))
    assert table.evpn_count() == 3 and table.evpn_refused == 7
    assert len(table.neighbours) == 3 and table.neighbours.evpn_refused == 7
    assert service.counters["table_refusals"] == 14


def test_an_address_that_moves_between_two_local_macs_is_never_announced_twice():
    """A container's address claimed by a second one behind the same TAP while the first still
    lives: neither MAC+IP route stays announced (a forger's never is); once the first is gone,
    the second's is."""
    service, table, _ = evpn_service()
    first, second = mac_to_bytes("02:00:00:00:00:01"), mac_to_bytes("02:00:00:00:00:02")
    table.see(first, None, 1.0, "10.42.0.5")
    table.see(second, None, 1.0)

    def with_ip():
        return {(r.mac, r.ip) for r in service.rib.announcements() if isinstance(r, MacRoute) and r.ip}
    assert with_ip() == {(first, "10.42.0.5")}
    table.see(second, None, 2.0, "10.42.0.5")                 # the second claims the first's address
    assert with_ip() == set() and table.neighbours.conflicts == 1
    table.delete(first)                                       # the first container is gone
    table.expire(3.0)
    assert with_ip() == {(second, "10.42.0.5")}


def test_an_install_the_tables_refused_is_made_once_there_is_room():
    """max_evpn reached: a route's install is refused.  It used to stay missing for as long as
    its route did not change, though room was made; now the RIB decides it again at a tick."""
    service, table, _ = evpn_service(max_evpn=1)
    first, second = (mac_to_bytes(f"02:00:00:00:01:0{i}") for i in (1, 2))
    keys = [(f"{V2}:1", 2, 0, f"02:00:00:00:01:0{i}", "<nil>") for i in (1, 2)]
    service._apply(service.rib.receive(keys[0], MacRoute(42, first, None, V2), 5.0))
    service._apply(service.rib.receive(keys[1], MacRoute(42, second, None, V2), 5.0))
    assert table.lookup(second) is None and table.evpn_refused == 1
    service._apply(service.rib.withdraw(keys[0], 6.0))     # room
    service._apply(service.rib.tick(7.0))
    assert table.lookup(second).vtep == V2


def test_a_refusal_inside_a_watch_event_is_judged_where_it_happened(monkeypatch):
    """One watch event: M1 refused (table full), M0 withdrawn (room), M1 withdrawn and
    announced again.  Carried out all at the end, the refusal of the first M1 undid the RIB's
    record of the last one's install, and M1's entry then outlived its withdrawal for good.
    Each path is carried out in turn (only the flood lists wait for the event's end)."""
    from vxland.evpn import service as S
    from vxland.evpn.routes import Decoded
    service, table, mirror = evpn_service(max_evpn=1)
    monkeypatch.setattr(S, "decode", lambda path, *args: path)       # the paths are Decoded already
    m0, m1 = mac_to_bytes("02:00:00:00:01:00"), mac_to_bytes("02:00:00:00:01:01")

    def key(mac):
        return (f"{V2}:1", 2, 0, mac.hex(":"), "<nil>")
    service._take([Decoded(key(m0), MacRoute(42, m0, None, V2), False)])
    service._take([Decoded(key(m1), MacRoute(42, m1, None, V2), False), Decoded(key(m0), None, True),
                   Decoded(key(m1), None, True), Decoded(key(m1), MacRoute(42, m1, None, V2), False)])
    assert table.lookup(m1).vtep == V2
    service._take([Decoded(key(m1), None, True)])
    service.tick()
    assert table.lookup(m1) is None and m1 not in mirror.entries
