"""The benchmark: vxland's fast path, vxland's reference path and the kernel's VXLAN, in one run.

Each mode gets a fresh two-host topology (vxland.topology), its underlay at a veth's
default offloads, with the same VTEP on both hosts -- or, in mode "mixed", vxland on
host 1 and the kernel's VXLAN on host 2 (interoperation) -- then:

  tcp      iperf3 TCP, one stream, container 1 -> container 2, and back
  udp64    iperf3 UDP, 64-byte payloads: unlimited rate (what each path's sender manages),
           and, for vxland, at the rate the kernel delivered (the same offered load):
           packets/s delivered and loss
  rtt      ping at 2 ms intervals, idle and while the TCP test runs (and, for vxland, idle
           while its Prometheus endpoint is scraped ten times a second)
  cpu      the two daemons' CPU seconds (user + system) per GB carried in the TCP test
  rss      the larger of the two daemons' resident set

and reports each figure as a ratio to the kernel's, measured in the same run.
Writes latest.json and latest.png into bench/results/ (or --out).  Needs root.

    .venv/bin/python bench/run.py [--seconds 5] [--modes native,reference,kernel,mixed] [--out DIR]

The README's figures are a run published with --out bench/published.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vxland.topology import Host, Topology, sh  # noqa: E402

MODES = ("native", "reference", "kernel", "mixed")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK      # utime + stime


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def ping_stats(output: str) -> dict:
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", output)
    loss = re.search(r"([\d.]+)% packet loss", output)
    if not m:
        return {"avg_us": None, "max_us": None, "loss_percent": float(loss.group(1)) if loss else 100.0}
    return {"avg_us": float(m.group(2)) * 1000, "max_us": float(m.group(3)) * 1000,
            "loss_percent": float(loss.group(1))}


def ping(t: Topology, src: Host, dst: Host, seconds: float) -> dict:
    count = int(seconds / 0.002)
    r = sh("ping", "-q", "-c", str(count), "-i", "0.002", "-W", "1", dst.container_ip,
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


def measure(mode: str, seconds: float, kernel_udp_kpps: float | None) -> dict:
    with Topology() as t:
        h1, h2 = t.hosts
        for h in (h1, h2):
            if mode == "kernel" or (mode == "mixed" and h is h2):
                t.start_kernel_vxlan(h)
            else:
                t.start_vxland(h, *(["--metrics", "127.0.0.1:9475"] if h is h1 else []),
                               datapath="native" if mode == "mixed" else mode)
        t.ping(h1, h2, count=3, interval=0.1)                       # learn both ways
        pids = [h.process.pid for h in (h1, h2) if h.process]
        out: dict = {"mode": mode}
        out["rtt_idle"] = ping(t, h1, h2, 1.0)
        if pids:
            out["rtt_idle_scraped"] = rtt_while_scraping(t, h1, h2, 1.0)

        cpu0 = sum(cpu_seconds(p) for p in pids)
        under_load: dict = {}
        pinger = threading.Thread(target=lambda: under_load.update(ping(t, h1, h2, seconds - 1)))
        timer = threading.Timer(0.5, pinger.start)
        timer.start()
        tcp = t.iperf3(h1, h2, seconds)
        timer.join()
        pinger.join()
        cpu1 = sum(cpu_seconds(p) for p in pids)
        received = tcp["end"]["sum_received"]
        out["tcp_gbps"] = received["bits_per_second"] / 1e9
        out["tcp_retransmits"] = tcp["end"]["sum_sent"].get("retransmits")
        out["rtt_load"] = under_load
        out["tcp_reverse_gbps"] = t.iperf3(h2, h1, seconds)["end"]["sum_received"]["bits_per_second"] / 1e9
        gb = received["bytes"] / 1e9
        out["cpu_s_per_gb"] = (cpu1 - cpu0) / gb if pids and gb else None
        out["rss_mib"] = max(rss_mib(p) for p in pids) if pids else None

        out["udp64"] = udp64(t, h1, h2, seconds)
        if kernel_udp_kpps:
            out["udp64_at_kernel_rate"] = udp64(t, h1, h2, seconds, kernel_udp_kpps * 1e3)
        if pids:
            out["drops"] = {h.ns.rsplit("-", 1)[1]: {k: v for k, v in h.vxland_json("stats")["drops"].items() if v}
                            for h in (h1, h2) if h.process}
        return out


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


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    modes = [m for m in ("kernel", "native", "mixed", "reference") if m in res]
    colors = {"kernel": "#888888", "native": "#1f77b4", "mixed": "#2ca02c", "reference": "#ff7f0e"}
    # (title, value, label format, log scale)
    panels = [("TCP, one stream, 1 → 2 (bar) and 2 → 1 (Gbit/s)", lambda m: m["tcp_gbps"], "{:.2f}", False),
              ("UDP 64 B delivered at the kernel's rate (kpps)",
               lambda m: m.get("udp64_at_kernel_rate", m["udp64"])["delivered_kpps"], "{:.0f}", False),
              ("ping RTT idle / under TCP load (µs, log)", lambda m: m["rtt_load"].get("avg_us") or 0, "{:.0f}", True),
              ("daemons' CPU per GB carried (s, log)", lambda m: m["cpu_s_per_gb"] or 0, "{:.2f}", True)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8))
    for ax, (title, value, fmt, log) in zip(axes, panels):
        values = [value(res[m]) for m in modes]
        bars = ax.bar(modes, values, color=[colors[m] for m in modes])
        if log:
            ax.set_yscale("log")
        if title.startswith("TCP"):
            ax.scatter(modes, [res[m]["tcp_reverse_gbps"] for m in modes], marker="_", s=900,
                       color="black", zorder=3, label="2 → 1")
            ax.legend(fontsize=7, loc="upper left")
        if title.startswith("ping"):
            ax.scatter(modes, [res[m]["rtt_idle"]["avg_us"] or 0 for m in modes], marker="_", s=900,
                       color="black", zorder=3, label="idle")
            ax.legend(fontsize=7, loc="upper left")
        for bar, v, m in zip(bars, values, modes):
            label = fmt.format(v) if v else "n/a"
            if m != "kernel" and "kernel" in res and value(res["kernel"]):
                label += f"\n{v / value(res['kernel']):.2f}×"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.3)
    mach = report["machine"]
    fig.suptitle(f"vxland vs the kernel's VXLAN (mixed: vxland on host 1, the kernel on host 2) — "
                 f"{mach['cpus']} cores, Linux {mach['kernel']}, {mach['date']}; × = ratio to the kernel", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each iperf3 test (default 5)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--out", default=RESULTS, help="directory for latest.json and latest.png")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        p.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("bench: needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    results = {}
    # the kernel first: its delivered UDP rate is the offered load for the others
    for mode in sorted(modes, key=lambda m: m != "kernel"):
        print(f"== {mode}", flush=True)
        kernel_rate = results["kernel"]["udp64"]["delivered_kpps"] if "kernel" in results else None
        results[mode] = m = measure(mode, args.seconds, kernel_rate)
        line = (f"   TCP {m['tcp_gbps']:.2f} Gbit/s, back {m['tcp_reverse_gbps']:.2f}; UDP 64 B unlimited: {m['udp64']['offered_kpps']:.0f} kpps "
                f"offered, {m['udp64']['delivered_kpps']:.0f} delivered")
        if "udp64_at_kernel_rate" in m:
            u = m["udp64_at_kernel_rate"]
            line += f"; at the kernel's rate: {u['delivered_kpps']:.0f} delivered, {u['loss_percent']:.2f} % lost"
        cpu = f"{m['cpu_s_per_gb']:.2f} s" if m["cpu_s_per_gb"] is not None else "n/a"
        scraped = m.get("rtt_idle_scraped", {}).get("avg_us")
        print(line + f"; RTT idle {m['rtt_idle']['avg_us']} µs ({scraped} µs while scraped), under load "
              f"{m['rtt_load'].get('avg_us')} µs; "
              f"CPU per GB {cpu}; RSS {m['rss_mib']} MiB", flush=True)
    report = {"machine": machine(), "seconds": args.seconds, "results": results, "ratios": ratios(results)}
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(report, os.path.join(args.out, "latest.png"))
    for mode, r in report["ratios"].items():
        print(f"{mode:>9} / kernel: TCP {r['tcp']:.2f}× (back {r['tcp_reverse']:.2f}×), UDP 64 B delivered {r['udp64_delivered']:.2f}× "
              f"({r['udp64_loss_percent']:.2f} % lost), RTT idle {r['rtt_idle']:.1f}×, under load {r['rtt_load']:.1f}×")
    print(f"wrote {args.out}/latest.json and latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
