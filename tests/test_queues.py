"""Flow isolation: multi-queue TAPs, a SO_REUSEPORT group of underlay sockets, several
data-path threads (native/thread.c) -- in the setting users run, two hosts in namespaces."""

import contextlib
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from vxland.topology import TopologyError, sh

pytestmark = pytest.mark.netns

UDP_FLOWS = """
import socket, time
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(32)]
for _ in range(20):
    for s in socks:
        s.sendto(bytes(100), ('{ip}', 9))
    time.sleep(0.005)
"""


def tap_queues(host, name="vx0"):
    """How many queues the kernel says the TAP has (its tx queues, one per queue fd)."""
    return int(sh("sh", "-c", f"ls -d /sys/class/net/{name}/queues/tx-* | wc -l", ns=host.ns).stdout)


def test_flows_spread_over_the_queues_of_the_tap_and_the_underlay(two_hosts):
    """By default (on any machine: at least 4 queues), the TAP has that many queues, the
    underlay that many sockets, and 32 flows from one container land on more than one of
    each -- on both hosts: the sender's TAP queues, the receiver's sockets."""
    h1, h2 = two_hosts.hosts
    for h in (h1, h2):
        two_hosts.start_vxland(h)
    assert two_hosts.ping(h1, h2, count=2).returncode == 0
    stats = h1.vxland_json("stats")
    cpus = len(os.sched_getaffinity(0))
    assert stats["queues"] == max(4, min(cpus, 16)) and stats["datapath_threads"] == min(cpus, stats["queues"])
    assert tap_queues(h1) == stats["queues"]
    sh(sys.executable, "-c", UDP_FLOWS.format(ip=h2.container_ip), ns=h1.container_ns)
    time.sleep(0.3)
    sent, received = h1.vxland_json("stats")["queue_packets"], h2.vxland_json("stats")["queue_packets"]
    assert len(sent["tap"]) == len(received["underlay"]) == stats["queues"]
    assert sum(1 for n in sent["tap"] if n >= 20) >= 2, sent              # 32 flows, 20 datagrams each
    assert sum(1 for n in received["underlay"] if n >= 20) >= 2, received
    assert sum(received["underlay"]) >= 32 * 20


@pytest.mark.parametrize("queues,threads", [(1, 1), (4, 1), (3, 2)])
def test_any_number_of_queues_and_threads_carries_tcp_both_ways(two_hosts, queues, threads):
    """(1, 1) is the path before queues: one TAP fd, one socket, one thread."""
    h1, h2 = two_hosts.hosts
    flags = ["--queues", str(queues), "--datapath-threads", str(threads)]
    for h in (h1, h2):
        two_hosts.start_vxland(h, *flags)
    stats = h1.vxland_json("stats")
    assert (stats["queues"], stats["datapath_threads"]) == (queues, threads)
    assert tap_queues(h1) == queues
    for src, dst in ((h1, h2), (h2, h1)):
        assert two_hosts.ping(src, dst, count=2).returncode == 0
        result = two_hosts.iperf3(src, dst, 2)
        assert result["end"]["sum_received"]["bytes"] > 10_000_000, result.get("error")
    for h in (h1, h2):
        vni = h.vxland_json("stats")["vnis"][0]
        assert vni["drops"]["bad_offload"] == 0 and vni["drops"]["tap_error"] == 0


def test_more_queues_than_allowed_is_one_line(two_hosts):
    h1 = two_hosts.hosts[0]
    with pytest.raises(TopologyError) as e:
        two_hosts.start_vxland(h1, "--queues", "17")
    assert "queues 17 is outside 0..16" in str(e.value) and "Traceback" not in str(e.value)


def test_a_stranger_in_the_port_s_reuseport_group_is_refused(two_hosts):
    """A SO_REUSEPORT socket already on local:4789 would silently take a share of the
    datagrams of a group that vxland joined: vxland refuses to start, in one line."""
    h1 = two_hosts.hosts[0]
    holder = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-c",
                               "import socket, sys, time\n"
                               "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                               "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
                               "s.bind(('192.0.2.1', 4789)); print('bound', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        with pytest.raises(TopologyError) as e:
            two_hosts.start_vxland(h1)
        assert "UDP port 4789 on 192.0.2.1 is busy" in str(e.value) and "Traceback" not in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    assert "vx0" not in sh("ip", "link", "show", ns=h1.ns).stdout     # nothing left behind
    two_hosts.start_vxland(h1)                                          # and once it is gone, it starts


def test_a_single_queue_tap_made_beforehand_is_used_with_one_queue(two_hosts):
    """A TAP someone made without multi_queue cannot take more queues: vxland says so once
    and carries its traffic on the one queue."""
    h1, h2 = two_hosts.hosts
    sh("ip", "tuntap", "add", "dev", "vx0", "mode", "tap", "vnet_hdr", ns=h1.ns)
    two_hosts.start_vxland(h1)
    two_hosts.start_vxland(h2)
    assert two_hosts.ping(h1, h2, count=2).returncode == 0
    log = two_hosts.log_of(h1)
    assert log.count("TAP vx0 exists with one queue") == 1 and "Traceback" not in log
    assert len(h1.vxland_json("stats")["queue_packets"]["tap"]) == 1


