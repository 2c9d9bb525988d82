"""BGP EVPN in namespaces: fleets of vxland hosts, each with the gobgpd it runs, and given no
peer list -- flood lists and forwarding tables come from BGP alone -- and FRR with the
kernel's VXLAN as a member of the fleet, over iBGP and eBGP.  Hold times are gobgpd's and
FRR's datacenter default (9 s), as a fleet would run them."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from vxland.topology import Host, sh

from frr import Frr
from test_metrics import samples, scrape

pytestmark = pytest.mark.netns

ASN = 65000
HOLD = 9


def wait_for(what, predicate, timeout=30.0, interval=0.2):
    """predicate() until it is true (its value) or `timeout`; then the assertion fails, saying what."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


def start_evpn(t, host, neighbors, *extra, asn=ASN):
    """vxland on `host` with no --peer: EVPN with these neighbors ((host or address, asn[, rr-client]))."""
    args = ["--evpn-asn", str(asn)]
    for n in neighbors:
        address = n[0].underlay_ip if isinstance(n[0], Host) else n[0]
        args += ["--evpn-neighbor", f"{address}@{n[1]}" if len(n) > 1 else address]
    t.start_vxland(host, *args, *extra, peers=[])


def established(host, count):
    peers = host.vxland_json("evpn", "show")["peers"]
    return len(peers) == count and all(p.get("state") == "established" for p in peers)


def flood(host):
    return set(host.vxland_json("peers", "show")[0].get("evpn_peers", []))


def fdb(host):
    return {e["mac"]: e for e in host.vxland_json("fdb", "show")}


def gobgpd_pid(host):
    return host.vxland_json("evpn", "show")["pid"]


def test_two_hosts_form_a_network_from_bgp_alone(two_hosts):
    t = two_hosts
    h1, h2 = t.hosts
    start_evpn(t, h1, [(h2,)], "--metrics", "127.0.0.1:9475")
    start_evpn(t, h2, [(h1,)])
    wait_for("the BGP session", lambda: established(h1, 1) and established(h2, 1))
    wait_for("each flood list names the other", lambda: flood(h1) == {h2.underlay_ip} and flood(h2) == {h1.underlay_ip})
    assert t.ping(h1, h2, count=3).returncode == 0
    # h2's container, announced by h2 once it spoke, is an EVPN entry on h1 -- with its address
    entry = wait_for("h2's container in h1's table", lambda: fdb(h1).get(h2.container_mac))
    assert entry["type"] == "evpn" and entry["vtep"] == h2.underlay_ip and entry["ips"] == [h2.container_ip]
    shown = h1.vxland_json("evpn", "show")
    assert {(r["type"], r.get("mac")) for r in shown["announced"]} >= {(3, None), (2, h1.container_mac)}
    assert {(r["type"], r.get("ip")) for r in shown["received"] if r.get("mac") == h2.container_mac} == \
        {(2, None), (2, h2.container_ip)}
    for a, b in ((h1, h2), (h2, h1)):
        report = t.iperf3(a, b, 2)
        assert report["end"]["sum_received"]["bytes"] > 10_000_000
    # remote learning is off: what h1 knows of h2 it knows from BGP
    assert all(e["type"] == "evpn" for e in fdb(h1).values() if e.get("vtep"))
    assert "established" in h1.vxland("evpn", "show").stdout
    got = wait_for("the session in the metrics", lambda: (m := samples(scrape(h1.ns, 9475)[1]))
                   and m.get(("vxland_evpn_sessions", frozenset({("state", "established")}))) == 1 and m)
    assert got[("vxland_evpn_connected", frozenset())] == 1
    assert got[("vxland_fdb_entries", frozenset({("vni", "42"), ("kind", "evpn")}))] >= 1
    assert got[("vxland_evpn_routes", frozenset({("direction", "received")}))] >= 3


