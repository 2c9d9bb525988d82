"""The etcd control plane in memory: EtcdService and its forwarding tables driven through a
fake store (tests/etcd_fake.py) -- hosts that come and go, keys that lie, a store that goes
away, compacts, or forgets a lease.  The real cluster: tests/test_etcd.py."""

import asyncio
import json

import pytest

from etcd_fake import FakeStore
from test_fdb import Recorder
from vxland.config import EtcdConfig, NetworkSpec
from vxland.etcd import blocks as B
from vxland.etcd.layout import Addressing, Keys, parse_endpoint, parse_route
from vxland.etcd.service import EtcdService
from vxland.evpn.route_types import FloodRoute, MacRoute
from vxland.fdb import ForwardingTable
from vxland.wire import mac_to_bytes

MAC = mac_to_bytes("02:00:00:00:00:0a")
PREFIX = "/vxland/vni/42/"


class Host:
    """One vxland's etcd plane and VNI 42's table, on `store`."""

    def __init__(self, store, local, subnets=("10.88.0.0/16",), block_prefix=None, max_evpn=65536, ttl=5):
        self.local = local
        self.fatal: list[str] = []
        self.mirror = Recorder()
        self.table = ForwardingTable(42, self.mirror, family=4, local=local, max_evpn=max_evpn)
        config = EtcdConfig(endpoints=["http://192.0.2.101:2379"], ttl=ttl, host=f"host-{local}").validate()
        self.service = EtcdService(config, local, 4, self.fatal.append, clock=lambda: 5.0, store=store)
        self.spec = NetworkSpec(vni=42, tap="vx0", etcd=True, subnets=list(subnets), block_prefix=block_prefix,
                                max_evpn=max_evpn)

    async def start(self):
        self.service.add_network(self.spec, self.table, 0)
        await self.service.start()

    def flood(self):
        return set(self.table.evpn_remotes)

    def block(self):
        rows = self.service.addresses(42)["blocks"]
        return rows[0]["block"] if rows else None


