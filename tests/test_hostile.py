"""Hostile neighbours, in network namespaces: what a container, a host on the underlay or an
operator's slip can throw at a running vxland (issue 8).  In every case the daemon survives
(or stops cleanly where that is the design), every dropped datagram is counted under a
reason, memory and file descriptors stay bounded, and ping works afterwards."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from vxland.topology import sh

pytestmark = pytest.mark.netns

VXLAN_42 = "b'\\x08\\x00\\x00\\x00\\x00\\x00\\x2a\\x00'"


def status(pid):
    with open(f"/proc/{pid}/status") as f:
        return {line.split(":")[0]: line.split(":", 1)[1].strip() for line in f if ":" in line}


def rss_kib(pid):
    return int(status(pid)["VmRSS"].split()[0])


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def fdb(host):
    return {(e["mac"], e.get("vtep") or e.get("port")) for e in host.vxland_json("fdb", "show")}


def python_in(ns, script, timeout=120):
    return sh(sys.executable, "-c", script, ns=ns, timeout=timeout)


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_gro_bursts_of_128_segments_queued_while_the_daemon_is_stopped(two_hosts):
    """Each UDP_SEGMENT send of 128 datagrams stays one GRO read; a full batch of them used to
    write past the pump's packet array (heap corruption, then an abort)."""
    h1, h2 = two_hosts.hosts
    daemon = two_hosts.start_vxland(h1)
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        sends = 150
        python_in(h2.ns, f"""
import socket
frame = bytes.fromhex('{h1.container_mac.replace(':', '')}' + '02000000abcd' + '88b5') + bytes(46)
datagram = {VXLAN_42} + frame
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('{h2.underlay_ip}', 4789))
for i in range({sends}):
    s.sendmsg([datagram * 128], [(17, 103, len(datagram).to_bytes(2, 'little'))], 0, ('{h1.underlay_ip}', 4789))
""")
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    expected = sends * 128

    def accounted():
        stats = h1.vxland_json("stats")
        return stats["vnis"][0]["rx_packets"] + sum(stats["drops"].values()) >= expected
    assert wait_for(accounted), h1.vxland_json("stats")
    stats = h1.vxland_json("stats")
    assert daemon.poll() is None
    assert stats["vnis"][0]["rx_packets"] == expected - stats["drops"]["tap_busy"] - stats["drops"]["tap_error"], stats
    assert stats["internal_errors"] == 0
    two_hosts.start_vxland(h2)
    assert two_hosts.ping(h1, h2, count=2).returncode == 0


def test_a_flood_of_source_macs_from_a_container_is_capped(two_hosts):
    h1, h2 = two_hosts.hosts
    for h in (h1, h2):
        two_hosts.start_vxland(h)
    assert two_hosts.ping(h1, h2, count=1).returncode == 0
    pid = h1.process.pid
    before = rss_kib(pid)
    # paced a little, so that most frames get past the TAP's queue (the rest count as tap_overflow)
    python_in(h1.container_ns, """
import os, socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
for i in range(40000):
    s.send(b'\\xff' * 6 + b'\\x02' + os.urandom(5) + b'\\x88\\xb5' + bytes(46))
    if i % 100 == 0:
        time.sleep(0.001)
""")
    time.sleep(1)
    stats = h1.vxland_json("stats")
    vni = stats["vnis"][0]
    assert 8192 <= vni["fdb_entries"] <= 8192 + 4 and vni["learn_refused"] > 0, vni
    assert vni["tx_packets"] + vni["drops"]["tap_overflow"] >= 40000
    assert rss_kib(pid) - before < 24 * 1024                      # 40k entries would be 17 MiB more
    assert h1.process.poll() is None and stats["internal_errors"] == 0
    assert two_hosts.ping(h1, h2, count=2).returncode == 0           # known MACs are still known
    assert (h2.container_mac, "192.0.2.2") in fdb(h1)


def test_thousands_of_udp_flows_from_a_container_hold_a_bounded_number_of_sockets(two_hosts):
    """Every UDP flow whose datagrams go out as a GSO run wants a socket bound to its outer
    source port: 1800 flows used to hold 1364 fds."""
    h1, h2 = two_hosts.hosts
    for h in (h1, h2):
        two_hosts.start_vxland(h)
    assert two_hosts.ping(h1, h2, count=1).returncode == 0
    pid = h1.process.pid
    before = fds(pid)
    python_in(h1.container_ns, f"""
import socket
for i in range(3000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(17, 103, 200)                                 # four datagrams per send: a GSO run
    s.sendto(bytes(800), ('{h2.container_ip}', 9))
    s.close()
""")
    time.sleep(0.5)
    stats = h1.vxland_json("stats")
    assert 0 < stats["offloads"]["udp_gso_sockets"] <= 64, stats["offloads"]
    assert fds(pid) - before <= 64
    vni = stats["vnis"][0]
    # the kernel counts a TAP overflow per skb: here a super-frame of four datagrams
    assert vni["tx_packets"] + 4 * vni["drops"]["tap_overflow"] >= 3000 * 4, vni
    assert stats["internal_errors"] == 0
    assert two_hosts.ping(h1, h2, count=2).returncode == 0
    assert h1.vxland("stats", check=False).returncode == 0


