"""BUM traffic by IP multicast (RFC 7348 §4.2): a VNI's group is joined on the underlay,
broadcast, multicast and unknown unicast go to it, unicast is learned from the replies;
against vxland and against the kernel's VXLAN, over IPv4 and IPv6."""

import time

import pytest

pytestmark = pytest.mark.netns

GROUP4, GROUP6 = "239.1.1.42", "ff05::42"


def received(host):
    return host.vxland_json("stats")["vnis"][0]["rx_packets"]


def test_bum_by_ipv4_multicast_with_vxland_and_kernel_members(four_hosts):
    t = four_hosts
    h1, h2, h3, h4 = t.hosts
    for h in (h1, h2, h3):
        t.start_vxland(h, "--group", GROUP4, peers=[])
    t.start_kernel_vxlan(h4, "group", GROUP4, flood=False)
    assert h1.vxland_json("peers", "show") == [{"vni": 42, "peers": [], "group": GROUP4}]
    # ten frames to an unknown MAC: one datagram to the group each, one copy at every member
    before = [received(h) for h in (h2, h3)]
    t.send_frames(h1, "02:00:00:00:00:99", 10)
    time.sleep(0.3)
    assert [received(h) - b for h, b in zip((h2, h3), before)] == [10, 10]
    assert h1.vxland_json("stats")["vnis"][0]["tx_packets"] >= 10
    # the ARP broadcast goes by the group, the replies come back unicast and are learned
    for dst in (h2, h4):
        ping = t.ping(h1, dst, count=2)
        assert ping.returncode == 0, ping.stdout + t.log_of(h1)
    learned = {(r["mac"], r.get("vtep")) for r in h1.vxland_json("fdb", "show")}
    assert {(h2.container_mac, "192.0.2.2"), (h4.container_mac, "192.0.2.4")} <= learned
    assert f"{h1.container_mac} dst 192.0.2.1" in t.kernel_fdb(h4)
    assert t.ping(h4, h3, count=2).returncode == 0          # kernel to vxland, by the group too


def test_bum_by_ipv6_multicast_against_the_kernel(two_hosts_ipv6):
    t = two_hosts_ipv6
    h1, h2 = t.hosts
    t.start_vxland(h1, "--group", GROUP6, peers=[])
    t.start_kernel_vxlan(h2, "group", GROUP6, flood=False)
    for src, dst in ((h1, h2), (h2, h1)):
        ping = t.ping(src, dst, count=3)
        assert ping.returncode == 0, ping.stdout + t.log_of(h1)
    assert (h2.container_mac, "2001:db8::2") in {(r["mac"], r.get("vtep")) for r in h1.vxland_json("fdb", "show")}


def test_a_group_of_the_wrong_family_is_refused_in_one_line(two_hosts):
    h1 = two_hosts.hosts[0]
    with pytest.raises(Exception) as failure:
        two_hosts.start_vxland(h1, "--group", GROUP6, peers=[])
    assert "group ff05::42 is not an IPv4 multicast address" in str(failure.value)