async def until(what, predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def run(coroutine):
    asyncio.run(asyncio.wait_for(coroutine, 30))


async def fleet(store, n, **options):
    hosts = [Host(store, f"192.0.2.{i + 1}", **options) for i in range(n)]
    for h in hosts:
        await h.start()
    await until("every host sees the others, its addressing settled",
                lambda: all(len(h.flood()) == n - 1 and h.service.addresses(42)["state"] != "claiming"
                            for h in hosts))
    return hosts


async def stop(*hosts):
    for h in hosts:
        await h.service.stop()


def test_hosts_find_each_other_claim_distinct_blocks_and_learn_macs():
    async def main():
        store = FakeStore()
        h1, h2, h3 = await fleet(store, 3)
        assert len({h.block() for h in (h1, h2, h3)}) == 3 and None not in {h.block() for h in (h1, h2, h3)}
        assert json.loads(store.kv[PREFIX.encode() + b"config"].value) == \
            {"subnets": [{"subnet": "10.88.0.0/16", "block": 24}]}
        h1.table.see(MAC, None, 5.0, "10.88.1.7")                 # a container behind h1
        await until("h2 has h1's MAC", lambda: h2.table.lookup(MAC) is not None)
        assert h2.table.lookup(MAC).vtep == "192.0.2.1" and h2.table.neighbours.ips_of(MAC) == ["10.88.1.7"]
        # h1 killed: its lease runs out, and with it every key it wrote but its block
        store.expire(h1.service._lease)
        await until("h1 gone from h2 and h3", lambda: "192.0.2.1" not in h2.flood() | h3.flood())
        assert h2.table.lookup(MAC) is None and h3.table.lookup(MAC) is None
        assert any(b"blocks/" in k and b"192.0.2.1" in kv.value for k, kv in store.kv.items())
        await stop(h1, h2, h3)
    run(main())


@pytest.mark.parametrize("hosts", [2, 5])
def test_hosts_that_start_together_miss_nothing_and_share_no_block(hosts):
    """Started on one loop at once, every call to the store a point where the others run: each
    lists the store and puts its own key in between the others' -- none may watch past a key it
    did not list (a bug did: it watched from its own put's revision)."""
    async def main():
        store = FakeStore()
        fleet_ = [Host(store, f"192.0.2.{i + 1}") for i in range(hosts)]
        await asyncio.gather(*(h.start() for h in fleet_))
        await until("each sees every other", lambda: all(len(h.flood()) == hosts - 1 for h in fleet_))
        await until("blocks", lambda: all(h.block() for h in fleet_))
        assert len({h.block() for h in fleet_}) == hosts
        await stop(*fleet_)
    run(main())


def test_a_host_that_starts_again_gets_its_block_back():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        block = h1.block()
        await stop(h1)                                            # its routes go at once (the lease revoked)
        await until("h1 gone from h2", lambda: not h2.flood())
        again = Host(store, "192.0.2.1")
        await again.start()
        await until("h1 back", lambda: again.block() is not None and h2.flood() == {"192.0.2.1"})
        assert again.block() == block
        assert len([k for k in store.kv if b"/blocks/" in k]) == 2
        await stop(again, h2)
    run(main())


def test_after_its_lease_ran_out_a_host_tries_the_block_it_held_last():
    async def main():
        store = FakeStore()
        (h1,) = await fleet(store, 1)
        block = h1.block()
        await stop(h1)
        store.expire(h1.service._block_lease)                     # gone longer than block_ttl
        assert not [k for k in store.kv if b"/blocks/" in k]
        again = Host(store, "192.0.2.1")
        await again.start()
        await until("a block", lambda: again.block() is not None)
        assert again.block() == block                             # from its hint key
        await stop(again)
    run(main())


def test_blocks_run_out_clearly():
    """A /29 in /30 blocks: two hosts get one each, the third none -- and says so.  (The first
    block gives one address: its other is the subnet's gateway, as host-local has it.)"""
    async def main():
        store = FakeStore()
        hosts = await fleet(store, 3, subnets=("10.88.0.0/29",), block_prefix=30)
        states = sorted(h.service.addresses(42)["state"] for h in hosts)
        assert states == ["exhausted", "held", "held"]
        held = [h.service.addresses(42)["blocks"][0] for h in hosts if h.block()]
        assert {(b["first"], b["last"]) for b in held} == {("10.88.0.2", "10.88.0.2"), ("10.88.0.5", "10.88.0.6")}
        await stop(*hosts)
    run(main())


def test_a_host_whose_file_contradicts_the_store_refuses_with_one_line():
    async def main():
        store = FakeStore()
        (h1,) = await fleet(store, 1)
        other = Host(store, "192.0.2.2", subnets=("10.99.0.0/16",))
        await other.start()
        await until("refused", lambda: other.fatal)
        assert len(other.fatal) == 1 and "10.88.0.0/16" in other.fatal[0] and "10.99.0.0/16" in other.fatal[0]
        assert other.service.addresses(42)["state"] == "refused" and other.block() is None
        # a host that names no subnets takes the store's
        quiet = Host(store, "192.0.2.3", subnets=())
        await quiet.start()
        await until("a block", lambda: quiet.block() is not None)
        assert not quiet.fatal and quiet.block().startswith("10.88.")
        await stop(h1, other, quiet)
    run(main())


def test_hostile_keys_are_counted_never_installed():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        before = dict(h1.mirror.entries)
        for key, value in (("routes/2/zz:00:00:00:00:01/192.0.2.2", "{}"),           # not a MAC
                           ("routes/2/01:00:5e:00:00:01/192.0.2.2", "{}"),           # multicast
                           ("routes/2/02:00:00:00:00:01/192.0.2.02", "{}"),          # not canonical
                           ("routes/2/02:00:00:00:00:01/2001:db8::2", "{}"),         # the other family
                           ("routes/2/02:00:00:00:00:01/192.0.2.2", "[1]"),          # not an object
                           ("routes/2/02:00:00:00:00:01/192.0.2.2", '{"seq": -1}'),
                           ("routes/2/02:00:00:00:00:01/192.0.2.2", '{"seq": 1, "x": "' + "a" * 2000 + '"}'),
                           ("routes/3/255.255.255.255", "{}"), ("routes/9/x", "{}"), ("routes/\xff", "{}")):
            store.write(PREFIX + key, value)
        await until("all ignored", lambda: sum(h1.service.stats()["ignored"].values()) == 10)
        assert h1.mirror.entries == before and h1.flood() == {"192.0.2.2"}
        assert h1.service.counters["internal_errors"] == 0
        await stop(h1, h2)
    run(main())


def test_a_value_nested_a_thousand_deep_anywhere_is_only_a_bad_value():
    """json.loads raises RecursionError on "[[[[...": in a route, the network's config, a block,
    this host's hint -- once it stopped every host from ever connecting again."""
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        deep = "[" * 1000
        store.write(PREFIX + "routes/2/02:00:00:00:00:01/192.0.2.2", deep)
        store.write(PREFIX + "blocks/10.88.200.0-24", deep)
        store.write(PREFIX + "hosts/192.0.2.3", deep)
        store.write(PREFIX + "hosts/192.0.2.1", deep)
        await until("counted", lambda: h1.service.stats()["ignored"].get("bad value") == 1)
        store.outage()                                            # both set up again, reading all of it
        await until("down", lambda: not h1.service.connected)
        store.outage(False)
        late = Host(store, "192.0.2.3")
        await late.start()
        await until("all three connected", lambda: all(h.service.connected and h.block() for h in (h1, h2, late)),
                    timeout=15)
        store.write(PREFIX + "config", deep)
        other = Host(store, "192.0.2.4", subnets=())
        await other.start()
        await until("refused, said", lambda: other.service.addresses(42)["state"] == "refused")
        assert other.service.connected and len(other.flood()) == 3
        assert all(h.service.counters["internal_errors"] == 0 for h in (h1, h2, late, other))
        await stop(h1, h2, late, other)
    run(main())


def test_a_dual_stack_network_keeps_its_blocks_across_an_outage():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2, subnets=("10.88.0.0/16", "fd00:88::/48"))
        blocks = [r["block"] for r in h1.service.addresses(42)["blocks"]]
        assert len(blocks) == 2 and ":" in blocks[1]
        store.outage()
        await until("down", lambda: not h1.service.connected)
        store.outage(False)
        await until("back", lambda: h1.service.connected and h1.service.counters["connections"] == 2, timeout=15)
        await until("set up", lambda: h1.service.addresses(42)["state"] == "held")
        assert [r["block"] for r in h1.service.addresses(42)["blocks"]] == blocks
        assert h1.service.counters["internal_errors"] == 0
        await stop(h1, h2)
    run(main())


