"""Soak: vxland carrying iperf3 TCP and UDP for a long time, its memory and fds recorded.

Two hosts in network namespaces (vxland.topology), vxland on both, then for the given number
of minutes, in turn: 20 s of iperf3 TCP one way, 20 s the other way, 20 s of UDP (1200-byte
datagrams at 200 Mbit/s) -- while every few seconds each daemon's RSS, open fds, FDB size and
drop counters are sampled.  Writes a JSON record and prints a summary: the first and last
RSS, the peak, and the growth over the second half (flat is the goal).  Needs root.

    .venv/bin/python scripts/soak.py [--minutes 30] [--interval 5] [--out build/soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vxland.topology import Topology  # noqa: E402


def sample(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in f if ":" in line}
    return {"rss_kib": int(fields["VmRSS"][0]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--out", default="build/soak.json")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    samples: list[dict] = []
    traffic = {"tcp_gbytes": 0.0, "udp_packets": 0, "udp_lost": 0, "runs": 0, "failures": 0}
    with Topology() as t:
        h1, h2 = t.hosts
        for h in (h1, h2):
            t.start_vxland(h)
        pids = {"h1": h1.process.pid, "h2": h2.process.pid}
        start = time.monotonic()
        end = start + args.minutes * 60
        done = threading.Event()

        def sampler() -> None:
            while not done.is_set():
                row = {"t": round(time.monotonic() - start, 1)}
                for name, pid in pids.items():
                    row[name] = sample(pid)
                host = h1.vxland_json("stats")
                row["h1"]["fdb"] = sum(v["fdb_entries"] for v in host["vnis"])
                row["h1"]["drops"] = sum(host["drops"].values())
                row["h1"]["gso_sockets"] = host["offloads"]["udp_gso_sockets"]
                samples.append(row)
                done.wait(args.interval)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        try:
            step = 0
            while time.monotonic() < end:
                kind = step % 3
                try:
                    if kind < 2:
                        src, dst = (h1, h2) if kind == 0 else (h2, h1)
                        r = t.iperf3(src, dst, 20)
                        traffic["tcp_gbytes"] += r["end"]["sum_received"]["bytes"] / 1e9
                    else:
                        s = t.iperf3(h1, h2, 20, "-u", "-b", "200M", "-l", "1200")["end"]["sum"]
                        traffic["udp_packets"] += s["packets"]
                        traffic["udp_lost"] += s["lost_packets"]
                    traffic["runs"] += 1
                except Exception as e:             # a failed run is recorded, and the soak goes on
                    traffic["failures"] += 1
                    print(f"soak: run {step} failed: {e}", file=sys.stderr)
                step += 1
        finally:
            done.set()
            thread.join()
        alive = {name: h.process.poll() is None for name, h in (("h1", h1), ("h2", h2))}
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
    summary = {}
    for name in pids:
        rss = [s[name]["rss_kib"] for s in samples]
        second = [s[name]["rss_kib"] for s in half]
        fds = [s[name]["fds"] for s in samples]
        summary[name] = {"rss_first_mib": rss[0] / 1024, "rss_last_mib": rss[-1] / 1024,
                         "rss_peak_mib": max(rss) / 1024,
                         "rss_growth_second_half_mib": (second[-1] - second[0]) / 1024,
                         "fds_first": fds[0], "fds_last": fds[-1], "fds_peak": max(fds), "alive": alive[name]}
    report = {"minutes": args.minutes, "traffic": traffic, "summary": summary, "samples": samples}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({"minutes": args.minutes, "traffic": traffic, "summary": summary}, indent=1))
    return 0 if all(alive.values()) and traffic["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
