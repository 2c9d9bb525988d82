"""Prometheus metrics: the families built from `stats`, parsed back with prometheus_client's
own parser; and a running daemon's endpoint, scraped in its network namespace."""

import json
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vxland.metrics import families, parse_address
from vxland.errors import VxlandError


def samples(text):
    """{(name, frozenset(labels)): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_the_families_say_what_stats_says():
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from test_control import in_memory_daemon
    daemon = in_memory_daemon()
    daemon.dispatch("fdb.add", {"mac": "02:00:00:00:00:01", "vni": 42, "vtep": "192.0.2.9"})
    stats = daemon._stats()

    class Collector:
        def collect(self):
            return families(stats, 1700000000.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    got = samples(generate_latest(registry).decode())
    assert got[("vxland_build_info", frozenset({("version", "0.1.0"), ("datapath", "reference")}))] == 1
    assert got[("vxland_start_time_seconds", frozenset())] == 1700000000.0
    assert got[("vxland_fdb_entries", frozenset({("vni", "42"), ("kind", "static")}))] == 1
    assert got[("vxland_fdb_entries", frozenset({("vni", "42"), ("kind", "learned")}))] == 0
    assert got[("vxland_flood_list_remotes", frozenset({("vni", "42")}))] == 1
    for name in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "checksums_completed", "learn_refused"):
        assert (f"vxland_{name}_total", frozenset({("vni", "42")})) in got
    reasons = {dict(labels)["reason"] for name, labels in got if name == "vxland_drops_total"}
    assert {"unknown_vni", "too_big", "untrusted_vtep", "tap_overflow", "underlay_overflow"} <= reasons
    assert ("vxland_drops_total", frozenset({("vni", ""), ("reason", "unknown_vni")})) in got
    assert got[("vxland_offload_enabled", frozenset({("offload", "udp_gso")}))] == 0
    assert ("vxland_reloads_total", frozenset({("result", "refused")})) in got


def test_every_figure_of_a_network_that_stats_gives_is_a_metric():
    """An operator alerts on what the metrics carry: suppression, ICMP answers, neighbours,
    refusals and conflicts were in `stats` only."""
    from test_control import in_memory_daemon
    from vxland.metrics import PER_VNI
    figures = set(in_memory_daemon()._stats()["vnis"][0])
    elsewhere = {"vni", "tap", "drops", "fdb_entries", "fdb_learned", "fdb_evpn", "flood_list"}
    assert figures - elsewhere == set(PER_VNI)


@pytest.mark.parametrize("text,address", [("127.0.0.1:9475", ("127.0.0.1", 9475)), ("[::1]:80", ("::1", 80)),
                                          (":9", ("0.0.0.0", 9))])
def test_addresses(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["9475", "host:0", "a:b", "127.0.0.1:70000", ""])
def test_bad_addresses_are_one_line(text):
    with pytest.raises(VxlandError, match="want ADDR:PORT"):
        parse_address(text)


SCRAPE = """
import socket, sys, time
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)
s.sendall(b'GET ' + sys.argv[2].encode() + b' HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')
data = b''
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.buffer.write(data)
"""


def scrape(ns, port, path="/metrics"):
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRAPE, str(port), path],
                         capture_output=True, timeout=30, check=True).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    assert "version=0.0.4" in head or not head.startswith("HTTP/1.1 200")
    return head.split("\r\n")[0], body


@pytest.mark.netns
def test_a_running_daemon_is_scraped(two_hosts):
    t = two_hosts
    h1, h2 = t.hosts
    t.start_vxland(h1, "--metrics", "127.0.0.1:9475")
    t.start_vxland(h2)
    assert t.iperf3(h1, h2, 1)["end"]["sum_received"]["bits_per_second"] > 0
    status, body = scrape(h1.ns, 9475)
    assert status == "HTTP/1.1 200 OK"
    got = samples(body)
    stats = h1.vxland_json("stats")["vnis"][0]
    assert got[("vxland_tx_packets_total", frozenset({("vni", "42")}))] >= stats["tx_packets"] > 1000
    assert got[("vxland_fdb_entries", frozenset({("vni", "42"), ("kind", "learned")}))] >= 2
    assert got[("vxland_offload_enabled", frozenset({("offload", "tap")}))] == 1
    assert scrape(h1.ns, 9475, "/nothing")[0] == "HTTP/1.1 404 Not Found"
    # a hundred connections that never send a request: refused past the limit, the daemon lives on
    hold = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-c",
                             "import socket, time\nsocks = [socket.create_connection(('127.0.0.1', 9475)) "
                             "for _ in range(100)]\nprint('held', flush=True)\ntime.sleep(2)\n"],
                            stdout=subprocess.PIPE, text=True)
    assert hold.stdout.readline().strip() == "held"
    assert t.ping(h1, h2, count=2).returncode == 0
    hold.wait(10)
    time.sleep(0.2)
    assert scrape(h1.ns, 9475)[0] == "HTTP/1.1 200 OK"
    assert h1.process.poll() is None


@pytest.mark.netns
def test_a_busy_metrics_port_is_one_line_at_start(two_hosts):
    h1 = two_hosts.hosts[0]
    holder = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-c",
                               "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 9475)); s.listen();"
                               "print('bound', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        result = subprocess.run(["ip", "netns", "exec", h1.ns, sys.executable, "-m", "vxland", "run", "--local",
                                 "192.0.2.1", "--vni", "42", "--tap", "vx0", "--control", h1.control,
                                 "--metrics", "127.0.0.1:9475"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and "cannot serve metrics on 127.0.0.1:9475" in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist():
    import os
    import re
    from test_control import in_memory_daemon
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry
    stats = in_memory_daemon()._stats()

    class Collector:
        def collect(self):
            return families(stats, 0.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    exported = {name for name, _ in samples(generate_latest(registry).decode())}
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dashboards", "vxland.json")
    with open(path) as f:
        dashboard = json.load(f)
    asked = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"vxland_\w+", t["expr"])}
    asked |= set(re.findall(r"vxland_\w+", json.dumps(dashboard["templating"])))
    assert asked and asked <= exported, asked - exported


@pytest.mark.netns
def test_idle_and_oversized_clients_never_lock_scrapers_out(two_hosts):
    """Sixteen connections that send nothing used to take every slot for 5 s at a time, for as
    long as they were renewed; a 1 MiB request head was met with a reset.  Now an idle client
    makes room for a new one, and an oversized head gets its 431."""
    t = two_hosts
    h1 = t.hosts[0]
    t.start_vxland(h1, "--metrics", "127.0.0.1:9475")
    hold = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-c", """
