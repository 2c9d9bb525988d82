"""Two hosts in network namespaces joined by vxland, and by vxland against the kernel's VXLAN."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vxland.topology import sh

pytestmark = pytest.mark.netns


def received_gbps(result):
    return result["end"]["sum_received"]["bits_per_second"] / 1e9


def fdb(host):
    return {(e["mac"], e.get("vtep") or e.get("port")) for e in host.vxland_json("fdb", "show")}


@pytest.mark.parametrize("datapath,offloads,thread", [("native", True, True), ("native", False, True),
                                                      ("native", True, False), ("reference", True, False)])
def test_containers_talk_through_vxland(two_hosts, datapath, offloads, thread):
    """thread: the native data path's own thread pumps (the default); else the event loop does."""
    h1, h2 = two_hosts.hosts
    flags = ([] if offloads else ["--no-offloads"]) + ([] if thread or datapath != "native" else ["--no-datapath-thread"])
    for h in (h1, h2):
        two_hosts.start_vxland(h, *flags, datapath=datapath)
    for src, dst in ((h1, h2), (h2, h1)):
        ping = two_hosts.ping(src, dst, count=3)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    # learning is visible in fdb show: the remote container behind the remote VTEP
    assert (h2.container_mac, "192.0.2.2") in fdb(h1)
    assert (h1.container_mac, "vx0") in fdb(h1)
    assert (h1.container_mac, "192.0.2.1") in fdb(h2)
    for src, dst in ((h1, h2), (h2, h1)):
        assert received_gbps(two_hosts.iperf3(src, dst, 1)) > 0.01
    stats = h1.vxland_json("stats")
    assert stats["datapath"] == datapath and stats["datapath_thread"] == thread
    assert stats["sightings_dropped"] == 0
    assert stats["offloads"]["tap"] == offloads and stats["offloads"]["udp_gro"] == offloads
    assert stats["offloads"]["udp_gso"] == (offloads and datapath == "native")
    vni = stats["vnis"][0]
    assert vni["vni"] == 42 and vni["rx_packets"] > 1000 and vni["tx_packets"] > 1000
    assert vni["rx_bytes"] > vni["rx_packets"] * 14
    assert set(stats["drops"]) >= {"no_i_flag", "unknown_vni", "bad_source_mac", "static_conflict",
                                   "tap_overflow", "underlay_overflow"}


def test_interop_with_the_kernel_vxlan(two_hosts):
    h1, h2 = two_hosts.hosts
    two_hosts.start_vxland(h1)
    two_hosts.start_kernel_vxlan(h2)
    for src, dst in ((h1, h2), (h2, h1)):
        ping = two_hosts.ping(src, dst, count=3)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    # each side learned the other's container
    assert (h2.container_mac, "192.0.2.2") in fdb(h1)
    kernel = two_hosts.kernel_fdb(h2)
    assert f"{h1.container_mac} dst 192.0.2.1" in kernel, kernel
    for src, dst in ((h1, h2), (h2, h1)):
        assert received_gbps(two_hosts.iperf3(src, dst, 1)) > 0.01


def test_sigterm_stops_cleanly_and_removes_the_tap(two_hosts):
    h1 = two_hosts.hosts[0]
    process = two_hosts.start_vxland(h1)
    assert "vx0" in sh("ip", "link", "show", ns=h1.ns).stdout
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert "vx0" not in sh("ip", "link", "show", ns=h1.ns).stdout
    assert not os.path.exists(h1.control)
    log = two_hosts.log_of(h1)
    assert "INFO stopping" in log and "Traceback" not in log


