"""ARP and ND suppression (the kernel's neigh_suppress): requests from the TAP for known
neighbours are answered locally instead of flooded; who has which address is learned from
the ARP and ND frames that remote VTEPs send.  Answers checked against scapy, C against
Python; on the wire, counted by the frames that no longer reach the remote VTEP."""

import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw, raw

from vxland import wire
from vxland.datapath import NetworkConfig, ReferenceDataPlane
from vxland.fdb import ForwardingTable
from vxland.native import NativeDataPlane, ffi, lib
from vxland.topology import sh

ASKER, TARGET = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
BCAST = "ff:ff:ff:ff:ff:ff"
PLANES = [ReferenceDataPlane, NativeDataPlane]


def arp_request(sender="10.0.0.1", target="10.0.0.2", mac=ASKER):
    return raw(Ether(src=mac, dst=BCAST) / ARP(op=1, hwsrc=mac, psrc=sender, pdst=target))


def arp_reply(sender="10.0.0.2", mac=TARGET, hwsrc=None):
    return raw(Ether(src=mac, dst=ASKER) / ARP(op=2, hwsrc=hwsrc or mac, psrc=sender, hwdst=ASKER, pdst="10.0.0.1"))


def solicitation(src="2001:db8::1", target="2001:db8::2", option=True):
    pkt = (Ether(src=ASKER, dst="33:33:ff:00:00:02") / IPv6(src=src, dst="ff02::1:ff00:2", hlim=255)
           / ICMPv6ND_NS(tgt=target))
    return raw(pkt / ICMPv6NDOptSrcLLAddr(lladdr=ASKER) if option else pkt)


def advertisement(target="2001:db8::2", mac=TARGET):
    return raw(Ether(src=mac, dst=ASKER) / IPv6(src=target, dst="2001:db8::1", hlim=255)
               / ICMPv6ND_NA(tgt=target, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac))


def c_reply(frame, mac):
    out = ffi.new("uint8_t[]", lib.VX_REPLY_MAX)
    n = lib.vx_neigh_reply(frame, len(frame), wire.mac_to_bytes(mac), out)
    return bytes(ffi.buffer(out, n)) if n else None


def test_an_arp_request_is_answered_as_the_target_would():
    reply = wire.neighbour_reply(arp_request(), wire.mac_to_bytes(TARGET))
    assert reply == c_reply(arp_request(), TARGET)
    p = Ether(reply)
    assert (p.src, p.dst, p[ARP].op, p[ARP].hwsrc, p[ARP].psrc, p[ARP].hwdst, p[ARP].pdst) == \
        (TARGET, ASKER, 2, TARGET, "10.0.0.2", ASKER, "10.0.0.1")


