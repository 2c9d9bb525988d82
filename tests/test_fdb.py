"""Forwarding-table policy, driven in memory with `now` passed in."""

import pytest

from vxland.datapath import NetworkConfig, ReferenceDataPlane
from vxland.fdb import ForwardingTable

A, B, C = (bytes.fromhex(h) for h in ("020000000001", "020000000002", "020000000003"))
BCAST = bytes.fromhex("ffffffffffff")


class Recorder:
    """A LookupMirror that remembers what the table pushed into the data path."""

    def __init__(self):
        self.entries, self.flood, self.full = {}, [], False
        self.trust = (False, [], [])
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
        self.trust = (on, list(vteps), list(prefixes))

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