def test_a_removed_network_leaves_nothing_announced_and_releases_its_block_only_if_still_ours():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        h1.table.see(MAC, None, 5.0)
        await until("h2 has it", lambda: h2.table.lookup(MAC) is not None)
        block_key = (PREFIX + "blocks/" + h1.block().replace("/", "-")).encode()
        store.outage()                                            # removed while the store is away
        await until("down", lambda: not h1.service.connected)
        h1.service.remove_network(42)
        store.outage(False)
        await until("h1's routes gone", lambda: not [k for k in store.kv if b"/routes/" in k and b"192.0.2.1" in k],
                    timeout=15)
        await until("h1 gone from h2", lambda: not h2.flood() and h2.table.lookup(MAC) is None)
        await until("its block released", lambda: block_key not in store.kv)
        # a block that another host claimed after our lease ran out is not ours to release
        h3 = Host(store, "192.0.2.3")
        await h3.start()
        await until("h3 holds a block", lambda: h3.block() is not None)
        h3_key = (PREFIX + "blocks/" + h3.block().replace("/", "-")).encode()
        h1.service._releases[h3_key] = h1.service._block_lease    # (as if h1 held it before)
        h1.service._outbox.put_nowait("flush")
        await asyncio.sleep(0.2)
        assert h3_key in store.kv and not h1.service._releases
        await stop(h1, h2, h3)
    run(main())