def test_a_solicitation_is_answered_with_an_advertisement():
    reply = wire.neighbour_reply(solicitation(), wire.mac_to_bytes(TARGET))
    assert reply == c_reply(solicitation(), TARGET)
    p = Ether(reply)
    assert (p.src, p.dst, p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (TARGET, ASKER, "2001:db8::2", "2001:db8::1", 255)
    assert (p[ICMPv6ND_NA].tgt, p[ICMPv6ND_NA].S, p[ICMPv6ND_NA].O, p[ICMPv6ND_NA].R) == ("2001:db8::2", 1, 1, 0)
    assert p[ICMPv6NDOptDstLLAddr].lladdr == TARGET
    check = Ether(reply)
    del check[ICMPv6ND_NA].cksum
    assert raw(check) == reply                                     # scapy agrees on the checksum


@pytest.mark.parametrize("frame", [
    arp_request(sender="10.0.0.2", target="10.0.0.2"),             # gratuitous ARP
    arp_request(sender="0.0.0.0"),                                  # a probe (RFC 5227)
    arp_reply(),                                                    # not a request
    solicitation(src="::"),                                         # duplicate address detection
    solicitation(target="ff02::1"),                                 # a multicast target
    raw(Ether(src=ASKER, dst=BCAST) / Raw(bytes(46))),              # not ARP or ND
    arp_request()[:41],                                             # cut short
])
def test_what_must_reach_the_other_hosts_is_never_answered(frame):
    assert wire.neighbour_reply(frame, wire.mac_to_bytes(TARGET)) is None and c_reply(frame, TARGET) is None


def network(plane, **kw):
    dp = plane()
    view = dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1", neigh_suppress=True, **kw))
    table = ForwardingTable(42, view, family=4)
    table.add_remote("192.0.2.2")
    return dp, table


def decap(dp, table, frame, now=1.0, peer="192.0.2.2"):
    frames, seen = dp.decap([(wire.VxlanHeader(42).encode() + frame, peer)], now)
    for s in seen:
        table.see(s.mac, s.vtep, now, s.ip)
    return frames, seen


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
def test_learned_from_a_remote_reply_then_answered_locally(plane):
    dp, table = network(plane)
    out, _ = dp.encap([(0, arp_request())], 1.0)
    assert [d.dst for d in out] == ["192.0.2.2"] and dp.take_replies() == []     # unknown: flooded
    frames, seen = decap(dp, table, arp_reply())
    assert frames and ("10.0.0.2" in {s.ip for s in seen})
    assert table.neighbours.lookup("10.0.0.2").mac == wire.mac_to_bytes(TARGET)
    out, _ = dp.encap([(0, arp_request())] * 3, 2.0)
    assert out == [] and dp.take_replies() == [(0, c_reply(arp_request(), TARGET))] * 3
    assert dp.counters(0).suppressed == 3
    decap(dp, table, advertisement())                                           # and IPv6 alike
    out, _ = dp.encap([(0, solicitation())], 3.0)
    assert out == [] and dp.take_replies() == [(0, c_reply(solicitation(), TARGET))]
    table.expire(1000.0)                                                        # neighbours age too
    assert table.neighbours.lookup("10.0.0.2") is None
    out, _ = dp.encap([(0, arp_request())], 1001.0)
    assert len(out) == 1


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
def test_a_frame_whose_sender_is_not_its_source_teaches_nothing(plane):
    dp, table = network(plane)
    decap(dp, table, arp_reply(hwsrc="02:00:00:00:00:66"))                     # claims another MAC
    assert table.neighbours.lookup("10.0.0.2") is None
    decap(dp, table, arp_request(sender="0.0.0.0", mac=TARGET))                # a probe
    assert len(table.neighbours) == 0


def test_static_entries_with_an_address_are_answered_and_leave_with_the_entry():
    dp, table = network(NativeDataPlane)
    table.add_static(wire.mac_to_bytes(TARGET), "192.0.2.2", 0.0, "10.0.0.2")
    out, _ = dp.encap([(0, arp_request())], 1.0)
    assert out == [] and len(dp.take_replies()) == 1
    decap(dp, table, arp_reply(mac="02:00:00:00:00:99", hwsrc="02:00:00:00:00:99"))   # never overwritten
    assert table.neighbours.lookup("10.0.0.2").mac == wire.mac_to_bytes(TARGET)
    table.delete(wire.mac_to_bytes(TARGET))
    assert dp.neighbour_count() == 0


FORGER = "02:00:00:00:00:66"


def see(table, sightings, now):
    for s in sightings:
        table.see(s.mac, s.vtep, now, s.ip)


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
@pytest.mark.parametrize("side", ["remote", "local"])
def test_a_forged_reply_never_teaches_suppression_a_live_owners_address(plane, side):
    """The owner of 10.0.0.2 has said so; a forger -- a container behind another VTEP, or (with
    EVPN, which learns addresses from the TAP) behind this one -- sends an ARP reply claiming
    10.0.0.2 with its own MAC as frame source and ARP sender.  The address is contested: no
    longer answered (requests are flooded, and the owner answers them itself), counted, and
    nothing the forger sends wins it back; when the forger is gone, the owner has it again."""
    remote = side == "remote"
    dp, table = network(plane, **({} if remote else {"snoop_tap": True}))
    target, forger = wire.mac_to_bytes(TARGET), wire.mac_to_bytes(FORGER)

    def claim(mac, now):
        if remote:
            decap(dp, table, arp_reply(mac=mac), now, peer="192.0.2.3" if mac == FORGER else "192.0.2.2")
        else:
            see(table, dp.encap([(0, arp_reply(mac=mac))], now)[1], now)
    claim(TARGET, 1.0)
    assert table.neighbours.lookup("10.0.0.2").mac == target
    claim(FORGER, 2.0)
    assert table.neighbours.lookup("10.0.0.2").contested and table.neighbours.conflicts == 1
    out, _ = dp.encap([(0, arp_request())], 3.0)
    assert len(out) == 1 and dp.take_replies() == []           # flooded: the owner answers
    for now in (4.0, 5.0, 6.0):
        claim(FORGER, now)
        claim(TARGET, now + 0.5)
    assert table.neighbours.lookup("10.0.0.2").contested and dp.neighbour_count() == 0
    table.delete(forger)                                       # the forger is gone (its entry aged, say)
    table.expire(7.0)
    n = table.neighbours.lookup("10.0.0.2")
    assert n.mac == target and not n.contested
    out, _ = dp.encap([(0, arp_request())], 8.0)
    assert out == [] and dp.take_replies() == [(0, c_reply(arp_request(), TARGET))]


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
def test_an_address_whose_owner_is_gone_moves_to_its_new_owner(plane):
    """A container replaced by another with its address (a new MAC): the old MAC has no entry any
    more, so the claim is a move, not a conflict."""
    dp, table = network(plane)
    decap(dp, table, arp_reply())
    table.delete(wire.mac_to_bytes(TARGET))
    decap(dp, table, arp_reply(mac=FORGER), 2.0)
    n = table.neighbours.lookup("10.0.0.2")
    assert n.mac == wire.mac_to_bytes(FORGER) and not n.contested and table.neighbours.conflicts == 0


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
def test_a_host_naming_random_addresses_is_bounded(plane):
    """One MAC claiming a thousand addresses: the data path reports at most VX_NEIGH_BURST new
    ones at once (the rest counted, not queued), and the table keeps MAX_IPS_PER_MAC of them --
    with EVPN, what would have been announced.  A full table stops the reports altogether."""
    from vxland.datapath import NEIGH_BURST
    from vxland.neighbours import MAX_IPS_PER_MAC
    dp, table = network(plane)
    frames = [arp_reply(sender=f"10.1.{i // 250}.{i % 250 + 1}") for i in range(1000)]
    _, seen = decap_all(dp, table, frames, 10.0)             # the bucket is full by then
    assert len([s for s in seen if s.ip]) == NEIGH_BURST
    # the rest refused -- but for a few that found their batch's sightings full (reported later)
    assert 1000 - NEIGH_BURST - 16 <= dp.counters(0).neigh_refused <= 1000 - NEIGH_BURST
    assert len(table.neighbours.ips_of(wire.mac_to_bytes(TARGET))) == MAX_IPS_PER_MAC
    assert table.neighbours.refused == NEIGH_BURST - MAX_IPS_PER_MAC
    dp2, small = network(plane)
    small.set_limits(300.0, 10)
    many = [arp_reply(sender=f"10.2.0.{i + 1}", mac=f"02:00:00:00:02:{i:02x}") for i in range(30)]
    decap_all(dp2, small, many, 1.0)
    assert len(small.neighbours) == 10 and small.neighbours.refused == 20
    _, seen = decap_all(dp2, small, [arp_reply(sender=f"10.3.0.{i + 1}", mac=f"02:00:00:00:02:{i:02x}")
                                     for i in range(30)], 2.0)
    assert not [s for s in seen if s.ip] and dp2.counters(0).neigh_refused == 30


def decap_all(dp, table, frames, now):
    out, seen = dp.decap([(wire.VxlanHeader(42).encode() + f, "192.0.2.2") for f in frames], now)
    see(table, seen, now)
    return out, seen


frames_ = st.sampled_from([arp_request(), arp_reply(), solicitation(), advertisement(), solicitation(src="::"),
                           arp_request(sender="10.0.0.2", target="10.0.0.2"), arp_reply(hwsrc="02:00:00:00:00:66"),
                           arp_request(target="10.0.0.9"), solicitation(option=False)]) | st.binary(max_size=90)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["encap", "decap", "set", "del"]), frames_, st.sampled_from([0.0, 0.05, 2.0])),
                max_size=12), st.booleans(), st.booleans())