def test_two_hosts_over_an_ipv6_underlay(two_hosts_ipv6):
    """EVPN between vxlands whose VTEPs are IPv6 addresses: the sessions over IPv6, the routes'
    next hops IPv6 (router ids stay IPv4, as BGP's are)."""
    t = two_hosts_ipv6
    h1, h2 = t.hosts
    start_evpn(t, h1, [(h2,)], "--evpn-router-id", "10.255.0.1")
    start_evpn(t, h2, [(h1,)], "--evpn-router-id", "10.255.0.2")
    wait_for("the BGP session over IPv6", lambda: established(h1, 1) and established(h2, 1))
    wait_for("each flood list names the other", lambda: flood(h1) == {h2.underlay_ip} and flood(h2) == {h1.underlay_ip})
    assert t.ping(h1, h2, count=3).returncode == 0
    entry = wait_for("h2's container in h1's table", lambda: fdb(h1).get(h2.container_mac))
    assert entry["type"] == "evpn" and entry["vtep"] == h2.underlay_ip and entry["ips"] == [h2.container_ip]
    assert t.iperf3(h1, h2, 2)["end"]["sum_received"]["bytes"] > 10_000_000


def test_three_hosts_through_a_reflector_and_one_that_dies(four_hosts):
    """h1 reflects for h2 and h3, which peer with h1 only.  Every container reaches every other.
    When h3 dies (vxland and its gobgpd killed, as a host that loses power), the others drop it
    from their flood lists and tables within the hold time."""
    t = four_hosts
    h1, h2, h3, _ = t.hosts
    t.start_vxland(h1, "--config", config_file(t, h1, [{"address": h.underlay_ip, "asn": ASN,
                                                          "route_reflector_client": True} for h in (h2, h3)]),
                   vni=None)
    start_evpn(t, h2, [(h1,)])
    start_evpn(t, h3, [(h1,)])
    wait_for("the sessions", lambda: established(h1, 2) and established(h2, 1) and established(h3, 1))
    wait_for("flood lists of three", lambda: all(len(flood(h)) == 2 for h in (h1, h2, h3)))
    for a, b in ((h1, h2), (h2, h3), (h3, h1), (h3, h2)):
        assert t.ping(a, b, count=2).returncode == 0, (a.ns, b.ns)
    wait_for("h3's container on h2, reflected by h1", lambda: fdb(h2).get(h3.container_mac, {}).get("vtep") == h3.underlay_ip)
    pid = gobgpd_pid(h3)
    h3.process.kill()                       # the host dies: no withdrawal, no Cease
    os.kill(pid, signal.SIGKILL)
    h3.process.wait()
    gone = time.monotonic()
    wait_for("h3 out of h1's and h2's flood lists",
             lambda: h3.underlay_ip not in flood(h1) | flood(h2), timeout=HOLD + 6)
    elapsed = time.monotonic() - gone
    assert h3.container_mac not in fdb(h2)
    assert elapsed <= HOLD + 6, elapsed
    assert t.ping(h1, h2, count=2).returncode == 0


def config_file(t, host, neighbors):
    """A config file for `host`: one EVPN network, and [evpn] with these neighbors (tables), for
    what no flag says (route-reflector clients, passwords: a secret belongs in a file, not in
    the process list)."""
    import tomli_w
    path = os.path.join(t.workdir, f"{host.ns}.toml")
    with open(path, "wb") as f:
        tomli_w.dump({"local": host.underlay_ip, "control": host.control,
                      "evpn": {"asn": ASN, "neighbors": neighbors},
                      "network": [{"vni": 42, "tap": "vx0", "bridge": "br0", "evpn": True}]}, f)
    return path