@pytest.mark.parametrize("accept_from", ["any", "known"])
def test_a_stranger_vtep_cannot_poison_the_table_when_only_known_ones_are_taken(four_hosts, accept_from):
    h1, h2, h3, _ = four_hosts.hosts
    four_hosts.start_vxland(h1, "--accept-from", accept_from, peers=[h2.underlay_ip])
    four_hosts.start_vxland(h2, peers=[h1.underlay_ip])
    assert four_hosts.ping(h1, h2, count=2).returncode == 0
    assert (h2.container_mac, h2.underlay_ip) in fdb(h1)
    # h3 is on the underlay but in nobody's flood list: it claims c2's MAC, and c1's own
    python_in(h3.ns, f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for mac in ('{h2.container_mac}', '{h1.container_mac}'):
    frame = b'\\xff' * 6 + bytes.fromhex(mac.replace(':', '')) + b'\\x88\\xb5' + bytes(46)
    for i in range(5):
        s.sendto({VXLAN_42} + frame, ('{h1.underlay_ip}', 4789))
""")
    time.sleep(0.5)
    entries = fdb(h1)
    stats = h1.vxland_json("stats")
    if accept_from == "known":
        assert (h2.container_mac, h2.underlay_ip) in entries and (h1.container_mac, "vx0") in entries
        assert stats["drops"]["untrusted_vtep"] == 10
        assert four_hosts.ping(h1, h2, count=2).returncode == 0
    else:                                           # the kernel's default: anyone may redirect MACs
        assert (h2.container_mac, h3.underlay_ip) in entries
        assert stats["drops"]["untrusted_vtep"] == 0


def test_a_deleted_tap_stops_the_daemon_with_one_line_and_exit_1(two_hosts):
    h1 = two_hosts.hosts[0]
    daemon = two_hosts.start_vxland(h1)
    sh("ip", "link", "del", "vx0", ns=h1.ns)
    assert daemon.wait(10) == 1
    errors = [line for line in two_hosts.log_of(h1).splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "vx0" in errors[0] and "gone" in errors[0], errors
    assert not os.path.exists(h1.control)


def test_sighup_and_sigusr_do_not_kill_it(two_hosts):
    h1, h2 = two_hosts.hosts
    for h in (h1, h2):
        two_hosts.start_vxland(h)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        h1.process.send_signal(sig)
    time.sleep(0.5)
    assert h1.process.poll() is None
    assert "SIGHUP" in two_hosts.log_of(h1)
    assert two_hosts.ping(h1, h2, count=2).returncode == 0
    assert two_hosts.stop_vxland(h1) == 0 and not os.path.exists(h1.control)


def test_it_runs_as_an_unprivileged_user_with_two_capabilities(two_hosts):
    h1, h2 = two_hosts.hosts
    # like /run/vxland: a directory the daemon makes and hands over, under one anybody may traverse
    # (pytest's own temporary directories are root's alone)
    base = pathlib.Path(tempfile.mkdtemp(prefix="vxland-user-"))
    os.chmod(base, 0o755)
    control = base / "run" / "vxland.sock"
    h1.control = str(control)
    try:
        runs_as_nobody(two_hosts, h1, h2, control)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def runs_as_nobody(two_hosts, h1, h2, control):
    daemon = two_hosts.start_vxland(h1, "--user", "nobody")
    two_hosts.start_vxland(h2)
    # credentials are per thread: every one -- the data path's included -- has dropped them
    tasks = os.listdir(f"/proc/{daemon.pid}/task")
    names = [pathlib.Path(f"/proc/{daemon.pid}/task/{task}/comm").read_text().strip() for task in tasks]
    assert "vxland-dp" in names, names           # the data-path thread, named for top -H
    dp = status(f"{daemon.pid}/task/{tasks[names.index('vxland-dp')]}")
    assert int(dp["SigBlk"], 16) & (1 << (signal.SIGTERM - 1)), dp["SigBlk"]   # signals go to the loop
    for task in tasks:
        st = status(f"{daemon.pid}/task/{task}")
        assert st["Uid"].split()[:2] == ["65534", "65534"], (task, st["Uid"])
        for caps in ("CapEff", "CapPrm", "CapBnd"):
            assert int(st[caps], 16) == (1 << 12) | (1 << 13), (task, caps, st[caps])  # NET_ADMIN, NET_RAW
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0 and st["NoNewPrivs"] == "1"
    assert oct(os.stat(control).st_mode & 0o777) == "0o660"
    assert two_hosts.ping(h1, h2, count=2).returncode == 0
    assert two_hosts.stop_vxland(h1) == 0
    assert not control.exists() and "cannot remove" not in two_hosts.log_of(h1)


def test_a_control_path_that_is_not_a_stale_socket_is_refused(two_hosts, tmp_path):
    h1 = two_hosts.hosts[0]
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    for path, words in ((precious, "is not a socket"), (tmp_path, "is not a socket")):
        result = subprocess.run(["ip", "netns", "exec", h1.ns, sys.executable, "-m", "vxland", "run", "--local",
                                 "192.0.2.1", "--vni", "42", "--tap", "vx0", "--control", str(path)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and words in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert precious.read_text() == "keep me"
    assert "vx0" not in sh("ip", "link", "show", ns=h1.ns).stdout
