"""The benchmark: vxland against the kernel's VXLAN and the userspace L2 tunnels a user
could pick instead, in one run.

Each mode gets a fresh two-host topology (vxland.topology), its underlay at a veth's
default offloads, with the same tunnel on both hosts:

  kernel       the kernel's VXLAN (the yardstick: every figure is also a ratio to it)
  native       vxland, C fast path, its own data-path threads and queues (the defaults)
  native-1t    the same with one data-path thread serving every queue (--datapath-threads 1)
  native-1q    one thread, one queue per TAP and one underlay socket (--queues 1: the path
               before multi-queue; no flow isolation)
  native-loop  vxland, C fast path, the event loop waking for each fd (--no-datapath-thread)
  mixed        vxland on host 1, the kernel's VXLAN on host 2 (interoperation)
  reference    vxland, pure-Python data path
  ovs tinc fastd openvpn   the peers (bench/peers.py: how each is set up, crypto off)

and measures:

  tcp      iperf3 TCP, one stream, container 1 -> container 2, and back; and 4 streams (-P 4)
  udp64    iperf3 UDP, 64-byte payloads: unlimited rate (what each path's sender manages),
           and at the rate the kernel delivered in the same round (the same offered load):
           packets/s delivered and loss
  rtt      ping every 5 ms, idle and while the TCP test runs (and, for vxland, idle while
           its Prometheus endpoint is scraped ten times a second)
  cpu      the tunnel daemons' CPU time (all threads, user + system, from schedstat): per
           idle ping (both daemons, one round trip), and per GB carried in the TCP test
  rss      the largest daemon's resident set

Modes run interleaved, `--rounds` times (kernel first in each round); the report holds
every round and, as its figures, the median of each.  Each tunnel is checked to carry a
ping before it is measured.  Writes latest.json and latest.png into bench/results/ (or
--out).  Needs root, and the peers' packages (`scripts/install.sh --bench`).

    .venv/bin/python bench/run.py [--seconds 5] [--rounds 3] [--modes kernel,native,...] [--out DIR]

The README's figures are a run published with --out bench/published.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench import peers  # noqa: E402
from vxland.topology import Host, Topology, TopologyError, sh  # noqa: E402

VXLAND = ("native", "native-1t", "native-1q", "native-loop", "mixed", "reference")
#: vxland's flags per mode
FLAGS = {"native-loop": ["--no-datapath-thread"], "native-1t": ["--datapath-threads", "1"],
         "native-1q": ["--queues", "1", "--datapath-threads", "1"]}
MODES = ("kernel", *VXLAND, *peers.PEERS)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PING_INTERVAL = 0.005


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of pid, user and system, in ns resolution (schedstat)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass                                           # a thread that just ended
    return total / 1e9


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def ping_stats(output: str) -> dict:
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", output)
    loss = re.search(r"([\d.]+)% packet loss", output)
    sent = re.search(r"(\d+) packets transmitted", output)
    if not m:
        return {"avg_us": None, "max_us": None, "loss_percent": float(loss.group(1)) if loss else 100.0,
                "count": int(sent.group(1)) if sent else 0}
    return {"avg_us": float(m.group(2)) * 1000, "max_us": float(m.group(3)) * 1000,
            "loss_percent": float(loss.group(1)), "count": int(sent.group(1))}


def ping(t: Topology, src: Host, dst: Host, seconds: float) -> dict:
    count = int(seconds / PING_INTERVAL)
    r = sh("ping", "-q", "-c", str(count), "-i", str(PING_INTERVAL), "-W", "1", dst.container_ip,
           ns=src.container_ns, check=False, timeout=seconds + 30)
    return ping_stats(r.stdout)


SCRAPER = """
import socket, time
while True:
    s = socket.create_connection(("127.0.0.1", 9475), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: bench\\r\\n\\r\\n")
    while s.recv(65536):
        pass
    s.close()
    time.sleep(0.1)
"""


def rtt_while_scraping(t: Topology, h1: Host, h2: Host, seconds: float) -> dict:
    scraper = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-c", SCRAPER])
    try:
        time.sleep(0.3)
        return ping(t, h1, h2, seconds)
    finally:
        scraper.kill()
        scraper.wait()


def udp64(t: Topology, h1: Host, h2: Host, seconds: float, rate_pps: float | None = None) -> dict:
    bitrate = str(int(rate_pps * 64 * 8)) if rate_pps else "0"
    s = t.iperf3(h1, h2, seconds, "-u", "-l", "64", "-b", bitrate)["end"]["sum"]
    return {"offered_kpps": s["packets"] / s["seconds"] / 1e3,
            "delivered_kpps": (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3,
            "loss_percent": s["lost_percent"]}


def start_tunnels(t: Topology, mode: str) -> list[subprocess.Popen]:
    """The mode's tunnel on both hosts; the daemons to measure (none for the kernel)."""
    h1, h2 = t.hosts
    if mode in peers.PEERS:
        procs: list[subprocess.Popen] = []
        try:
            for h in (h1, h2):
                procs += peers.START[mode](t, h)
        except BaseException:
            peers.stop(procs)
            raise
        return procs
    for h in (h1, h2):
        if mode == "kernel" or (mode == "mixed" and h is h2):
            t.start_kernel_vxlan(h)
        else:
            t.start_vxland(h, *(["--metrics", "127.0.0.1:9475"] if h is h1 else []),
                           *FLAGS.get(mode, []),
                           datapath="reference" if mode == "reference" else "native")
    return [h.process for h in (h1, h2) if h.process]


def measure(mode: str, seconds: float, kernel_udp_kpps: float | None) -> dict:
    with Topology() as t:
        h1, h2 = t.hosts
        daemons = start_tunnels(t, mode)
        try:
            return measure_in(t, mode, daemons, seconds, kernel_udp_kpps)
        finally:
            if mode in peers.PEERS:
                peers.stop(daemons)


def measure_in(t: Topology, mode: str, daemons: list[subprocess.Popen], seconds: float,
               kernel_udp_kpps: float | None) -> dict:
    h1, h2 = t.hosts
    pids = [p.pid for p in daemons]
    # checked to carry traffic before it is measured (and every table learned both ways)
    for _ in range(20):
        if t.ping(h1, h2, count=3, interval=0.1).returncode == 0:
            break
        time.sleep(0.5)
    else:
        raise TopologyError(f"{mode}: the containers cannot ping each other")
    out: dict = {"mode": mode}
    cpu0 = sum(cpu_seconds(p) for p in pids)
    out["rtt_idle"] = ping(t, h1, h2, 2.0)
    cpu1 = sum(cpu_seconds(p) for p in pids)
    pings = out["rtt_idle"]["count"]
    out["cpu_us_per_ping"] = (cpu1 - cpu0) / pings * 1e6 if pids and pings else None
    if mode in VXLAND:
        out["rtt_idle_scraped"] = rtt_while_scraping(t, h1, h2, 2.0)

    cpu0 = sum(cpu_seconds(p) for p in pids)
    under_load: dict = {}
    pinger = threading.Thread(target=lambda: under_load.update(ping(t, h1, h2, seconds - 1)))
    timer = threading.Timer(0.5, pinger.start)
    timer.start()
    tcp = t.iperf3(h1, h2, seconds)
    timer.join()
    pinger.join()
    cpu1 = sum(cpu_seconds(p) for p in pids)
    if "end" not in tcp:
        raise TopologyError(f"{mode}: iperf3 TCP failed: {tcp.get('error')}")
    received = tcp["end"]["sum_received"]
    out["tcp_gbps"] = received["bits_per_second"] / 1e9
    out["tcp_retransmits"] = tcp["end"]["sum_sent"].get("retransmits")
    out["rtt_load"] = under_load
    out["tcp_reverse_gbps"] = t.iperf3(h2, h1, seconds)["end"]["sum_received"]["bits_per_second"] / 1e9
    out["tcp4_gbps"] = t.iperf3(h1, h2, seconds, "-P", "4")["end"]["sum_received"]["bits_per_second"] / 1e9
    gb = received["bytes"] / 1e9
    out["cpu_s_per_gb"] = (cpu1 - cpu0) / gb if pids and gb else None
    out["rss_mib"] = max(rss_mib(p) for p in pids) if pids else None

    out["udp64"] = udp64(t, h1, h2, seconds)
    if kernel_udp_kpps:
        out["udp64_at_kernel_rate"] = udp64(t, h1, h2, seconds, kernel_udp_kpps * 1e3)
    if mode in VXLAND:
        out["drops"] = {h.ns.rsplit("-", 1)[1]: {k: v for k, v in h.vxland_json("stats")["drops"].items() if v}
                        for h in (h1, h2) if h.process}
    return out


def median(rounds: list):
    """The median of each number across rounds, keeping the shape (dicts, None)."""
    first = rounds[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(r, dict) and k in r for r in rounds)]
        return {k: median([r[k] for r in rounds]) for k in keys}
    numbers = [r for r in rounds if isinstance(r, (int, float)) and not isinstance(r, bool)]
    if numbers and len(numbers) == len(rounds):
        return statistics.median(numbers)
    return first


