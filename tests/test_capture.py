"""`vxland capture`, and Wireshark's dissector (tshark) as the judge of what vxland sends."""

import subprocess
import sys
import time

import pytest

from vxland.capture import read_pcap

pytestmark = pytest.mark.netns


def tshark(path, *fields, display_filter=None):
    cmd = ["tshark", "-r", path, "-T", "fields", "-E", "separator=/t", "-E", "aggregator=;"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line.split("\t") for line in r.stdout.splitlines()]


@pytest.mark.parametrize("offloads", [True, False])
def test_everything_vxland_sends_is_well_formed_vxlan(two_hosts, tmp_path, offloads):
    h1, h2 = two_hosts.hosts
    extra = [] if offloads else ["--no-offloads"]
    for h in (h1, h2):
        two_hosts.start_vxland(h, *extra, "--ttl", "100", "--tos", "inherit")
    path = str(tmp_path / "underlay.pcap")
    capture = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-m", "vxland", "capture",
                                "--side", "underlay", "--control", h1.control, "-w", path, "--seconds", "4"],
                               stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert two_hosts.ping(h1, h2, count=3).returncode == 0
    from vxland.topology import sh
    sh("ping", "-c", "2", "-Q", "0xb9", h2.container_ip, ns=h1.container_ns)     # DSCP 46, ECT(1)
    # a bounded load: what matters is that every packet is well formed, not how many there are
    two_hosts.iperf3(h1, h2, 1, "-b", "300M")
    two_hosts.iperf3(h1, h2, 1, "-u", "-l", "64", "-b", "2M")
    _, err = capture.communicate(timeout=30)
    assert capture.returncode == 0 and "packets from eth0 written" in err, err

    sent = read_pcap(path)
    ours = tshark(path, "frame.len", display_filter="ip.src == 192.0.2.1")
    assert len(ours) > 1000 and len(sent) >= len(ours)
    # every datagram vxland sent decodes as VXLAN: I flag, VNI 42, reserved zero, an inner frame
    rows = tshark(path, "vxlan.flag_i", "vxlan.vni", "vxlan.flags_reserved", "vxlan.reserved8", "eth.type",
                  "ip.ttl", "ip.flags.df", display_filter="ip.src == 192.0.2.1")
    assert len(rows) == len(ours)
    for flag_i, vni, flags_reserved, reserved8, _eth, ttl, df in rows:
        assert flag_i in ("1", "True") and vni == "42", rows[:3]
        assert int(flags_reserved, 0) == 0 and int(reserved8) == 0
        assert ttl.split(";")[0] == "100" and df.split(";")[0] in ("1", "True")
    assert tshark(path, "frame.number", display_filter="_ws.malformed") == []
    # frames bigger than the MTU would mean a GSO super-packet escaped splitting
    assert max(len(f) for f in sent) <= 1500 + 14
    # TOS inherit: the DSCP 46 ping crossed with outer DSCP 46 and ECT(1) kept
    assert tshark(path, "ip.dsfield", display_filter="ip.src == 192.0.2.1 && ip.dsfield == 0xb9 && icmp")


def test_capture_on_the_tap_side(two_hosts, tmp_path):
    h1, h2 = two_hosts.hosts
    for h in (h1, h2):
        two_hosts.start_vxland(h)
    path = str(tmp_path / "tap.pcap")
    capture = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-m", "vxland", "capture",
                                "--side", "tap", "--vni", "42", "--control", h1.control, "-w", path,
                                "--seconds", "2"], stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert two_hosts.ping(h1, h2, count=3).returncode == 0
    capture.communicate(timeout=30)
    requests = tshark(path, "icmp.seq", display_filter="icmp.type == 8 && ip.src == 10.42.0.1")
    replies = tshark(path, "icmp.seq", display_filter="icmp.type == 0 && ip.src == 10.42.0.2")
    assert len(requests) == 3 and len(replies) == 3
    bad = subprocess.run(["ip", "netns", "exec", h1.ns, sys.executable, "-m", "vxland", "capture", "--side",
                          "tap", "--vni", "7", "--control", h1.control, "-w", path, "-c", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == "vxland: no network with VNI 7"
