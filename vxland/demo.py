"""`vxland demo`: two hosts in network namespaces, a container on each, joined by vxland.

Builds the topology of vxland.topology, starts one vxland per host (VNI 42,
each flooding to the other), then shows the containers talking: ping and
iperf3 TCP both ways, and what each VTEP learned.  Everything is removed at
the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import re
import shutil

from .errors import VxlandError
from .topology import TopologyError, Topology


def _rtt(ping_output: str) -> str:
    m = re.search(r"= [\d.]+/([\d.]+)/", ping_output)
    return f"{float(m.group(1)) * 1000:.0f} µs avg" if m else "no reply"


def _loss(ping_output: str) -> str:
    m = re.search(r"([\d.]+)% packet loss", ping_output)
    return f"{m.group(1)}% lost" if m else "?"


def demo(seconds: int = 3, datapath: str = "native") -> int:
    for tool in ("ip", "bridge", "ping", "iperf3"):
        if shutil.which(tool) is None:
            raise VxlandError(f"the demo needs {tool}: apt-get install iproute2 iputils-ping iperf3")
    print("vxland demo: two hosts (network namespaces) on an underlay 192.0.2.0/24,")
    print("a bridge and a container on each, joined by vxland on VNI 42.\n")
    ok = True
    try:
        with Topology() as t:
            h1, h2 = t.hosts
            for h in (h1, h2):
                t.start_vxland(h, datapath=datapath)
                print(f"  {h.ns}: vxland on {h.underlay_ip}, container {h.container_ns} "
                      f"{h.container_ip} ({h.container_mac})")
            print()
            for src, dst in ((h1, h2), (h2, h1)):
                r = t.ping(src, dst, count=5)
                ok &= r.returncode == 0
                print(f"ping {src.container_ip} -> {dst.container_ip}: {_loss(r.stdout)}, rtt {_rtt(r.stdout)}")
            for src, dst in ((h1, h2), (h2, h1)):
                res = t.iperf3(src, dst, seconds)
                gbps = res["end"]["sum_received"]["bits_per_second"] / 1e9
                ok &= gbps > 0
                print(f"iperf3 TCP {src.container_ip} -> {dst.container_ip}: {gbps:.2f} Gbit/s over {seconds} s")
            for h in (h1, h2):
                print(f"\n$ vxland fdb show    # on {h.ns}")
                print(h.vxland("fdb", "show").stdout.rstrip())
            print(f"\n$ vxland stats    # on {h1.ns}")
            print(h1.vxland("stats").stdout.rstrip())
    except TopologyError as e:
        raise VxlandError(f"demo failed: {e}") from None
    print("\nnamespaces removed." + ("" if ok else "  Some traffic did not get through: see above."))
    return 0 if ok else 1