def spread(rounds: list[dict], key: str) -> list[float]:
    return [r[key] for r in rounds if r.get(key) is not None]


def ratios(results: dict) -> dict:
    kernel = results.get("kernel")
    if not kernel:
        return {}
    r = {}
    for mode, m in results.items():
        if mode == "kernel":
            continue
        at_rate = m.get("udp64_at_kernel_rate", m["udp64"])
        r[mode] = {
            "tcp": m["tcp_gbps"] / kernel["tcp_gbps"],
            "tcp_reverse": m["tcp_reverse_gbps"] / kernel["tcp_reverse_gbps"],
            "tcp4": m["tcp4_gbps"] / kernel["tcp4_gbps"],
            "udp64_delivered": at_rate["delivered_kpps"] / kernel["udp64"]["delivered_kpps"],
            "udp64_loss_percent": at_rate["loss_percent"],
            "rtt_idle": (m["rtt_idle"]["avg_us"] or float("inf")) / kernel["rtt_idle"]["avg_us"],
            "rtt_load": (m["rtt_load"].get("avg_us") or float("inf")) / (kernel["rtt_load"].get("avg_us") or 1),
        }
    return r


def machine() -> dict:
    return {"kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu_model": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                               if line.startswith("model name")), "?"),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


COLORS = {"kernel": "#888888", "native": "#1f77b4", "native-1t": "#3a8fd0", "native-1q": "#6baed6",
          "native-loop": "#9ecae1", "mixed": "#2ca02c",
          "reference": "#ff7f0e", "ovs": "#8c564b", "tinc": "#9467bd", "fastd": "#e377c2", "openvpn": "#bcbd22"}


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    modes = [m for m in MODES if m in res]
    # (title, value, label format, log scale)
    panels = [("TCP, one stream, 1 → 2 (bar) and 2 → 1 (Gbit/s)", lambda m: m["tcp_gbps"], "{:.2f}", False),
              ("UDP 64 B delivered at the kernel's rate (kpps)",
               lambda m: m.get("udp64_at_kernel_rate", m["udp64"])["delivered_kpps"], "{:.0f}", False),
              ("ping RTT: idle (bar), under TCP load (—) (µs, log)",
               lambda m: m["rtt_idle"]["avg_us"] or 0, "{:.0f}", True),
              ("tunnel daemons' CPU per GB carried (s, log)", lambda m: m["cpu_s_per_gb"] or 0, "{:.2f}", True)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)))
    for ax, (title, value, fmt, log) in zip(axes, panels):
        values = [value(res[m]) for m in modes]
        bars = ax.bar(modes, values, color=[COLORS[m] for m in modes])
        if log:
            ax.set_yscale("log")
        if title.startswith("TCP"):
            ax.scatter(modes, [res[m]["tcp_reverse_gbps"] for m in modes], marker="_", s=900,
                       color="black", zorder=3, label="2 → 1")
            ax.legend(fontsize=7, loc="upper right")
        if title.startswith("ping"):
            ax.scatter(modes, [res[m]["rtt_load"].get("avg_us") or 0 for m in modes], marker="_", s=900,
                       color="black", zorder=3, label="under TCP load")
            ax.legend(fontsize=7, loc="upper right")
        for bar, v, m in zip(bars, values, modes):
            label = fmt.format(v) if v else "n/a"
            if m != "kernel" and "kernel" in res and value(res["kernel"]):
                label += f"\n{v / value(res['kernel']):.2f}×"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.35)
    mach = report["machine"]
    fig.suptitle(f"vxland vs the kernel's VXLAN and userspace L2 tunnels — medians of {report['rounds']} "
                 f"interleaved rounds\n{mach['cpus']} cores, Linux {mach['kernel']}, {mach['date']}; "
                 "× = ratio to the kernel", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def summary(mode: str, m: dict) -> str:
    line = (f"   TCP {m['tcp_gbps']:.2f} Gbit/s, back {m['tcp_reverse_gbps']:.2f}, 4 streams {m['tcp4_gbps']:.2f}; "
            f"UDP 64 B unlimited: "
            f"{m['udp64']['offered_kpps']:.0f} kpps offered, {m['udp64']['delivered_kpps']:.0f} delivered")
    if "udp64_at_kernel_rate" in m:
        u = m["udp64_at_kernel_rate"]
        line += f"; at the kernel's rate: {u['delivered_kpps']:.0f} delivered, {u['loss_percent']:.2f} % lost"
    cpu = f"{m['cpu_s_per_gb']:.2f} s" if m.get("cpu_s_per_gb") is not None else "n/a"
    per_ping = f"{m['cpu_us_per_ping']:.0f} µs" if m.get("cpu_us_per_ping") is not None else "n/a"
    scraped = m.get("rtt_idle_scraped", {}).get("avg_us")
    return (line + f"; RTT idle {m['rtt_idle']['avg_us']} µs"
            + (f" ({scraped} µs while scraped)" if scraped else "")
            + f", under load {m['rtt_load'].get('avg_us')} µs; CPU per idle ping {per_ping}, per GB {cpu}; "
            f"RSS {m['rss_mib']} MiB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each iperf3 test (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians (default 3)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--out", default=RESULTS, help="directory for latest.json and latest.png")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        p.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.seconds < 2:
        p.error("--rounds must be at least 1 and --seconds at least 2")
    if os.geteuid() != 0:
        print("bench: needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    rounds: dict[str, list[dict]] = {m: [] for m in modes}
    # the kernel first in each round: its delivered UDP rate is the offered load for the others
    order = sorted(modes, key=lambda m: m != "kernel")
    for n in range(args.rounds):
        kernel_rate = None
        for mode in order:
            print(f"== round {n + 1}/{args.rounds}: {mode}", flush=True)
            m = measure(mode, args.seconds, kernel_rate)
            if mode == "kernel":
                kernel_rate = m["udp64"]["delivered_kpps"]
            rounds[mode].append(m)
            print(summary(mode, m), flush=True)
    results = {mode: median(rs) for mode, rs in rounds.items()}
    report = {"machine": machine(), "seconds": args.seconds, "rounds": args.rounds, "results": results,
              "ratios": ratios(results), "every_round": rounds}
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(report, os.path.join(args.out, "latest.png"))
    print(f"medians of {args.rounds} rounds:")
    for mode, m in results.items():
        tcp = spread(rounds[mode], "tcp_gbps")
        print(f"{mode:>11}: {summary(mode, m).strip()}; TCP range {min(tcp):.2f}–{max(tcp):.2f}")
    for mode, r in report["ratios"].items():
        print(f"{mode:>11} / kernel: TCP {r['tcp']:.2f}× (back {r['tcp_reverse']:.2f}×, 4 streams {r['tcp4']:.2f}×), "
              f"UDP 64 B delivered "
              f"{r['udp64_delivered']:.2f}× ({r['udp64_loss_percent']:.2f} % lost), RTT idle {r['rtt_idle']:.1f}×, "
              f"under load {r['rtt_load']:.1f}×")
    print(f"wrote {args.out}/latest.json and latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
