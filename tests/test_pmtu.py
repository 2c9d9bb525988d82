"""Path MTU: a frame from the TAP too big for the underlay once encapsulated is dropped (never
fragmented, RFC 7348 §4.3) and answered, as the kernel's bridged tunnels answer it, with an ICMP
"fragmentation needed" or ICMPv6 "packet too big" written back into the TAP -- checked against
scapy, C against Python, and on the wire: a container with MTU 1500 behind a 1500 underlay
completes an iperf3 TCP run."""

import re
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from vxland import wire
from vxland.capture import read_pcap
from vxland.datapath import DropReason, NetworkConfig, ReferenceDataPlane
from vxland.native import NativeDataPlane, ffi, lib

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
PLANES = [ReferenceDataPlane, NativeDataPlane]


def c_reply(frame, mtu, split_at=None):
    """vx_too_big_reply, the frame held as data (and, from split_at, a payload slice)."""
    data = ffi.from_buffer(bytearray(frame[:split_at]))
    payload = ffi.from_buffer(bytearray(frame[split_at:] or b"\0"))
    p = ffi.new("struct vx_packet *")
    p.data, p.len = data, len(frame[:split_at])
    if split_at is not None and split_at < len(frame):
        p.payload, p.payload_len = payload, len(frame) - split_at
    out = ffi.new("uint8_t[]", lib.VX_REPLY_MAX)
    n = lib.vx_too_big_reply(p, mtu, out)
    return bytes(ffi.buffer(out, n)) if n else None


def v4(size=2000, **ip):
    return raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", ttl=61, **ip)
               / TCP(sport=1, dport=2, flags="A") / Raw((bytes(range(256)) * (size // 256 + 1))[:size]))


def v6(size=2000, nh=None, payload=None):
    l3 = IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=33)
    body = payload if payload is not None else TCP(sport=1, dport=2) / Raw(bytes(size))
    return raw(Ether(src=A, dst=B) / l3 / body)


def test_fragmentation_needed_as_the_kernel_builds_it():
    frame = v4()
    reply = wire.too_big_reply(frame, 1450)
    assert reply == c_reply(frame, 1450) == c_reply(frame, 1450, split_at=54)
    p = Ether(reply)
    assert (p.src, p.dst) == (B, A)
    assert (p[IP].src, p[IP].dst, p[IP].ttl, p[IP].flags, p[IP].tos, p[IP].id) == ("10.0.0.2", "10.0.0.1", 61, 2, 0, 0)
    assert (p[ICMP].type, p[ICMP].code, p[ICMP].nexthopmtu) == (3, 4, 1450)
    assert len(p[IP]) == 576 and reply[14 + 28:] == frame[14:14 + 548]     # the packet, trimmed to 576
    check = Ether(reply)
    del check[IP].chksum, check[ICMP].chksum
    assert raw(check) == reply                           # scapy computes the same checksums


def test_packet_too_big_as_the_kernel_builds_it():
    frame = v6()
    reply = wire.too_big_reply(frame, 1430)
    assert reply == c_reply(frame, 1430) == c_reply(frame, 1430, split_at=74)
    p = Ether(reply)
    assert (p.src, p.dst, p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (B, A, "2001:db8::2", "2001:db8::1", 33)
    assert p[ICMPv6PacketTooBig].mtu == 1430 and len(p[IPv6]) == 1280
    check = Ether(reply)
    del check[ICMPv6PacketTooBig].cksum
    assert raw(check) == reply


@pytest.mark.parametrize("frame,mtu", [
    (raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF+MF") / Raw(bytes(2000))), 1450),
    (raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", frag=185) / Raw(bytes(2000))), 1450),  # not the first
    (v4(), 575),                                                                   # below IPv4's minimum
    (raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="255.255.255.255", flags="DF") / Raw(bytes(2000))), 1450),
    (raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="224.0.0.9", flags="DF") / Raw(bytes(2000))), 1450),
    (raw(Ether(src=A, dst=B) / IP(src="127.0.0.1", dst="10.0.0.2", flags="DF") / Raw(bytes(2000))), 1450),
    (raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / ICMP(type=3, code=1)
         / Raw(bytes(2000))), 1450),                                               # an ICMP error
    (v6(), 1279),
    (raw(Ether(src=A, dst=B) / IPv6(src="::1", dst="2001:db8::2") / Raw(bytes(2000))), 1430),
    (v6(payload=ICMPv6DestUnreach() / Raw(bytes(2000))), 1430),
    (raw(Ether(src=A, dst=B) / Raw(bytes(2000))), 1450),                           # not IP
])
def test_what_the_kernel_does_not_answer(frame, mtu):
    assert wire.too_big_reply(frame, mtu) is None and c_reply(frame, mtu) is None


@pytest.mark.parametrize("flags", ["", "MF"], ids=["whole", "first-fragment"])
def test_ipv4_without_df_is_answered_too(flags):
    """Where the kernel lets a packet without DF through and fragments the outer packet, a VTEP
    must not fragment (RFC 7348 §4.3): vxland answers it as it answers DF, so that the sender's
    stack, which takes the path MTU whatever DF said, fragments at that size itself."""
    frame = raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", flags=flags, ttl=61)
                / UDP(sport=1, dport=2) / Raw(bytes(2000)))
    reply = wire.too_big_reply(frame, 1450)
    assert reply is not None and reply == c_reply(frame, 1450)
    p = Ether(reply)
    assert (p[ICMP].type, p[ICMP].code, p[ICMP].nexthopmtu) == (3, 4, 1450)
    assert p[IPerror].flags == flags and p[UDPerror].dport == 2