def test_a_block_key_in_another_spelling_does_not_unsettle_the_holder():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        block = h1.block()
        alias = PREFIX + "blocks/" + block.replace("/", "-0")          # 10.88.x.0-024
        store.write(alias, '{"vtep": "192.0.2.9"}')
        store.write(PREFIX + "blocks/" + block.replace("/", "-"), '{"vtep": "192.0.2.1", "host": "x"}')
        await asyncio.sleep(0.3)
        assert h1.service.addresses(42)["state"] == "held" and h1.block() == block
        assert h1.service.counters["block_losses"] == 0
        store.write(PREFIX + "blocks/" + block.replace("/", "-"), "[" * 1000)     # ours, overwritten: lost
        await until("lost, then claimed again", lambda: h1.service.counters["block_losses"] == 1
                    and h1.service.addresses(42)["state"] == "held", timeout=10)
        assert h1.service.counters["internal_errors"] == 0
        await stop(h1, h2)
    run(main())


def test_a_reload_whose_subnets_contradict_the_store_is_refused_for_that_network_only():
    async def main():
        store = FakeStore()
        (h1,) = await fleet(store, 1)
        h1.service.remove_network(42)
        wrong = NetworkSpec(vni=42, tap="vx0", etcd=True, subnets=["10.99.0.0/16"])
        h1.service.add_network(wrong, h1.table, 0)
        await until("refused", lambda: h1.service.addresses(42)["state"] == "refused")
        assert h1.fatal == [] and h1.service.connected
        await stop(h1)
    run(main())


def test_routes_dropped_at_the_cap_are_found_again_by_a_later_listing(monkeypatch):
    import vxland.etcd.service as S
    monkeypatch.setattr(S, "RELIST_AFTER_DROP", 0.0)

    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2, max_evpn=2)
        for i in range(3):                                        # filler from a made-up VTEP: one dropped
            store.write(PREFIX + f"routes/2/02:00:00:00:01:{i:02x}/192.0.2.98", "{}")
        await until("dropped", lambda: h1.service.stats()["ignored"].get("held back: cap") == 1)
        for i in range(3):                                        # the filler goes
            store._delete((PREFIX + f"routes/2/02:00:00:00:01:{i:02x}/192.0.2.98").encode())
        store.write(PREFIX + "routes/3/192.0.2.98", "{}")         # and a member that had a dropped route...
        resyncs = h1.service.counters["resyncs"]
        h1.service.tick()
        await until("listed again", lambda: h1.service.counters["resyncs"] > resyncs)
        assert h1.service.stats()["held_back"] == 0
        await stop(h1, h2)
    run(main())


def test_a_scoped_spelling_of_a_block_is_never_claimed():
    """fd00:88:0:3b::%x/64 is not fd00:88:0:3b::/64 to ipaddress, and would have been free: two
    hosts with one range.  A hint or a key with a scope id names no block."""
    async def main():
        store = FakeStore()
        (h1,) = await fleet(store, 1, subnets=("10.88.0.0/16", "fd00:88::/48"))
        v6 = h1.service.addresses(42)["blocks"][1]["block"]
        alias = v6.replace("::/", "::%x/")
        store.write(PREFIX + "hosts/192.0.2.2", json.dumps({"blocks": ["10.88.0.0/24", alias]}))
        store.write(PREFIX + "blocks/" + alias.replace("/", "-"), '{"vtep": "192.0.2.2"}')
        h2 = Host(store, "192.0.2.2", subnets=("10.88.0.0/16", "fd00:88::/48"))
        await h2.start()
        await until("h2 holds blocks", lambda: h2.service.addresses(42)["state"] == "held")
        blocks2 = [r["block"] for r in h2.service.addresses(42)["blocks"]]
        assert v6 not in blocks2 and all("%" not in b for b in blocks2)
        await stop(h1, h2)
    run(main())


def test_a_contradiction_found_after_the_start_refuses_and_the_daemon_runs_on():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        store.write(PREFIX + "config", Addressing.make([(__import__("ipaddress").ip_network("10.99.0.0/16"), 24)])
                    .to_json().decode())
        store._delete((PREFIX + "blocks/" + h1.block().replace("/", "-")).encode())   # h1 sets up again
        await until("refused", lambda: h1.service.addresses(42)["state"] == "refused")
        assert h1.fatal == [] and h1.service.connected
        await stop(h1, h2)
    run(main())