import socket, time
socks = []
for round in range(3):                       # renewed: the idle ones keep coming back
    socks += [socket.create_connection(('127.0.0.1', 9475)) for _ in range(16)]
    print('held', flush=True)
    time.sleep(1.5)
"""], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            assert hold.stdout.readline().strip() == "held"
            assert scrape(h1.ns, 9475)[0] == "HTTP/1.1 200 OK"
    finally:
        hold.kill()
        hold.wait()
    big = subprocess.run(["ip", "netns", "exec", h1.ns, sys.executable, "-c", """
import socket
s = socket.create_connection(('127.0.0.1', 9475), timeout=5)
try:
    s.sendall(b'GET /metrics HTTP/1.1\\r\\nX-Big: ' + b'a' * (1 << 20) + b'\\r\\n\\r\\n')
except OSError:
    pass                                      # the server closed its side: what it said is below
print(s.recv(200).split(b'\\r\\n')[0].decode())
"""], capture_output=True, text=True, timeout=30)
    assert big.stdout.strip() == "HTTP/1.1 431 Request Header Fields Too Large", big.stdout + big.stderr
    got = samples(scrape(h1.ns, 9475)[1])
    assert got[("vxland_metrics_rejected_total", frozenset({("reason", "evicted")}))] >= 16
    assert got[("vxland_metrics_rejected_total", frozenset({("reason", "too_large")}))] == 1
    assert h1.process.poll() is None


@pytest.mark.netns
def test_only_allowed_scrapers_are_answered(two_hosts):
    t = two_hosts
    h1 = t.hosts[0]
    t.start_vxland(h1, "--metrics", ":9475", "--metrics-allow", "192.0.2.0/24")
    assert scrape(h1.ns, 9475)[0] == ""                          # 127.0.0.1: closed at once
    out = subprocess.run(["ip", "netns", "exec", h1.ns, sys.executable, "-c",
                          SCRAPE.replace("'127.0.0.1'", "'192.0.2.1'"), "9475", "/metrics"],
                         capture_output=True, timeout=30, check=True).stdout.decode()
    assert out.startswith("HTTP/1.1 200 OK")
    assert ("vxland_metrics_rejected_total", frozenset({("reason", "not_allowed")})) in samples(out.partition("\r\n\r\n")[2])
