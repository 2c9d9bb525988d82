"""The kernel's selftest cases (tools/testing/selftests/net/forwarding/vxlan_bridge_1d.sh),
reproduced against vxland: four hosts on one underlay, host 1 floods to the other three."""

import dataclasses
import time

import pytest

pytestmark = pytest.mark.netns

UNKNOWN = "02:00:00:00:00:99"


def received(host):
    return host.vxland_json("stats")["vnis"][0]["rx_packets"]


def deltas(topology, send, remotes):
    """Frames each remote VTEP decapsulated while `send` ran."""
    before = [received(h) for h in remotes]
    send()
    time.sleep(0.3)
    return [received(h) - b for h, b in zip(remotes, before)]


def start_all(topology):
    for h in topology.hosts:
        topology.start_vxland(h)
    return topology.hosts[0], topology.hosts[1:]


def test_flood_reaches_each_remote_exactly_once(four_hosts):
    h1, remotes = start_all(four_hosts)
    ten_unknown = lambda: four_hosts.send_frames(h1, UNKNOWN, 10)  # noqa: E731
    assert deltas(four_hosts, ten_unknown, remotes) == [10, 10, 10]
    # an address in the flood list that nobody answers changes nothing for the others
    h1.vxland("peers", "add", "--vni", "42", "192.0.2.77")
    assert deltas(four_hosts, ten_unknown, remotes) == [10, 10, 10]
    assert h1.vxland_json("stats")["vnis"][0]["tx_packets"] >= 70


def test_static_entry_unicasts_to_one_remote(four_hosts):
    h1, remotes = start_all(four_hosts)
    h1.vxland("fdb", "add", "--mac", UNKNOWN, "--vni", "42", "--vtep", "192.0.2.3")
    assert deltas(four_hosts, lambda: four_hosts.send_frames(h1, UNKNOWN, 10), remotes) == [0, 10, 0]


def test_learning_then_unicast_and_delete_brings_flooding_back(four_hosts):
    h1, remotes = start_all(four_hosts)
    h3 = four_hosts.hosts[2]
    to_c3 = lambda: four_hosts.send_frames(h1, h3.container_mac, 10)  # noqa: E731
    assert deltas(four_hosts, to_c3, remotes) == [10, 10, 10]          # unknown: flooded
    four_hosts.send_frames(h3, "ff:ff:ff:ff:ff:ff", 1)                  # c3 speaks once
    time.sleep(0.3)
    assert {"mac": h3.container_mac, "vtep": "192.0.2.3"}.items() <= next(
        r for r in h1.vxland_json("fdb", "show") if r["mac"] == h3.container_mac).items()
    assert deltas(four_hosts, to_c3, remotes) == [0, 10, 0]             # learned: unicast
    h1.vxland("fdb", "del", "--mac", h3.container_mac, "--vni", "42")
    assert deltas(four_hosts, to_c3, remotes) == [10, 10, 10]          # deleted: flooded again


def test_a_second_network_reuses_addresses_without_crosstalk(two_hosts, tmp_path):
    """Two VNIs in one daemon, each with its own TAP, bridge and containers that even share
    MAC and IP addresses: each pair talks only to its own."""
    from vxland.topology import sh
    h1, h2 = two_hosts.hosts
    for h in (h1, h2):
        sh("ip", "-n", h.ns, "link", "add", "br1", "type", "bridge")
        sh("ip", "-n", h.ns, "link", "set", "br1", "up")
        ns = two_hosts.namespace(f"{h.container_ns.rsplit('-', 1)[1]}b")
        sh("ip", "-n", ns, "link", "add", "eth0", "address", h.container_mac, "mtu", "1450", "type", "veth",
           "peer", "name", "ctr1", "netns", h.ns)
        sh("ip", "-n", h.ns, "link", "set", "ctr1", "master", "br1", "up")
        sh("ip", "-n", ns, "addr", "add", f"{h.container_ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        other = "192.0.2.2" if h is h1 else "192.0.2.1"
        config = tmp_path / f"{h.ns}.toml"
        config.write_text(f'local = "{h.underlay_ip}"\n'
                          f'[[network]]\nvni = 100\ntap = "vx0"\nbridge = "br0"\npeers = ["{other}"]\n'
                          f'[[network]]\nvni = 200\ntap = "vx1"\nbridge = "br1"\npeers = ["{other}"]\n')
        two_hosts.start_vxland(h, "--config", str(config), vni=None)
    for src, dst in ((h1, h2), (h2, h1)):
        assert two_hosts.ping(src, dst, count=2).returncode == 0
        r = sh("ping", "-c", "2", "-i", "0.2", "-W", "2", dst.container_ip, ns=f"{src.container_ns}b", check=False)
        assert r.returncode == 0, r.stdout
    rows = h1.vxland_json("fdb", "show")
    assert {(r["vni"], r.get("vtep")) for r in rows if r["mac"] == h2.container_mac} == \
        {(100, "192.0.2.2"), (200, "192.0.2.2")}
    stats = {v["vni"]: v for v in h1.vxland_json("stats")["vnis"]}
    assert stats[100]["rx_packets"] > 0 and stats[200]["rx_packets"] > 0
    # ten frames flooded in the second network reach h1 in VNI 200 only
    second = dataclasses.replace(h2, container_ns=f"{h2.container_ns}b")
    two_hosts.send_frames(second, UNKNOWN, 10)
    time.sleep(0.3)
    after = {v["vni"]: v for v in h1.vxland_json("stats")["vnis"]}
    assert after[100]["rx_packets"] - stats[100]["rx_packets"] == 0
    assert after[200]["rx_packets"] - stats[200]["rx_packets"] == 10