@pytest.mark.parametrize("thread", [True, False])
def test_sigterm_while_traffic_flows_stops_cleanly(two_hosts, thread):
    """A UDP flood through both daemons when h1's gets SIGTERM: it stops (the data-path
    thread joined between two batches), exits 0 with no traceback, and takes its TAP along."""
    h1, h2 = two_hosts.hosts
    flags = [] if thread else ["--no-datapath-thread"]
    process = two_hosts.start_vxland(h1, *flags)
    two_hosts.start_vxland(h2, *flags)
    assert two_hosts.ping(h1, h2, count=1).returncode == 0
    srv = subprocess.Popen(["ip", "netns", "exec", h2.container_ns, "iperf3", "-s", "-1", "-B", h2.container_ip],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        time.sleep(0.5)
        client = subprocess.Popen(["ip", "netns", "exec", h1.container_ns, "iperf3", "-c", h2.container_ip,
                                   "-u", "-b", "0", "-l", "1400", "-t", "30"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):                      # until the flood goes through h1's daemon
            if h1.vxland_json("stats")["vnis"][0]["tx_packets"] > 10000:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the flood did not start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        for p in (client, srv):
            if p is not None:
                p.kill()
                p.wait()
    assert "vx0" not in sh("ip", "link", "show", ns=h1.ns).stdout
    log = two_hosts.log_of(h1)
    assert "INFO stopping" in log and "Traceback" not in log


def test_persistent_tap_survives_a_restart(two_hosts):
    h1 = two_hosts.hosts[0]
    sh("ip", "tuntap", "add", "dev", "vx0", "mode", "tap", ns=h1.ns)
    two_hosts.start_vxland(h1)
    assert two_hosts.stop_vxland(h1) == 0
    assert "vx0" in sh("ip", "link", "show", ns=h1.ns).stdout


def test_control_verbs_change_the_tables(two_hosts):
    h1, h2 = two_hosts.hosts
    two_hosts.start_vxland(h1)
    two_hosts.start_vxland(h2)
    assert h1.vxland_json("peers", "show") == [{"vni": 42, "peers": ["192.0.2.2"], "group": None}]
    h1.vxland("peers", "add", "--vni", "42", "198.51.100.7")
    assert h1.vxland_json("peers", "show", "--vni", "42")[0]["peers"] == ["192.0.2.2", "198.51.100.7"]
    h1.vxland("peers", "del", "--vni", "42", "198.51.100.7")
    assert h1.vxland_json("peers", "show")[0]["peers"] == ["192.0.2.2"]

    h1.vxland("fdb", "add", "--mac", "02:00:00:00:00:99", "--vni", "42", "--vtep", "192.0.2.2")
    rows = [r for r in h1.vxland_json("fdb", "show") if r["mac"] == "02:00:00:00:00:99"]
    assert rows == [{"mac": "02:00:00:00:00:99", "vni": 42, "vtep": "192.0.2.2", "static": True,
                     "type": "static", "age": rows[0]["age"]}]
    human = h1.vxland("fdb", "show").stdout
    assert "02:00:00:00:00:99" in human and "static" in human
    h1.vxland("fdb", "del", "--mac", "02:00:00:00:00:99", "--vni", "42")
    assert all(r["mac"] != "02:00:00:00:00:99" for r in h1.vxland_json("fdb", "show"))

    # mistakes get one clear line and a non-zero exit; nothing configured is lost
    for args, words in ((("fdb", "add", "--mac", "02:00:00:00:00:01", "--vni", "7", "--vtep", "192.0.2.2"),
                         "no network with VNI 7"),
                        (("fdb", "add", "--mac", "ff:ff:ff:ff:ff:ff", "--vni", "42", "--vtep", "192.0.2.2"),
                         "multicast"),
                        (("peers", "add", "--vni", "42", "224.1.1.1"), "cannot be a VTEP"),
                        (("peers", "del", "--vni", "42", "192.0.2.99"), "not in the flood list"),
                        (("fdb", "del", "--mac", "02:00:00:00:00:77", "--vni", "42"), "no entry")):
        r = h1.vxland(*args, check=False)
        assert r.returncode == 1 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert h1.vxland_json("peers", "show")[0]["peers"] == ["192.0.2.2"]
    assert two_hosts.ping(h1, h2, count=2).returncode == 0


def test_a_static_entry_never_moves_and_conflicts_are_counted(two_hosts):
    h1, h2 = two_hosts.hosts
    two_hosts.start_vxland(h1)
    two_hosts.start_vxland(h2)
    # pin c2's MAC behind a VTEP that does not exist: c1 cannot reach c2 any more,
    # and c2's replies (from 192.0.2.2) claim a static MAC from elsewhere: dropped
    h1.vxland("fdb", "add", "--mac", h2.container_mac, "--vni", "42", "--vtep", "198.51.100.1")
    assert two_hosts.ping(h2, h1, count=3).returncode != 0
    stats = h1.vxland_json("stats")
    assert stats["drops"]["static_conflict"] >= 1
    assert (h2.container_mac, "198.51.100.1") in fdb(h1)
    h1.vxland("fdb", "del", "--mac", h2.container_mac, "--vni", "42")
    assert two_hosts.ping(h1, h2, count=3).returncode == 0
    assert (h2.container_mac, "192.0.2.2") in fdb(h1)


def test_malformed_datagrams_are_counted_and_the_daemon_lives_on(two_hosts):
    h1, h2 = two_hosts.hosts
    two_hosts.start_vxland(h1)
    two_hosts.start_vxland(h2)
    good_inner = bytes.fromhex("02420a2a0001" "020000000005") + b"\x08\x00" + bytes(46)
    cases = {
        "short_datagram": [b"\x08\x00\x00"],
        "no_i_flag": [bytes.fromhex("0000000000002a00") + good_inner],
        "unknown_vni": [bytes.fromhex("0800000000002b00") + good_inner] * 2,
        "truncated_inner": [bytes.fromhex("0800000000002a00") + b"\x02\x42"],
        "bad_source_mac": [bytes.fromhex("0800000000002a00" "02420a2a0001" "ffffffffffff") + b"\x08\x00",
                           bytes.fromhex("0800000000002a00" "02420a2a0001" "000000000000") + b"\x08\x00"],
    }
    payloads = [p for ps in cases.values() for p in ps]
    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"for p in {payloads!r}:\n"
              "    s.sendto(p, ('192.0.2.1', 4789))\n")
    sh(sys.executable, "-c", script, ns=h2.ns)
    time.sleep(0.5)
    drops = h1.vxland_json("stats")["drops"]
    for reason, sent in cases.items():
        assert drops[reason] == len(sent), (reason, drops)
    # reserved bits set: accepted, as RFC 7348 §5 says
    ok = bytes.fromhex("08ffffff00002aff" "02420a2a0001" "020000000006") + b"\x08\x00" + bytes(46)
    sh(sys.executable, "-c", script.replace(repr(payloads), repr([ok])), ns=h2.ns)
    time.sleep(0.5)
    assert ("02:00:00:00:00:06", "192.0.2.2") in fdb(h1)
    assert two_hosts.ping(h1, h2, count=2).returncode == 0
    assert h1.process.poll() is None


def test_entries_age_out_when_traffic_only_goes_to_them(two_hosts):
    h1, h2 = two_hosts.hosts
    two_hosts.start_vxland(h1, "--ageing", "2")
    two_hosts.start_vxland(h2)
    assert two_hosts.ping(h1, h2, count=1).returncode == 0
    assert (h2.container_mac, "192.0.2.2") in fdb(h1)
    # c1 keeps sending *to* c2 (frames c2 does not answer) for 4 s: c2's entry on h1 ages
    # out, while c1's own entry, refreshed by what c1 sends, stays
    two_hosts.send_frames(h1, h2.container_mac, count=20, interval=0.2)
    entries = fdb(h1)
    assert (h2.container_mac, "192.0.2.2") not in entries
    assert (h1.container_mac, "vx0") in entries


def test_config_file_with_static_entries(two_hosts, tmp_path):
    h1, h2 = two_hosts.hosts
    config = tmp_path / "vxland.toml"
    config.write_text(f"""
local = "192.0.2.1"
control = "{h1.control}"

[[network]]
vni = 42
tap = "vx0"
bridge = "br0"
peers = ["192.0.2.2"]
ageing = 60
static = [{{ mac = "{h2.container_mac}", vtep = "192.0.2.2" }}]
""")
    two_hosts.start_vxland(h1, "--config", str(config), vni=None)
    two_hosts.start_vxland(h2)
    assert two_hosts.ping(h1, h2, count=2).returncode == 0
    rows = h1.vxland_json("fdb", "show")
    assert {"mac": h2.container_mac, "vni": 42, "vtep": "192.0.2.2", "static": True, "type": "static"} \
        == {k: v for k, v in next(r for r in rows if r["mac"] == h2.container_mac).items() if k != "age"}


def run_vxland(ns, *args, prefix=()):
    return subprocess.run(["ip", "netns", "exec", ns, *prefix, sys.executable, "-m", "vxland", "run", *args],
                          capture_output=True, text=True, timeout=30)


def test_start_errors_are_one_clear_line(two_hosts, tmp_path):
    h1 = two_hosts.hosts[0]
    control = str(tmp_path / "c.sock")
    base = ["--local", "192.0.2.1", "--vni", "42", "--tap", "vx0", "--control", control]

    def one_line(result, code, words):
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith("vxland: ") and result.stderr.count("\n") == 1, result.stderr
        assert words in result.stderr, result.stderr

    one_line(run_vxland(h1.ns, *base, "--bridge", "nosuchbr"), 1, "bridge nosuchbr does not exist")
    one_line(run_vxland(h1.ns, *base[:1], "198.51.100.200", *base[2:]), 1, "not an address of this host")
    one_line(run_vxland(h1.ns, *base, "--vni", "16777216"), 2, "outside 0..16777215")
    one_line(run_vxland(h1.ns, *base, "--peer", "nonsense"), 2, "not an IPv4 or IPv6 address")
    one_line(run_vxland(h1.ns, *base, "--source-ports", "60000-50000"), 2, "is empty")
    one_line(run_vxland(h1.ns, "--config", str(tmp_path / "missing.toml")), 2, "cannot read config file")
    # a busy port: another socket holds 192.0.2.1:4789
    holder = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-c",
                               "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                               "s.bind(('192.0.2.1', 4789)); print('bound', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        one_line(run_vxland(h1.ns, *base), 1, "UDP port 4789 on 192.0.2.1 is busy")
    finally:
        holder.kill()
        holder.wait()
    # missing privileges: root without CAP_NET_RAW, then without CAP_NET_ADMIN
    one_line(run_vxland(h1.ns, *base, prefix=("setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-all")),
             1, "operation not permitted")
    one_line(run_vxland(h1.ns, *base, prefix=("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-all")),
             1, "cannot create TAP vx0: operation not permitted")
    # a second daemon on the same control socket is refused, the first keeps running
    two_hosts.start_vxland(h1)
    second = run_vxland(h1.ns, "--local", "192.0.2.1", "--vni", "43", "--tap", "vx1", "--port", "4790",
                        "--control", h1.control)
    one_line(second, 1, "in use by a running vxland")
    assert h1.vxland("stats", check=False).returncode == 0
    assert "vx1" not in sh("ip", "link", "show", ns=h1.ns).stdout


@pytest.mark.parametrize("df", ["set", "unset"])
def test_frames_too_big_for_the_underlay_are_answered_never_fragmented(two_hosts, df):
    """A TAP MTU larger than the underlay allows: what does not fit is dropped as too_big and
    answered with "fragmentation needed" (the sender learns MTU 1450), and nothing reaches the
    other side in fragments, whatever the outer DF says (RFC 7348 §4.3)."""
    h1, h2 = two_hosts.hosts
    two_hosts.start_vxland(h1, "--mtu", "1500", "--df", df)
    two_hosts.start_vxland(h2)
    sh("ip", "link", "set", "eth0", "mtu", "1500", ns=h1.container_ns)
    assert two_hosts.ping(h1, h2, count=1).returncode == 0               # small frames pass
    big = sh("ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1472", h2.container_ip,
             ns=h1.container_ns, check=False)
    assert big.returncode != 0
    assert re.search(r"mtu ?= ?1450", big.stdout + big.stderr), big.stdout + big.stderr
    assert "vx0: MTU 1500 is more than the underlay carries" in two_hosts.log_of(h1)     # said at start
    stats = h1.vxland_json("stats")
    assert stats["drops"]["too_big"] >= 1 and stats["vnis"][0]["too_big_replies"] >= 1
    reassembled = [line for line in sh("cat", "/proc/net/snmp", ns=h2.ns).stdout.splitlines() if line.startswith("Ip:")]
    fields = dict(zip(reassembled[0].split()[1:], reassembled[1].split()[1:]))
    assert fields["ReasmReqds"] == "0"                                    # no outer fragment ever arrived
    # 1472-byte UDP datagrams: the container, told the path MTU, fragments them itself into
    # inner packets that fit; they arrive, and GSO stays on for what fits
    udp = two_hosts.iperf3(h1, h2, 1, "-u", "-l", "1472", "-b", "5M")["end"]["sum"]
    assert udp["packets"] > 100 and udp["lost_percent"] < 5, udp
    assert h1.vxland_json("stats")["offloads"]["udp_gso"]
