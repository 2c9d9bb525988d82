"""Forwarding-table policy, driven in memory with `now` passed in."""

import ipaddress

import pytest

from vxland.datapath import MAX_FLOOD, EntryKind, NetworkConfig, ReferenceDataPlane
from vxland.fdb import ForwardingTable

A, B, C = (bytes.fromhex(h) for h in ("020000000001", "020000000002", "020000000003"))
BCAST = bytes.fromhex("ffffffffffff")


class Recorder:
    """A LookupMirror that remembers what the table pushed into the data path."""

    def __init__(self):
        self.entries, self.flood, self.full, self.neigh_full = {}, [], False, False
        self.trust = (False, [], [])
        self.trust_sets = self.trust_changes = 0     # whole-set pushes, and one-VTEP changes
        self.neighbours = {}

    def set_entry(self, mac, vtep, static):
        self.entries[mac] = (vtep, static)

    def delete_entry(self, mac):
        del self.entries[mac]

    def set_flood(self, remotes):
        self.flood = list(remotes)

    def set_full(self, full):
        self.full = full

    def set_trust(self, on, vteps, prefixes):
        self.trust = (on, sorted(vteps), list(prefixes))
        self.trust_sets += 1

    def trust_vtep(self, vtep, trusted):
        on, vteps, prefixes = self.trust
        self.trust = (on, sorted({*vteps, vtep} if trusted else set(vteps) - {vtep}), prefixes)
        self.trust_changes += 1

    def set_neigh_full(self, full):
        self.neigh_full = full

    def set_neighbour(self, ip, mac):
        self.neighbours[ip] = mac

    def delete_neighbour(self, ip):
        del self.neighbours[ip]


@pytest.fixture
def mirror():
    return Recorder()


def test_learns_remote_and_local(mirror):
    t = ForwardingTable(100, mirror, port="vx0")
    t.see(A, "192.0.2.2", now=0)
    t.see(B, None, now=0)
    assert mirror.entries == {A: ("192.0.2.2", False), B: (None, False)}
    assert t.lookup(B).local and t.lookup(A).vtep == "192.0.2.2"


def test_never_learns_multicast_or_zero(mirror):
    t = ForwardingTable(100, mirror)
    t.see(BCAST, "192.0.2.2", 0)
    t.see(bytes(6), "192.0.2.2", 0)
    assert t.entries() == [] and mirror.entries == {}


def test_ageing_only_refreshed_by_sightings(mirror):
    t = ForwardingTable(100, mirror, ageing=30)
    t.see(A, "192.0.2.2", now=0)
    t.see(A, "192.0.2.2", now=20)          # received from A: refresh
    assert t.expire(now=45) == []
    aged = t.expire(now=50)
    assert [e.mac for e in aged] == [A] and A not in mirror.entries


def test_moves_learned_entries(mirror):
    t = ForwardingTable(100, mirror)
    t.see(A, "192.0.2.2", 0)
    t.see(A, "192.0.2.3", 1)
    assert mirror.entries[A] == ("192.0.2.3", False)
    t.see(A, None, 2)
    assert mirror.entries[A] == (None, False)


def test_static_never_moves_or_ages(mirror):
    t = ForwardingTable(100, mirror, ageing=10)
    t.add_static(A, "192.0.2.9", now=0)
    t.see(A, "192.0.2.3", 1)
    assert t.expire(now=10_000) == []
    assert mirror.entries[A] == ("192.0.2.9", True)


def test_static_replaces_learned_and_delete_brings_back_flooding(mirror):
    t = ForwardingTable(100, mirror)
    t.see(A, "192.0.2.2", 0)
    t.add_static(A, "192.0.2.9", 0)
    assert t.lookup(A).static and t.lookup(A).vtep == "192.0.2.9"
    assert t.delete(A) and not t.delete(A)
    assert t.lookup(A) is None and A not in mirror.entries


def test_cap_on_learned_entries(mirror):
    t = ForwardingTable(100, mirror, max_learned=2)
    t.add_static(C, "192.0.2.9", 0)             # static entries do not count
    t.see(A, "192.0.2.2", 0)
    assert not mirror.full
    t.see(B, "192.0.2.2", 0)
    assert mirror.full
    t.see(bytes.fromhex("020000000004"), "192.0.2.2", 0)
    assert t.learned_count() == 2 and t.learn_refused == 1
    t.see(A, "192.0.2.3", 1)                    # known MACs still move when full
    assert mirror.entries[A] == ("192.0.2.3", False)
    t.delete(B)
    assert not mirror.full


def test_flood_list(mirror):
    t = ForwardingTable(100, mirror)
    assert t.add_remote("192.0.2.2") and not t.add_remote("192.0.2.2")
    assert t.add_remote("192.0.2.3")
    assert mirror.flood == ["192.0.2.2", "192.0.2.3"]
    assert t.remove_remote("192.0.2.2") and not t.remove_remote("192.0.2.2")
    assert mirror.flood == ["192.0.2.3"]