def test_no_relisting_without_room_or_with_a_cap_of_zero(monkeypatch):
    import vxland.etcd.service as S
    monkeypatch.setattr(S, "RELIST_AFTER_DROP", 0.0)

    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2, max_evpn=0)
        store.write(PREFIX + "routes/2/02:00:00:00:01:01/192.0.2.2", "{}")
        await until("refused at the cap", lambda: h1.service.stats()["ignored"].get("cap") == 1)
        resyncs = h1.service.counters["resyncs"]
        for _ in range(5):
            h1.service.tick()
            await asyncio.sleep(0.05)
        assert h1.service.counters["resyncs"] == resyncs
        await stop(h1, h2)
    run(main())


def test_a_withdrawal_queued_while_the_store_was_away_reaches_it_though_the_network_went():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        h1.table.see(MAC, None, 5.0)
        await until("announced", lambda: any(b"02:00:00:00:00:0a" in k for k in store.kv))
        store.outage()
        await until("down", lambda: not h1.service.connected)
        h1.table.delete(MAC)                                      # the container goes (a withdrawal queued)
        h1.service.remove_network(42)                             # then the network (a reload)
        store.outage(False)
        await until("every key of h1's gone", lambda: not [k for k in store.kv if b"/routes/" in k
                                                           and b"192.0.2.1" in k], timeout=15)
        await stop(h1, h2)
    run(main())


def test_scoped_or_second_spellings_of_a_vtep_are_not_members():
    from vxland.etcd.view import RouteView
    keys = Keys("/vxland", 42)
    view = RouteView(keys, "fd00::1", 6, 10)
    for key in (b"/vxland/vni/42/routes/3/fd00::1%x", b"/vxland/vni/42/routes/3/fd00::9%a",
                b"/vxland/vni/42/routes/3/fd00:0::9", b"/vxland/vni/42/routes/2/02:00:00:00:00:0a/fd00::9/10.0.0.1%x"):
        assert view.update(key, b"{}") == ([], False)
    assert not view.members and sum(view.ignored.values()) == 4


def test_a_mac_route_counts_only_while_its_vtep_is_a_member():
    """A MAC placed behind a VTEP with no flood route (made up, or gone) is held back; used once
    that VTEP joins, withdrawn when it leaves; and what is held back is bounded."""
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2, max_evpn=4)
        store.write(PREFIX + "routes/2/02:00:00:00:00:0a/192.0.2.99", '{"seq": 9}')
        await until("held", lambda: h1.service.stats()["held_back"] == 1)
        assert h1.table.lookup(MAC) is None
        store.write(PREFIX + "routes/3/192.0.2.99", "{}")       # it joins (on no lease: a test's shortcut)
        await until("installed", lambda: h1.table.lookup(MAC) is not None)
        assert h1.table.lookup(MAC).vtep == "192.0.2.99" and h1.service.stats()["held_back"] == 0
        store._delete((PREFIX + "routes/3/192.0.2.99").encode())
        await until("withdrawn", lambda: h1.table.lookup(MAC) is None)
        assert h1.service.stats()["held_back"] == 1
        for i in range(10):                                     # more than the cap (max_evpn 4)
            store.write(PREFIX + f"routes/2/02:00:00:00:01:{i:02x}/192.0.2.98", "{}")
        await until("capped", lambda: h1.service.stats()["ignored"].get("held back: cap", 0) == 7)
        assert h1.service.stats()["held_back"] == 4
        await stop(h1, h2)
    run(main())


def test_a_key_in_this_vteps_name_that_it_did_not_write_is_deleted():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        forged = PREFIX + "routes/2/02:00:00:00:00:0a/192.0.2.1"
        store.write(forged, '{"seq": 7}')                        # "MAC a is behind h1", says someone
        await until("deleted by h1", lambda: forged.encode() not in store.kv)
        assert h1.service.counters["stale_deleted"] == 1
        await until("gone from h2", lambda: h2.table.lookup(MAC) is None)
        # h1's own flood route deleted by someone: put back
        store._delete((PREFIX + "routes/3/192.0.2.1").encode())
        await until("restored", lambda: (PREFIX + "routes/3/192.0.2.1").encode() in store.kv)
        await stop(h1, h2)
    run(main())


