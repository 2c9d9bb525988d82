"""vxland against the Linux kernel's VXLAN, on an underlay that keeps a veth's default
offloads -- as a virtio NIC between two VMs on one hypervisor has them.  The kernel leaves
inner checksums (CHECKSUM_PARTIAL) and TSO/USO segmentation to the NIC, and the virtual link
passes both on unfinished; vxland must finish them, or TCP from a kernel VTEP stalls and UDP
from it is dropped by the container as corrupt."""

import json
import subprocess
import sys
import time

import pytest

from vxland.topology import Topology

pytestmark = pytest.mark.netns


def fdb(host):
    return {(e["mac"], e.get("vtep") or e.get("port")) for e in host.vxland_json("fdb", "show")}


@pytest.fixture(params=["ipv4", "ipv6"])
def mixed(request):
    """vxland on h1, the kernel's VXLAN on h2, on an IPv4 or IPv6 underlay."""
    with Topology(ipv6=request.param == "ipv6") as t:
        yield t
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(f"--- log of vxland ---\n{t.log_of(t.hosts[0])}")


def burst(n):
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def udp_burst_received(t, src, dst, count=10, size=1000):
    """The payloads of the datagrams that a container sends in one UDP_SEGMENT call and that
    the other container receives intact."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", dst.container_ns, sys.executable, "-c",
         "import socket, json\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         f"s.bind(('{dst.container_ip}', 9999)); s.settimeout(2); print('ready', flush=True); got = []\n"
         "try:\n    while True: got.append(s.recv(65536).hex())\nexcept OSError: pass\nprint(json.dumps(got))\n"],
        stdout=subprocess.PIPE, text=True)
    assert receiver.stdout.readline().strip() == "ready"
    send = f"u.setsockopt(17, 103, {size})\nu.sendto(data, ('{dst.container_ip}', 9999))\n"
    subprocess.run(["ip", "netns", "exec", src.container_ns, sys.executable, "-c",
                    "import socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    f"data = (bytes(range(256)) * {count * size // 256 + 1})[:{count * size}]\n" + send], check=True)
    out, _ = receiver.communicate(timeout=10)
    return [bytes.fromhex(h) for h in json.loads(out.splitlines()[-1])]


@pytest.mark.parametrize("vxland_args", [(), ("--no-offloads",)], ids=["offloads", "no-offloads"])
def test_tcp_and_udp_both_ways_between_vxland_and_a_kernel_vtep(mixed, vxland_args):
    t = mixed
    h1, h2 = t.hosts
    t.start_vxland(h1, *vxland_args)
    t.start_kernel_vxlan(h2)
    for src, dst in ((h1, h2), (h2, h1)):
        ping = t.ping(src, dst, count=2)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    # each side learned the other's container
    assert (h2.container_mac, h2.underlay_ip) in fdb(h1)
    assert f"{h1.container_mac} dst {h1.underlay_ip}" in t.kernel_fdb(h2)
    # TCP both ways: the kernel's data (TSO super-frames) and its ACKs (partial checksums)
    for src, dst in ((h1, h2), (h2, h1)):
        tcp = t.iperf3(src, dst, 1)
        assert tcp["end"]["sum_received"]["bits_per_second"] > 1e8, (src.ns, tcp["end"])
    # UDP both ways, datagram by datagram: every one arrives with a valid checksum
    for src, dst in ((h1, h2), (h2, h1)):
        udp = t.iperf3(src, dst, 1, "-u", "-b", "20M", "-l", "1200")["end"]["sum"]
        assert udp["packets"] > 1000 and udp["lost_percent"] < 5, (src.ns, udp)
    # a UDP GSO burst from the kernel's side: one super-packet on the underlay, ten datagrams in c1
    payload = burst(10000)
    assert udp_burst_received(t, h2, h1) == [payload[i:i + 1000] for i in range(0, 10000, 1000)]
    stats = h1.vxland_json("stats")
    assert stats["csum_completed"] > 0 and stats["vnis"][0]["csum_completed"] == stats["csum_completed"]
    drops = {k: v for k, v in stats["drops"].items() if v}
    assert not {"bad_offload", "tap_error", "gro_oversize"} & set(drops), drops


def test_the_reference_path_finishes_them_too():
    with Topology() as t:
        h1, h2 = t.hosts
        t.start_vxland(h1, datapath="reference")
        t.start_kernel_vxlan(h2)
        assert t.ping(h2, h1, count=2).returncode == 0
        for src, dst in ((h1, h2), (h2, h1)):
            assert t.iperf3(src, dst, 1)["end"]["sum_received"]["bits_per_second"] > 1e7
        payload = burst(10000)
        assert udp_burst_received(t, h2, h1) == [payload[i:i + 1000] for i in range(0, 10000, 1000)]
        assert h1.vxland_json("stats")["csum_completed"] > 0


def test_a_corrupt_inner_checksum_from_a_kernel_vtep_is_left_for_the_container_to_drop(mixed):
    """Neither valid nor partial: handed on as it is (the container's stack drops it, as it
    would a frame corrupted on a wire), never 'fixed' into a valid one."""
    t = mixed
    h1, h2 = t.hosts
    t.start_vxland(h1)
    t.start_kernel_vxlan(h2)
    assert t.ping(h2, h1, count=1).returncode == 0
    # c2 sends UDP datagrams with a wrong checksum through a raw socket (the kernel VTEP carries them)
    bad = ("import socket, struct\n"
           "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)\n"
           "for i in range(5):\n"
           "    s.sendto(struct.pack('!HHHH', 4000, 9999, 8 + 100, 0xbeef) + bytes(100), "
           f"('{h1.container_ip}', 0))\n")
    before = _udp_in_csum_errors(h1)
    subprocess.run(["ip", "netns", "exec", h2.container_ns, sys.executable, "-c", bad], check=True)
    time.sleep(0.5)
    assert _udp_in_csum_errors(h1) - before == 5
    assert h1.vxland_json("stats")["vnis"][0]["rx_packets"] >= 5


def _udp_in_csum_errors(host):
    lines = [line.split() for line in open_snmp(host.container_ns) if line.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["InCsumErrors"])


def open_snmp(ns):
    return subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