@pytest.mark.parametrize("bad", ["224.0.0.1", "0.0.0.0", "255.255.255.255", "192.0.2", "host"])
def test_bad_vtep_addresses_are_refused(mirror, bad):
    t = ForwardingTable(100, mirror)
    with pytest.raises(ValueError):
        t.add_remote(bad)
    with pytest.raises(ValueError):
        t.add_static(A, bad, 0)
    assert mirror.flood == [] and mirror.entries == {}


def test_static_multicast_mac_is_refused(mirror):
    with pytest.raises(ValueError):
        ForwardingTable(100, mirror).add_static(BCAST, "192.0.2.2", 0)


def test_table_and_data_path_together():
    """Learning from decapsulated frames turns flooding into unicast; ageing turns it back."""
    dp = ReferenceDataPlane()
    view = dp.add_network(0, NetworkConfig(vni=100, local="192.0.2.1"))
    t = ForwardingTable(100, view, ageing=300)
    for r in ("192.0.2.2", "192.0.2.3"):
        t.add_remote(r)
    to_a = A + B + b"\x08\x00" + b"hello"
    out, _ = dp.encap([(0, to_a)], now=0)
    assert sorted(d.dst for d in out) == ["192.0.2.2", "192.0.2.3"]     # flooded, one copy each
    frames, sightings = dp.decap([(b"\x08\0\0\0\0\0\x64\0" + B + A + b"\x08\x00", "192.0.2.3")], now=1)
    assert frames and sightings
    for s in sightings:
        t.see(s.mac, s.vtep, now=1)
    out, _ = dp.encap([(0, to_a)], now=2)
    assert [d.dst for d in out] == ["192.0.2.3"]                         # unicast after learning
    out, _ = dp.encap([(0, to_a)], now=250)                               # sending *to* A ...
    t.expire(now=302)                                                     # ... does not refresh it
    out, _ = dp.encap([(0, to_a)], now=303)
    assert len(out) == 2


# ---- EVPN's entries and flood list (vxland/evpn writes them through this API) -----------------

class Observer:
    def __init__(self):
        self.changed_macs = []

    def changed(self, table, mac):
        self.changed_macs.append(mac)


def test_an_evpn_entry_is_routed_not_learned(mirror):
    t = ForwardingTable(100, mirror, port="vx0")
    t.observer = seen = Observer()
    t.see(A, "192.0.2.2", now=0)
    assert t.set_evpn_entry(A, "192.0.2.3", now=1)          # the route wins over what was learned
    assert mirror.entries[A] == ("192.0.2.3", EntryKind.evpn) and t.lookup(A).kind == EntryKind.evpn
    t.see(A, "192.0.2.2", now=2)                            # learning never moves it elsewhere...
    assert t.lookup(A).vtep == "192.0.2.3"
    t.expire(now=10_000)                                    # ...nor ages it
    assert t.lookup(A) is not None and t.learned_count() == 0
    seen.changed_macs.clear()
    t.see(A, None, now=3)                                   # seen behind the TAP: it moved here
    assert t.lookup(A).local and t.lookup(A).learned and mirror.entries[A] == (None, EntryKind.learned)
    assert seen.changed_macs == [A]
    assert t.set_evpn_entry(A, "192.0.2.3", now=4) and t.lookup(A).vtep == "192.0.2.3"   # and away again
    assert t.delete_evpn_entry(A) and A not in mirror.entries
    assert not t.delete_evpn_entry(A)


def test_a_static_entry_wins_over_evpn(mirror):
    t = ForwardingTable(100, mirror, port="vx0")
    t.add_static(A, None, now=0)
    assert not t.set_evpn_entry(A, "192.0.2.3", now=1)
    assert t.lookup(A).static and t.lookup(A).local
    t.see(B, "192.0.2.2", now=0)
    assert not t.delete_evpn_entry(B)                       # EVPN removes only its own


def test_the_evpn_flood_list_joins_the_configured_one_and_is_trusted(mirror):
    t = ForwardingTable(100, mirror, port="vx0", accept_from="known")
    t.add_remote("192.0.2.2")
    t.set_evpn_flood(["192.0.2.3", "192.0.2.2", "192.0.2.4"])
    assert mirror.flood == ["192.0.2.2", "192.0.2.3", "192.0.2.4"] and t.remotes == ["192.0.2.2"]
    assert mirror.trust == (True, ["192.0.2.2", "192.0.2.3", "192.0.2.4"], [])
    t.set_evpn_flood(["192.0.2.4"])
    assert mirror.flood == ["192.0.2.2", "192.0.2.4"]
    assert mirror.trust == (True, ["192.0.2.2", "192.0.2.4"], [])
    t.remove_remote("192.0.2.2")
    assert mirror.flood == ["192.0.2.4"]
    t.set_evpn_entry(A, "198.51.100.7", now=0)              # a route's VTEP is trusted too
    assert "198.51.100.7" in mirror.trust[1]
    t.clear_evpn()
    assert mirror.flood == [] and mirror.trust == (True, [], []) and t.lookup(A) is None