def test_neighbour_handling_c_equals_python(events, learn_remote, snoop_tap):
    traces = []
    for plane in PLANES:
        dp = plane()
        dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1", neigh_suppress=True, learn_remote=learn_remote,
                                        snoop_tap=snoop_tap))
        dp.set_flood(0, ["192.0.2.2"])
        now, trace = 10.0, []
        for kind, frame, tick in events:
            now += tick
            if kind == "encap":
                trace.append((dp.encap([(0, frame)], now), dp.take_replies()))
            elif kind == "decap":
                trace.append(dp.decap([(wire.VxlanHeader(42).encode() + frame, "192.0.2.2")], now))
            elif kind == "set":
                dp.set_neighbour(0, "10.0.0.2", wire.mac_to_bytes(TARGET))
                dp.set_neighbour(0, "2001:db8::2", wire.mac_to_bytes(TARGET))
            else:
                dp.delete_neighbour(0, "10.0.0.2")
        traces.append((trace, dp.counters(0), dp.neighbour_count()))
    assert traces[0] == traces[1]


@pytest.mark.netns
def test_arp_for_a_known_container_no_longer_reaches_the_remote_vtep(two_hosts):
    t = two_hosts
    h1, h2 = t.hosts
    t.start_vxland(h1, "--neigh-suppress")
    t.start_vxland(h2)
    assert t.ping(h1, h2, count=2).returncode == 0            # c1's ARP went to h2; c2's reply taught h1
    rows = {r["mac"]: r for r in h1.vxland_json("fdb", "show")}
    assert rows[h2.container_mac].get("ips") == [h2.container_ip]
    assert h2.container_ip in h1.vxland("fdb", "show").stdout
    before = h2.vxland_json("stats")["vnis"][0]["rx_packets"]
    answers = subprocess.run(["ip", "netns", "exec", h1.container_ns, sys.executable, "-c", f"""
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(('eth0', 0x0806)); s.settimeout(1)
mac = bytes.fromhex('{h1.container_mac.replace(':', '')}')
request = b'\\xff' * 6 + mac + b'\\x08\\x06' + bytes.fromhex('0001080006040001') + mac + \\
    socket.inet_aton('{h1.container_ip}') + bytes(6) + socket.inet_aton('{h2.container_ip}')
got = 0
for i in range(20):
    s.send(request)
    try:
        while True:
            reply = s.recv(100)
            if reply[20:22] == b'\\x00\\x02' and reply[28:32] == socket.inet_aton('{h2.container_ip}'):
                got += 1
                break
    except socket.timeout:
        pass
print(got)
"""], capture_output=True, text=True, check=True).stdout
    assert int(answers) == 20
    time.sleep(0.3)
    assert h2.vxland_json("stats")["vnis"][0]["rx_packets"] == before          # none reached h2
    assert h1.vxland_json("stats")["vnis"][0]["suppressed"] >= 20