def test_the_store_gone_keeps_the_tables_and_a_return_resynchronises():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        h2.table.see(MAC, None, 5.0)
        await until("h1 has h2's MAC", lambda: h1.table.lookup(MAC) is not None)
        store.outage()
        await until("h1 knows", lambda: not h1.service.connected)
        await asyncio.sleep(1.0)
        assert h1.flood() == {"192.0.2.2"} and h1.table.lookup(MAC).vtep == "192.0.2.2"   # nothing flushed
        from vxland.metrics import _etcd_families
        metrics = {f.name: f.samples for f in _etcd_families(h1.service.stats())}
        assert metrics["vxland_etcd_connected"][0].value == 0 and metrics["vxland_etcd_retries"][0].value >= 1
        assert [(s.labels, s.value) for s in metrics["vxland_etcd_blocks"]] == [({"vni": "42", "state": "held"}, 1)]
        other = mac_to_bytes("02:00:00:00:00:0b")
        h2.table.see(other, None, 5.0)                           # a container appears meanwhile
        h2.table.delete(MAC)                                     # and one goes
        store.outage(False)
        await until("resynchronised", lambda: h1.table.lookup(other) is not None and h1.table.lookup(MAC) is None,
                    timeout=15)
        assert h1.service.connected and h1.service.counters["resyncs"] >= 2
        await stop(h1, h2)
    run(main())


def test_a_compacted_watch_lists_everything_again():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        resyncs = h1.service.counters["resyncs"]
        store.compact()
        await until("listed again", lambda: h1.service.counters["resyncs"] > resyncs, timeout=10)
        assert h1.service.counters["compactions"] == 1 and h1.flood() == {"192.0.2.2"}
        h2.table.see(MAC, None, 5.0)
        await until("watching again", lambda: h1.table.lookup(MAC) is not None)
        await stop(h1, h2)
    run(main())


def test_a_lost_lease_is_replaced_and_every_route_written_again():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        h1.table.see(MAC, None, 5.0)
        await until("h2 has it", lambda: h2.table.lookup(MAC) is not None)
        old = h1.service._lease
        store.expire(old)                                         # a partition longer than the TTL
        await until("back on a new lease", lambda: h1.service._lease != old and h2.table.lookup(MAC) is not None
                    and h2.flood() == {"192.0.2.1"}, timeout=10)
        assert h1.service.counters["lease_losses"] == 1
        # the block lease lost too: no addresses until the block is claimed again (its own, free)
        block = h1.block()
        store.expire(h1.service._block_lease)
        await until("lost", lambda: h1.service.addresses(42)["state"] == "lost", timeout=5)
        assert h1.service.addresses(42)["blocks"] == []
        await until("held again", lambda: h1.service.addresses(42)["state"] == "held", timeout=10)
        assert h1.block() == block
        await stop(h1, h2)
    run(main())


def test_stop_withdraws_at_once_and_releases_nothing_but_routes():
    async def main():
        store = FakeStore()
        h1, h2 = await fleet(store, 2)
        h1.table.see(MAC, None, 5.0)
        await until("h2 has it", lambda: h2.table.lookup(MAC) is not None)
        await stop(h1)
        await until("gone", lambda: h2.table.lookup(MAC) is None and not h2.flood(), timeout=2)
        assert not [k for k in store.kv if b"/routes/" in k and b"192.0.2.1" in k]
        assert [k for k in store.kv if b"/blocks/" in k and b"192.0.2.1" in store.kv[k].value]
        await stop(h2)
    run(main())


# ---- sans-IO pieces -------------------------------------------------------------------------

def test_route_keys_round_trip():
    keys = Keys("/vxland", 42)
    for route in (FloodRoute(42, "192.0.2.1"), MacRoute(42, MAC, None, "192.0.2.1", 3, True),
                  MacRoute(42, MAC, "10.88.0.5", "192.0.2.1", 0), MacRoute(42, MAC, "fd00::5", "192.0.2.1")):
        from vxland.etcd.layout import route_value
        assert parse_route(keys, keys.route(route), route_value(route, "h"), 4).route == route