def test_a_tap_deleted_under_load_stops_every_thread_with_one_line(two_hosts):
    """All queues of the TAP fail at once, in several threads: one error line, exit 1."""
    h1, h2 = two_hosts.hosts
    process = two_hosts.start_vxland(h1, "--datapath-threads", "2")
    two_hosts.start_vxland(h2)
    with loaded(h1, h2):
        time.sleep(1.5)
        sh("ip", "link", "del", "vx0", ns=h1.ns)
        assert process.wait(15) == 1
    log = two_hosts.log_of(h1)
    assert log.count("ERROR TAP vx0 of VNI 42 is gone") == 1 and "Traceback" not in log


@contextlib.contextmanager
def loaded(src, dst, streams=4, seconds=120):
    """iperf3 with `streams` streams from src's container to dst's, running inside the block
    (the client is yielded); both ends killed after it, long before `seconds`."""
    srv = subprocess.Popen(["ip", "netns", "exec", dst.container_ns, "iperf3", "-s", "-B", dst.container_ip],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        deadline = time.monotonic() + 10                   # listening, before the client tries
        while time.monotonic() < deadline:
            if sh("ss", "-Hltn", "sport = :5201", ns=dst.container_ns).stdout.strip():
                break
            time.sleep(0.1)
        client = subprocess.Popen(["ip", "netns", "exec", src.container_ns, "iperf3", "-c", dst.container_ip,
                                   "-P", str(streams), "-t", str(seconds)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield client
    finally:
        for p in (client, srv):
            if p is not None:
                p.kill()
                p.wait()


def carried(host):
    """VNI 42's frames sent, so far."""
    return host.vxland_json("stats")["vnis"][0]["tx_packets"]


def test_shutdown_under_load_with_several_threads_is_clean(two_hosts):
    """SIGTERM while 4 streams pour through 2 threads and 4 queues: exit 0 within the
    supervisor's patience, no traceback, and the TAP vxland made is gone with it."""
    h1, h2 = two_hosts.hosts
    process = two_hosts.start_vxland(h1, "--datapath-threads", "2", "--queues", "4",
                                     prefix=("prlimit", "--nofile=1024:8192"))
    two_hosts.start_vxland(h2)
    limits = pathlib.Path(f"/proc/{process.pid}/limits").read_text()
    assert re.search(r"Max open files\s+8192\s+8192", limits), limits     # raised from 1024 at start
    with loaded(h1, h2) as client:
        before = carried(h1)
        time.sleep(1.5)
        assert carried(h1) - before > 1000 and client.poll() is None         # under load, now
        process.terminate()
        assert process.wait(10) == 0
    log = two_hosts.log_of(h1)
    assert "Traceback" not in log and "ERROR" not in log, log[-1500:]
    assert "vx0" not in sh("ip", "link", "show", ns=h1.ns).stdout


def test_networks_added_and_removed_by_reload_under_load_bring_and_take_their_queues(two_hosts):
    """A reload adds a network while the first carries 4 streams through 2 threads: its TAP
    has the daemon's queues; a reload that removes it takes all of them away (the TAP goes,
    which it cannot while a queue fd is open), and the first network never stops."""
    from test_reload import host_config

    h1, h2 = two_hosts.hosts
    path = pathlib.Path(two_hosts.workdir) / "h1.toml"          # where vxland, no longer root, reads it
    second = '[[network]]\nvni = 43\ntap = "vx43"\npeers = ["192.0.2.2"]\n'
    path.write_text(host_config(two_hosts, h1, h1.control, extra="queues = 4\ndatapath_threads = 2"))
    two_hosts.start_vxland(h1, "--config", str(path), vni=None)
    two_hosts.start_vxland(h2)
    with loaded(h1, h2) as client:
        for _ in range(3):
            before = carried(h1)
            path.write_text(host_config(two_hosts, h1, h1.control, more=second,
                                        extra="queues = 4\ndatapath_threads = 2"))
            assert h1.vxland("reload").returncode == 0
            assert tap_queues(h1, "vx43") == 4
            assert [v["vni"] for v in h1.vxland_json("stats")["vnis"]] == [42, 43]
            path.write_text(host_config(two_hosts, h1, h1.control, extra="queues = 4\ndatapath_threads = 2"))
            assert h1.vxland("reload").returncode == 0
            assert "vx43" not in sh("ip", "link", "show", ns=h1.ns).stdout
            assert carried(h1) - before > 1000 and client.poll() is None   # VNI 42 carried on
        assert two_hosts.ping(h1, h2, count=3).returncode == 0
    log = two_hosts.log_of(h1)
    assert "Traceback" not in log and "ERROR" not in log, log[-1500:]