@pytest.mark.netns
def test_a_container_forging_arp_for_anothers_address_gets_nothing(two_hosts):
    """Behind h2, a namespace beside c2 keeps sending ARP replies that claim c2's address with
    its own MAC (to a MAC nobody has, so that only VTEPs hear them).  h1 learned c2's address
    from c2 itself; it used to take the forger's claim and answer c1's ARP requests with the
    forger's MAC.  Now the address is contested: h1 answers for it no more, c1's request reaches
    c2, and c1 reaches c2."""
    t = two_hosts
    h1, h2 = t.hosts
    t.start_vxland(h1, "--neigh-suppress")
    t.start_vxland(h2)
    assert t.ping(h1, h2, count=2).returncode == 0
    assert {r["mac"]: r for r in h1.vxland_json("fdb", "show")}[h2.container_mac].get("ips") == [h2.container_ip]
    forger = t.namespace("forger")
    sh("ip", "-n", forger, "link", "add", "eth0", "address", FORGER, "type", "veth", "peer", "name", "fg0",
       "netns", h2.ns)
    sh("ip", "-n", h2.ns, "link", "set", "fg0", "master", "br0", "up")
    sh("ip", "-n", forger, "link", "set", "eth0", "up")
    lie = raw(Ether(src=FORGER, dst="02:00:00:00:99:99") / ARP(op=2, hwsrc=FORGER, psrc=h2.container_ip,
                                                                hwdst="02:00:00:00:99:99", pdst=h1.container_ip))
    sh(sys.executable, "-c", f"""
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
for _ in range(8):
    s.send(bytes.fromhex('{lie.hex()}'))
    time.sleep(0.25)
""", ns=forger)
    stats = h1.vxland_json("stats")["vnis"][0]
    assert stats["neigh_conflicts"] >= 1 and stats["neigh_contested"] == 1
    assert not {r["mac"]: r for r in h1.vxland_json("fdb", "show")}[h2.container_mac].get("ips")
    sh("ip", "neigh", "flush", "all", ns=h1.container_ns)
    assert t.ping(h1, h2, count=2).returncode == 0
    neigh = sh("ip", "neigh", "show", h2.container_ip, ns=h1.container_ns).stdout
    assert h2.container_mac in neigh and FORGER not in neigh, neigh


