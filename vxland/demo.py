"""`vxland demo`: two hosts in network namespaces, a container on each, joined by vxland.

Builds the topology of vxland.topology, starts one vxland per host (VNI 42,
each flooding to the other), then shows the containers talking: ping and
iperf3 TCP both ways, and what each VTEP learned.  With engine="podman" the
containers are Podman's instead of bare namespaces, attached by vxland's CNI
plugin with addresses from one subnet, a range per host.  Everything is
removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import json
import re
import shutil
import time

from .errors import VxlandError
from .topology import TopologyError, Topology


def _rtt(ping_output: str) -> str:
    m = re.search(r"= [\d.]+/([\d.]+)/", ping_output)
    return f"{float(m.group(1)) * 1000:.0f} µs avg" if m else "no reply"


def _loss(ping_output: str) -> str:
    m = re.search(r"([\d.]+)% packet loss", ping_output)
    return f"{m.group(1)}% lost" if m else "?"


def demo(seconds: int = 3, datapath: str = "native", engine: str | None = None) -> int:
    if engine == "podman":
        return demo_podman(seconds, datapath)
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


def demo_podman(seconds: int, datapath: str) -> int:
    from .containers import EngineError, Podman
    print("vxland demo: two hosts (network namespaces) on an underlay 192.0.2.0/24, vxland on VNI 42")
    print("on each, and a Podman container on each, attached by vxland's CNI plugin: addresses from")
    print("10.42.0.0/24, host 1 from .100-.149 and host 2 from .150-.199 (host-local IPAM).\n")
    ranges = [("10.42.0.100", "10.42.0.149"), ("10.42.0.150", "10.42.0.199")]
    ok = True
    try:
        with Topology() as t:
            engines: list[Podman] = []
            try:                                     # the containers go before the namespaces
                ok = _podman_traffic(t, engines, ranges, seconds, datapath)
            finally:
                for engine in engines:
                    engine.close()
    except (TopologyError, EngineError) as e:
        raise VxlandError(f"demo failed: {e}") from None
    print("\ncontainers, stores and namespaces removed." + ("" if ok else "  Some traffic did not get through."))
    return 0 if ok else 1


def _podman_traffic(t: Topology, engines: list, ranges: list[tuple[str, str]], seconds: int, datapath: str) -> bool:
    from .containers import Podman, build_image_tar
    ok = True
    image = build_image_tar(t.workdir)
    containers = []
    for host, ip_range in zip(t.hosts, ranges):
        t.start_vxland(host, datapath=datapath)
        engine = Podman(host.ns)
        engines.append(engine)
        engine.load(image)
        engine.add_cni_network("vxnet", vni=42, control=host.control, subnet="10.42.0.0/24", ip_range=ip_range)
        cid = engine.run("vxnet", "sleep", "3600")
        address = engine.address(cid, "vxnet")
        containers.append((engine, cid, address))
        print(f"  {host.ns}: vxland on {host.underlay_ip}; podman run --network vxnet -> "
              f"container {cid[:12]} at {address}")
    print()
    pairs = (containers, containers[::-1])
    for (e1, c1, a1), (_, _, a2) in pairs:
        out = e1.exec(c1, "ping", "-c", "5", "-i", "0.2", "-W", "2", a2)
        ok &= " 0% packet loss" in out
        print(f"ping {a1} -> {a2}: {_loss(out)}, rtt {_rtt(out)}")
    for (e1, c1, a1), (e2, c2, a2) in pairs:
        e2.exec(c2, "iperf3", "-s", "-D", "-1", "-B", a2)
        report: dict = {}
        for _ in range(20):                          # until the server listens
            report = json.loads(e1.exec(c1, "iperf3", "-c", a2, "-t", str(seconds), "-J", timeout=seconds + 60))
            if "error" not in report:
                break
            time.sleep(0.1)
        gbps = report.get("end", {}).get("sum_received", {}).get("bits_per_second", 0) / 1e9
        ok &= gbps > 0
        print(f"iperf3 TCP {a1} -> {a2}: {gbps:.2f} Gbit/s over {seconds} s")
    for host in t.hosts:
        print(f"\n$ vxland fdb show    # on {host.ns}: its container static, the other learned")
        print(host.vxland("fdb", "show").stdout.rstrip())
    return ok