def test_endpoints_and_addressing_are_checked():
    assert parse_endpoint("https://[2001:db8::1]:2379").target == "ipv6:[2001:db8::1]:2379"
    assert parse_endpoint("198.51.100.1").url == "http://198.51.100.1:2379"
    assert parse_endpoint("https://unix:2379").target == "dns:///unix:2379"
    for bad in ("ftp://x:1", "https://x:0", "https://:2379", "https://x:2379/v3", "", "https://[fe80::1%eth0]:2379",
                "https://user@host:2379", "https://-x:2379"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    for subnets, block in ((["10.0.0.1/16"], 24), (["10.0.0.0/16"], 16), (["10.0.0.0/16"], 31),
                           (["10.0.0.0/8"], 30), (["10.0.0.0/16", "10.1.0.0/16"], 24)):
        with pytest.raises(ValueError):
            Addressing.from_spec(NetworkSpec(vni=1, tap="t", subnets=subnets, block_prefix=block))
    both = Addressing.from_spec(NetworkSpec(vni=1, tap="t", subnets=["fd00::/48", "10.0.0.0/16"]))
    assert both.describe() == "10.0.0.0/16 in /24 blocks, fd00::/48 in /64 blocks"
    assert Addressing.from_json(both.to_json()) == both
    for stored in (b"[]", b'{"subnets": "x"}', b'{"subnets": [{"subnet": "10.0.0.0/16", "block": 8}]}',
                   b"x" * 2000):
        with pytest.raises(ValueError):
            Addressing.from_json(stored)


def test_block_candidates_prefer_the_past_and_spread_the_rest():
    import ipaddress
    import random
    subnet = ipaddress.ip_network("10.88.0.0/16")
    taken = {ipaddress.ip_network("10.88.0.0/24")}
    previous = [ipaddress.ip_network("10.88.9.0/24"), ipaddress.ip_network("10.88.0.0/24")]
    got = B.candidates(subnet, 24, taken, previous, random.Random(1))
    assert got[0] == previous[0] and taken.isdisjoint(got) and len(got) == 101
    assert got[1:] != sorted(got[1:])                        # spread: two starting hosts rarely collide


def test_the_engine_recipe_takes_the_hosts_block(tmp_path):
    """scripts/engine-network.sh with no addresses on an etcd network: the subnet, this host's
    block as the range, its first address as the gateway; none held: one clear line."""
    import os
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    row = {"vni": 42, "tap": "vx0", "bridge": "br0", "mtu": 1450, "addresses": {"state": "held", "blocks": [
        {"subnet": "fd00::/48", "block": "fd00:0:0:7::/64", "first": "fd00:0:0:7::1", "last": "fd00:0:0:7::fffe"},
        {"subnet": "10.88.0.0/16", "block": "10.88.7.0/24", "first": "10.88.7.1", "last": "10.88.7.254"}]}}
    (tmp_path / "vxland").write_text(f"#!/bin/sh\ncat {tmp_path}/row.json\n")
    (tmp_path / "docker").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/docker.args\n')
    for stub in ("vxland", "docker"):
        os.chmod(tmp_path / stub, 0o755)
    env = {**os.environ, "VXLAND": str(tmp_path / "vxland"), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    script = os.path.join(root, "scripts", "engine-network.sh")

    def recipe(state, *extra):
        (tmp_path / "row.json").write_text(json.dumps([{**row, "addresses": {**row["addresses"], "state": state}}]))
        return subprocess.run([script, "docker", "vxnet", "--vni", "42", *extra], capture_output=True, text=True,
                              env=env, timeout=30)
    out = recipe("held")
    assert out.returncode == 0, out.stderr
    args = (tmp_path / "docker.args").read_text().split()
    assert args[args.index("--subnet") + 1] == "10.88.0.0/16" and args[args.index("--ip-range") + 1] == "10.88.7.0/24"
    assert args[args.index("--gateway") + 1] == "10.88.7.1" and "com.docker.network.bridge.name=br0" in args
    out = recipe("lost")
    assert out.returncode == 1 and "holds no IPv4 address block for VNI 42 (block state: lost" in out.stderr
    out = recipe("held", "--subnet", "10.88.0.0/16")
    assert out.returncode == 1 and "together, or none" in out.stderr