def test_challengers_never_push_the_holder_out_nor_one_mac_contest_everything():
    """Eight forgers claiming one address used to push its holder out of the claimants, and the
    last forger won it once the others went quiet; and one MAC could contest every address of
    the VNI (suppression off, MAC+IP routes withdrawn fabric-wide).  The holder stays a claimant
    while it lives, new challengers past eight are ignored, and one MAC contests at most
    MAX_IPS_PER_MAC addresses."""
    from test_fdb import Recorder
    from vxland.neighbours import MAX_IPS_PER_MAC, NeighbourTable
    live = set()
    table = NeighbourTable(42, Recorder(), 300.0, 8192, live=live.__contains__)
    holder = b"\x02\x00\x00\x00\x00\x01"
    live.add(holder)
    table.see("10.0.0.5", holder, 0.0)
    forgers = [bytes([2, 0, 0, 0, 1, i]) for i in range(12)]
    live.update(forgers)
    for i, forger in enumerate(forgers):
        table.see("10.0.0.5", forger, 1.0 + i)
    assert holder in table.lookup("10.0.0.5").claimants and len(table.lookup("10.0.0.5").claimants) == 8
    live.difference_update(forgers[:6] + forgers[7:])   # all but one forger that got in go quiet
    table.expire(20.0)
    n = table.lookup("10.0.0.5")
    assert n.contested and set(n.claimants) == {holder, forgers[6]}     # never the forger's alone
    live.discard(forgers[6])
    table.expire(21.0)
    n = table.lookup("10.0.0.5")
    assert n.mac == holder and not n.contested    # the holder's again, answered for again
    # one MAC against many addresses
    owners = [bytes([2, 0, 0, 0, 2, i]) for i in range(40)]
    live.update(owners)
    for i, owner in enumerate(owners):
        table.see(f"10.1.0.{i + 1}", owner, 30.0)
    spammer = b"\x02\x00\x00\x00\x03\x01"
    live.add(spammer)
    for i in range(40):
        table.see(f"10.1.0.{i + 1}", spammer, 31.0)
    assert sum(1 for i in range(40) if table.lookup(f"10.1.0.{i + 1}").contested) == MAX_IPS_PER_MAC
    assert table.contested() == MAX_IPS_PER_MAC                # (10.0.0.5 is its holder's again)
