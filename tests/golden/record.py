"""Record the golden pcaps of tests/test_golden.py.  Run as root from the project root:

    .venv/bin/python tests/golden/record.py

kernel-tap.pcap / kernel-underlay.pcap: what crosses a host that runs the Linux kernel's VXLAN
(`ip link add vx0 type vxlan id 42 dstport 4789 noudpcsum df set`: the kernel's defaults but
for the two where it departs from RFC 7348's preferences and vxland follows the RFC), its
underlay a veth with its default offloads, as a virtio NIC between VMs has them.  Two kinds of
inner frames: the frames of frames(), injected raw into the container, and frames that the
container's own TCP and UDP sockets send (socket_traffic()), whose checksums the kernel leaves
to the NIC.  kernel-tap.pcap has the inner frames as they entered vx0, checksums finished;
kernel-underlay.pcap has the datagrams as the kernel sent them, byte for byte as a receiving
VTEP's socket reads them -- the socket-sent frames with their checksums in the partial form.
Background frames (IGMP, MLD of interfaces coming up) are left out.
scapy-tap.pcap / scapy-underlay.pcap: the frames of frames() wrapped by scapy the way RFC 7348
and RFC 6040 say a VTEP wraps them.  Review a diff of the files before committing them.
"""

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.layers.vxlan import VXLAN  # noqa: E402
from scapy.packet import Raw, raw  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

from vxland import offload, wire  # noqa: E402
from vxland.capture import read_pcap  # noqa: E402
from vxland.topology import Topology, sh  # noqa: E402

C1, C2 = "02:42:0a:2a:00:01", "02:42:0a:2a:00:02"


def frames():
    """Inner frames covering what crosses a VTEP: broadcast, unicast, IPv4 and IPv6, every ECN
    codepoint, DF set and clear, TCP, UDP, ICMP, and a frame as large as the MTU allows."""
    eth = Ether(src=C1, dst=C2)
    out = [Ether(src=C1, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=C1, psrc="10.42.0.1", pdst="10.42.0.2"),
           eth / IP(src="10.42.0.1", dst="10.42.0.2", flags="DF", id=1) / ICMP(id=7, seq=1) / Raw(b"ping" * 8)]
    for ecn in range(4):
        out.append(eth / IP(src="10.42.0.1", dst="10.42.0.2", tos=0xB8 | ecn, id=10 + ecn)
                   / UDP(sport=4000 + ecn, dport=5000) / Raw(b"u" * 20))
    out.append(eth / IP(src="10.42.0.1", dst="10.42.0.2", flags="DF", id=20)
               / TCP(sport=40000, dport=5201, flags="S", seq=1000, options=[("MSS", 1410)]))
    out.append(eth / IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x2A) / UDP(sport=1, dport=2) / Raw(b"six"))
    out.append(eth / IP(src="10.42.0.1", dst="10.42.0.2", flags="DF", id=30) / UDP(sport=9, dport=9)
               / Raw(b"m" * (1450 - 28)))
    return [raw(f) for f in out]


def canonical(frame, sport):
    """How RFC 7348 (§5) and RFC 6040 (normal mode) say a VTEP at 192.0.2.1 wraps `frame`."""
    tos, _ = wire.inner_tos(frame)
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
               / IP(src="192.0.2.1", dst="192.0.2.2", tos=wire.outer_tos(tos), flags="DF", ttl=64, id=0)
               / UDP(sport=sport, dport=4789, chksum=0) / VXLAN(flags=0x08, vni=42) / Raw(frame))


def socket_traffic(h1, h2):
    """A script for container c1: TCP SYNs and UDP datagrams from its own sockets, over IPv4 and
    IPv6, to c2 (whose MAC c1 knows: no ARP or ND in the recording)."""
    return f"""
import socket
for family, dst in ((socket.AF_INET, "{h2.container_ip}"), (socket.AF_INET6, "fd00::2")):
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.sendto(b"partial checksum " * 4, (dst, 9))
    t = socket.socket(family, socket.SOCK_STREAM)
    t.settimeout(0.2)
    try:
        t.connect((dst, 5201))
    except OSError:
        pass
    t.close()
"""


def is_test_traffic(frame, inner):
    """An injected frame, or one of socket_traffic()'s (TCP to 5201, UDP to 9)."""
    if frame in inner:
        return True
    p = Ether(frame)
    return (TCP in p and p[TCP].dport == 5201) or (UDP in p and p[UDP].dport == 9)


def record_kernel(inner):
    with Topology() as t:
        h1, h2 = t.hosts
        for h in (h1, h2):
            t.start_kernel_vxlan(h, "noudpcsum", "df", "set")
        # c1 gets an IPv6 address for socket_traffic() and knows c2's addresses (no ARP, no ND)
        sh("sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=0", ns=h1.container_ns)
        sh("ip", "-n", h1.container_ns, "addr", "add", "fd00::1/64", "dev", "eth0", "nodad")
        for address in (h2.container_ip, "fd00::2"):
            sh("ip", "-n", h1.container_ns, "neigh", "add", address, "lladdr", h2.container_mac, "dev", "eth0")
        time.sleep(2)                                   # let the interfaces' IGMP and MLD reports pass
        tap, underlay = (os.path.join(t.workdir, name) for name in ("tap.pcap", "underlay.pcap"))
        captures = [subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-m", "vxland", "capture",
                                      "--interface", interface, *extra, "-w", path, "--seconds", "4"])
                    for interface, extra, path in (("vx0", [], tap),
                                                   ("eth0", ["--port", "4789", "--as-received"], underlay))]
        time.sleep(1)
        script = ("import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0', 0))\n"
                  f"for f in {inner!r}:\n    s.send(f)\n")
        sh(sys.executable, "-c", script, ns=h1.container_ns)
        sh(sys.executable, "-c", socket_traffic(h1, h2), ns=h1.container_ns)
        for c in captures:
            c.wait()
        # keep what we sent: on vx0 the frames themselves, on the wire what carried them
        taps = [f for f in read_pcap(tap) if f[6:12] == wire.mac_to_bytes(C1) and is_test_traffic(f, inner)]
        wires = [f for f in read_pcap(underlay)
                 if f[26:30] == bytes([192, 0, 2, 1]) and f[56:62] == wire.mac_to_bytes(C1)
                 and is_test_traffic(f[50:], inner)]
    finished = []
    for w in wires:
        vh = offload.inner_offload(w[50:], 1500)
        finished.append(offload.finish_checksum(w[50:], vh) if vh is not None else w[50:])
    partial = sum(offload.inner_offload(w[50:], 1500) is not None for w in wires)
    assert taps[:len(inner)] == inner and finished == taps, "the kernel did not carry exactly the frames"
    assert partial >= 4, f"only {partial} frames kept the partial form: is the underlay's tx offload off?"
    wrpcap(os.path.join(HERE, "kernel-tap.pcap"), [Ether(f) for f in taps])
    wrpcap(os.path.join(HERE, "kernel-underlay.pcap"), [Ether(w) for w in wires])
    return partial


def main():
    inner = frames()
    partial = record_kernel(inner)
    wrpcap(os.path.join(HERE, "scapy-tap.pcap"), [Ether(f) for f in inner])
    wrpcap(os.path.join(HERE, "scapy-underlay.pcap"),
           [Ether(canonical(f, 49152 + i)) for i, f in enumerate(inner)])
    print("recorded", len(inner), "injected frames and", partial, "from sockets, checksums partial, into", HERE)


if __name__ == "__main__":
    main()