def test_a_mac_that_moves_is_announced_again_and_followed(four_hosts):
    """A container moves from h2 to h3 (same MAC, same address): h3 announces it with sequence
    number 1, h2 withdraws its own, and h1 sends to h3 from then on."""
    t = four_hosts
    h1, h2, h3, _ = t.hosts
    for h in (h1, h2, h3):
        start_evpn(t, h, [(o,) for o in (h1, h2, h3) if o is not h])
    wait_for("a full mesh", lambda: all(established(h, 2) for h in (h1, h2, h3)))
    assert t.ping(h1, h2, count=2).returncode == 0
    wait_for("h2's container known on h1", lambda: fdb(h1).get(h2.container_mac, {}).get("vtep") == h2.underlay_ip)
    # move: h2's container leaves, and a namespace on h3 takes its MAC and address
    sh("ip", "-n", h2.ns, "link", "del", "ctr0")
    moved = t.namespace("moved")
    sh("ip", "-n", moved, "link", "add", "eth0", "address", h2.container_mac, "mtu", "1450", "type", "veth",
       "peer", "name", "ctr9", "netns", h3.ns)
    sh("ip", "-n", h3.ns, "link", "set", "ctr9", "master", "br0", "up")
    sh("ip", "-n", moved, "addr", "add", f"{h2.container_ip}/24", "dev", "eth0")
    sh("ip", "-n", moved, "link", "set", "eth0", "up")
    sh("ping", "-c", "2", "-W", "2", h1.container_ip, ns=moved, check=False)     # it speaks from h3
    entry = wait_for("h1 follows the move", lambda: (e := fdb(h1).get(h2.container_mac)) and
                     e.get("vtep") == h3.underlay_ip and e)
    assert entry["type"] == "evpn"
    received = [r for r in h1.vxland_json("evpn", "show")["received"] if r.get("mac") == h2.container_mac]
    assert {r["vtep"] for r in received} == {h3.underlay_ip} and {r["seq"] for r in received} == {1}
    ours = [r for r in h2.vxland_json("evpn", "show")["announced"] if r.get("mac") == h2.container_mac]
    assert ours == []                       # h2 withdrew (a higher sequence number won)
    assert fdb(h2)[h2.container_mac]["vtep"] == h3.underlay_ip
    assert sh("ping", "-c", "2", "-W", "2", h2.container_ip, ns=h1.container_ns, check=False).returncode == 0


@pytest.mark.parametrize("frr_asn", [ASN, 65001], ids=["ibgp", "ebgp"])
def test_frr_with_the_kernel_vxlan_is_a_member_of_the_fleet(four_hosts, frr_asn):
    """h1 and h2 run vxland, h3 runs FRR with the kernel's VXLAN (nolearning, advertise-all-vni).
    Containers behind all three talk both ways; FRR shows vxland's routes and programs its
    kernel FDB from them (extern_learn); vxland's table shows FRR's MACs."""
    t = four_hosts
    h1, h2, h3, _ = t.hosts
    # h1's session with FRR is signed (TCP MD5), over iBGP: the password is in h1's file
    secret = {h1.underlay_ip: "fleet-secret"} if frr_asn == ASN else {}
    frr = Frr(h3, asn=frr_asn, vni=42, svi="10.42.0.253/24", passwords=secret,
              neighbors=[(h1.underlay_ip, ASN), (h2.underlay_ip, ASN)])
    try:
        if secret:
            t.start_vxland(h1, "--config", config_file(t, h1, [
                {"address": h2.underlay_ip, "asn": ASN},
                {"address": h3.underlay_ip, "asn": ASN, "password": secret[h1.underlay_ip]}]), vni=None)
        else:
            start_evpn(t, h1, [(h2,), (h3, frr_asn)])
        start_evpn(t, h2, [(h1,), (h3, frr_asn)])
        wait_for("sessions with FRR", lambda: established(h1, 2) and established(h2, 2))
        wait_for("FRR's VTEP in the flood lists", lambda: h3.underlay_ip in flood(h1) & flood(h2))
        wait_for("vxland's VTEPs in FRR's", lambda: "192.0.2.1" in frr.kernel_fdb() and "192.0.2.2" in frr.kernel_fdb())
        pairs = [(h1, h2), (h2, h1), (h1, h3), (h3, h1), (h2, h3), (h3, h2)]
        for a, b in pairs:
            assert t.ping(a, b, count=2).returncode == 0, (a.ns, b.ns, frr.log())
        for a, b in pairs:
            assert t.iperf3(a, b, 1)["end"]["sum_received"]["bytes"] > 10_000_000, (a.ns, b.ns)
        routes = wait_for("vxland's routes in FRR", lambda: (r := frr.vtysh("show bgp l2vpn evpn route"))
                          and h1.container_mac in r and h2.container_mac in r and r)
        assert "[3]:[0]:[32]:[192.0.2.1]" in routes and "[3]:[0]:[32]:[192.0.2.2]" in routes
        kernel = wait_for("vxland's MACs in the kernel's FDB on h3",
                          lambda: (k := frr.kernel_fdb()) and h1.container_mac in k and k)
        assert any(h1.container_mac in line and "dst 192.0.2.1" in line and "extern_learn" in line
                   for line in kernel.splitlines()), kernel
        entry = wait_for("FRR's container in vxland's table", lambda: fdb(h1).get(h3.container_mac))
        assert entry["type"] == "evpn" and entry["vtep"] == h3.underlay_ip
        assert "Remote VTEPs for this VNI" in frr.vtysh("show evpn vni 42")
        # no VTEP passes on what it learned (gobgpd would, to eBGP neighbors, as their next hop):
        # FRR holds one path per route
        counts = re.search(r"Displayed (\d+) prefixes \((\d+) paths\)", routes)
        assert counts and counts.group(1) == counts.group(2), routes
    finally:
        frr.stop()