def test_the_evpn_flood_list_is_bounded(mirror, caplog):
    t = ForwardingTable(100, mirror, port="vx0")
    many = [f"198.51.100.{i}" for i in range(1, 255)] + [f"203.0.113.{i}" for i in range(1, 11)]
    t.set_evpn_flood(many)
    assert len(mirror.flood) == MAX_FLOOD and "left out" in caplog.text


def test_evpn_addresses_are_neither_aged_nor_overwritten(mirror):
    t = ForwardingTable(100, mirror, port="vx0", ageing=10)
    t.set_evpn_neighbour("10.0.0.2", A, now=0)
    t.see(B, "192.0.2.2", now=1, ip="10.0.0.2")             # an ARP that says otherwise
    t.expire(now=1000)
    assert t.neighbours.lookup("10.0.0.2").mac == A and mirror.neighbours["10.0.0.2"] == A
    t.delete_evpn_neighbour("10.0.0.2")
    assert "10.0.0.2" not in mirror.neighbours


def test_the_observer_hears_of_local_macs_and_their_addresses(mirror):
    t = ForwardingTable(100, mirror, port="vx0", ageing=10)
    t.observer = seen = Observer()
    t.see(A, None, now=0, ip="10.0.0.1")
    t.see(A, None, now=1, ip="10.0.0.1")                    # nothing new: no call
    assert seen.changed_macs == [A, A]                      # the address, then the MAC
    t.expire(now=100)
    assert seen.changed_macs[2:] == [A]                     # aged: one call for the MAC and its address


def test_each_vtep_joining_the_trusted_set_costs_one_change_not_the_whole_set(mirror):
    """With accept_from = "known", 4000 EVPN entries behind 4000 VTEPs used to push the whole
    trusted set to the data path for each (quadratic: 53 s); now one change each."""
    t = ForwardingTable(100, mirror, port="vx0", accept_from="known", family=4)
    assert mirror.trust_sets == 1
    for i in range(4000):
        t.set_evpn_entry((0x020000000000 + i).to_bytes(6, "big"), str(ipaddress.IPv4Address(0x0A000001 + i)), now=0)
    assert len(mirror.trust[1]) == len(t.trusted()) == 4000
    assert mirror.trust_sets == 1 and mirror.trust_changes == 4000


def test_evpn_remotes_give_way_to_configured_ones_and_come_back(mirror):
    t = ForwardingTable(100, mirror, port="vx0", family=4)
    evpn = [f"198.51.100.{i}" for i in range(1, 255)] + ["203.0.113.1", "203.0.113.2"]    # 256 of them
    assert t.set_evpn_flood(evpn) == []
    t.add_remote("192.0.2.2")                                 # never refused for EVPN's sake
    assert len(mirror.flood) == 256 and "192.0.2.2" in mirror.flood and "203.0.113.2" not in mirror.flood
    t.remove_remote("192.0.2.2")
    assert mirror.flood == evpn                               # the one left out is back


def test_a_peer_that_names_too_many_vteps_never_leaves_the_trust_set_behind_the_flood_list(mirror):
    """EVPN entries behind as many VTEPs as the trust set holds, then a type-3 route for one
    more: the data path refused it (no room), Python thought it trusted, and it was dropped for
    good.  Entries' VTEPs stop short of the trust set's size, so the flood list always fits."""
    from vxland.datapath import MAX_TRUSTED
    from vxland.fdb import ENTRY_VTEPS, TableFull
    dp = ReferenceDataPlane()
    view = dp.add_network(0, NetworkConfig(vni=100, local="192.0.2.1"))
    t = ForwardingTable(100, view, accept_from="known", family=4, max_evpn=None)
    for i in range(ENTRY_VTEPS):
        t.set_evpn_entry((0x020000000000 + i).to_bytes(6, "big"), str(ipaddress.IPv4Address(0x0A000001 + i)), now=0)
    with pytest.raises(TableFull):
        t.set_evpn_entry(bytes.fromhex("02ffffffffff"), "10.255.255.1", now=0)
    flood = [f"198.51.100.{i}" for i in range(1, 255)] + ["203.0.113.1", "203.0.113.2"]
    assert t.set_evpn_flood(flood) == []
    assert len(dp._nets[0].trusted) == len(t.trusted()) == MAX_TRUSTED
    assert dp._nets[0].trusts("203.0.113.2")