def test_an_icmp_echo_is_answered_but_not_an_error():
    echo = raw(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / ICMP(type=8) / Raw(bytes(2000)))
    assert wire.too_big_reply(echo, 1450) == c_reply(echo, 1450) is not None
    echo6 = v6(payload=ICMPv6EchoRequest() / Raw(bytes(2000)))
    assert wire.too_big_reply(echo6, 1430) == c_reply(echo6, 1430) is not None


@pytest.mark.parametrize("plane", PLANES, ids=["reference", "native"])
def test_too_big_frames_are_dropped_answered_and_rate_limited(plane):
    dp = plane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1", underlay_mtu=1500))
    dp.set_flood(0, ["192.0.2.2"])
    fits, too_big = v4(1500 - 36 - 54), v4(1500 - 36 - 54 + 1)
    out, _ = dp.encap([(0, fits)], 1.0)
    assert len(out) == 1 and len(out[0].header + out[0].frame) == 1500
    out, _ = dp.encap([(0, too_big)] * 30, 1.0)
    assert out == [] and dp.counters(0).drops[DropReason.too_big] == 30
    replies = dp.take_replies()
    assert len(replies) == 10                                  # a burst of 10, then 100 a second
    assert all(r == (0, wire.too_big_reply(too_big, 1450)) for r in replies)
    dp.encap([(0, too_big)] * 30, 1.05)
    assert len(dp.take_replies()) == 5 and dp.counters(0).too_big_replies == 15


def test_no_answer_where_no_mtu_is_known():
    dp = NativeDataPlane()
    dp.add_network(0, NetworkConfig(vni=42, local="192.0.2.1"))
    dp.set_flood(0, ["192.0.2.2"])
    out, _ = dp.encap([(0, v4(9000))], 1.0)
    assert len(out) == 1 and dp.take_replies() == []


def run_in(ns, *cmd, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, **kw)


@pytest.mark.netns
def test_a_container_with_mtu_1500_behind_a_1500_underlay_completes_tcp(two_hosts, tmp_path):
    """The container's TCP starts with an MSS for 1500 bytes; its first full segment is too big
    for the tunnel, vxland answers "fragmentation needed, MTU 1450", the container lowers its
    MSS, and the transfer completes.  The ICMP is seen in a capture on the container's side."""
    t = two_hosts
    h1, h2 = t.hosts
    for h in (h1, h2):
        t.start_vxland(h, "--mtu", "1500")
        subprocess.run(["ip", "-n", h.container_ns, "link", "set", "eth0", "mtu", "1500"], check=True)
    capture = subprocess.Popen(["ip", "netns", "exec", h1.container_ns, sys.executable, "-m", "vxland", "capture",
                                "--interface", "eth0", "-w", str(tmp_path / "c1.pcap"), "--seconds", "6"],
                               stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    result = t.iperf3(h1, h2, 2)
    assert result["end"]["sum_received"]["bits_per_second"] > 1e8
    capture.wait(15)
    icmps = [Ether(f) for f in read_pcap(str(tmp_path / "c1.pcap")) if ICMP in Ether(f)]
    frag_needed = [p for p in icmps if p[ICMP].type == 3 and p[ICMP].code == 4]
    assert frag_needed and frag_needed[0][ICMP].nexthopmtu == 1450
    assert frag_needed[0][IP].src == h2.container_ip and frag_needed[0][IP].dst == h1.container_ip
    stats = h1.vxland_json("stats")
    assert stats["vnis"][0]["too_big_replies"] >= 1 and stats["drops"]["too_big"] >= 1


@pytest.mark.netns
def test_the_default_configuration_answers_too_big_frames_of_any_size(two_hosts):
    """No MTU configured anywhere in vxland, and a container at 1500 -- the engines' default --
    over a 1500 underlay.  The TAP used to carry the overlay's MTU, so the bridge dropped the
    container's 1514-byte frames before vxland saw them: no ICMP, a black hole once TCP could
    not hide it in super-frames.  Now the bridge hands vxland every frame and vxland answers:
    ping with DF learns MTU 1450; TCP completes with the container's segmentation offload off
    (the one departure from default offloads here: the case the issue names, frames that are
    each too big); and a ping without DF gets the same answer, after which the sender
    fragments and its pings come back."""
    t = two_hosts
    h1, h2 = t.hosts
    for h in (h1, h2):
        t.start_vxland(h)
        for ns, dev in ((h.container_ns, "eth0"), (h.ns, "ctr0")):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "mtu", "1500"], check=True)
    assert h1.vxland_json("networks", "show")[0]["mtu"] == 1450           # what containers should use
    big = run_in(h1.container_ns, "ping", "-c", "3", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1472", h2.container_ip)
    assert re.search(r"mtu ?= ?1450", big.stdout + big.stderr), big.stdout + big.stderr
    assert h1.vxland_json("stats")["vnis"][0]["too_big_replies"] >= 1
    run_in(h1.container_ns, "ip", "route", "flush", "cache")
    subprocess.run(["ip", "netns", "exec", h1.container_ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off"],
                   check=True, capture_output=True)
    assert t.iperf3(h1, h2, 2)["end"]["sum_received"]["bytes"] > 1_000_000
    run_in(h1.container_ns, "ip", "route", "flush", "cache")
    loose = run_in(h1.container_ns, "ping", "-c", "5", "-i", "0.3", "-W", "1", "-M", "dont", "-s", "1472",
                   h2.container_ip)
    received = int(re.search(r"(\d+) received", loose.stdout).group(1))
    assert received >= 3, loose.stdout                      # the first may be answered with the ICMP instead