def test_a_gobgpd_that_dies_is_restarted_and_the_tables_resynchronised(two_hosts):
    t = two_hosts
    h1, h2 = t.hosts
    start_evpn(t, h1, [(h2,)])
    start_evpn(t, h2, [(h1,)])
    wait_for("the session", lambda: established(h1, 1))
    assert t.ping(h1, h2, count=2).returncode == 0
    wait_for("h2's container on h1", lambda: fdb(h1).get(h2.container_mac))
    before = gobgpd_pid(h1)
    os.kill(before, signal.SIGKILL)
    wait_for("a new gobgpd, connected", lambda: (s := h1.vxland_json("evpn", "show"))["pid"] != before
             and s["connected"] and s["counters"]["gobgpd_restarts"] == 1)
    wait_for("the session again", lambda: established(h1, 1) and established(h2, 1))
    wait_for("h1's routes again on h2", lambda: h1.container_mac in {r.get("mac") for r in
                                                                   h2.vxland_json("evpn", "show")["received"]})
    assert fdb(h1)[h2.container_mac]["vtep"] == h2.underlay_ip
    assert t.ping(h1, h2, count=2).returncode == 0
    log = t.log_of(h1)
    assert "gobgpd exited" in log and "reconnected to gobgpd, table synchronised" in log


def test_without_gobgpd_vxland_says_so_and_does_not_start(two_hosts):
    t = two_hosts
    h1, h2 = t.hosts
    env = {"PATH": "/nonexistent"}                      # no gobgpd to be found
    out = subprocess.run([shutil.which("ip"), "netns", "exec", h1.ns, sys.executable, "-m", "vxland", "run", "--local",
                          h1.underlay_ip, "--vni", "42", "--tap", "vx0", "--bridge", "br0", "--control",
                          h1.control, "--evpn-asn", str(ASN), "--evpn-neighbor", h2.underlay_ip],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, **env, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("vxland: [evpn] needs gobgpd: apt-get install gobgpd")
    assert "Traceback" not in out.stderr


def test_a_reload_turns_evpn_off_and_on_for_a_network(two_hosts):
    """evpn = false in the file and a reload: the VNI's routes are withdrawn (the peer's flood
    list and table lose this host) and what EVPN wrote here goes; true again: all back.  A
    change to [evpn] itself is refused, the running configuration kept."""
    t = two_hosts
    h1, h2 = t.hosts
    start_evpn(t, h1, [(h2,)])
    path = config_file(t, h2, [{"address": h1.underlay_ip, "asn": ASN}])
    t.start_vxland(h2, "--config", path, vni=None)
    wait_for("the session", lambda: established(h1, 1))
    assert t.ping(h1, h2, count=2).returncode == 0
    wait_for("h2 known on h1", lambda: h2.container_mac in fdb(h1) and h2.underlay_ip in flood(h1))
    original = open(path).read()
    with open(path, "w") as f:
        f.write(original.replace("evpn = true", "evpn = false"))
    assert "evpn off" in h2.vxland("reload").stdout
    wait_for("h2 withdrawn from h1", lambda: h2.underlay_ip not in flood(h1) and h2.container_mac not in fdb(h1))
    assert flood(h2) == set() and all(e["type"] != "evpn" for e in fdb(h2).values())
    with open(path, "w") as f:
        f.write(original)
    assert "evpn on" in h2.vxland("reload").stdout
    wait_for("h2 back on h1", lambda: h2.underlay_ip in flood(h1))
    assert t.ping(h1, h2, count=2).returncode == 0
    with open(path, "w") as f:
        f.write(original.replace(f"asn = {ASN}\n", "asn = 65009\n", 1))
    refused = h2.vxland("reload", check=False)
    assert refused.returncode == 1 and "evpn cannot change while vxland runs" in refused.stderr
