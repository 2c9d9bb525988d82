"""Containers started by real engines on two hosts, joined by vxland: Podman attaching them
with vxland's CNI plugin, and Podman and Docker attaching them with their own bridge networks
as scripts/engine-network.sh (the README's recipe) makes them.  Each host's engine runs in
that host's namespace with a private store (vxland.containers); the image is busybox and
iperf3, imported offline.  Addresses come from one subnet, each host from its own range."""

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from vxland.containers import Docker, EngineError, Podman, build_image_tar
from vxland.topology import sh

pytestmark = pytest.mark.netns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET = "10.42.0.0/24"      # the topology's bare containers hold 10.42.0.1 and .2
CNI_RANGES = [("10.42.0.100", "10.42.0.149"), ("10.42.0.150", "10.42.0.199")]
RECIPE = [("10.42.0.64/27", "10.42.0.253"), ("10.42.0.96/27", "10.42.0.254")]   # range, gateway


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return build_image_tar(str(tmp_path_factory.mktemp("image")))


@pytest.fixture
def hosts(two_hosts):
    for h in two_hosts.hosts:
        two_hosts.start_vxland(h)
    return two_hosts


@pytest.fixture
def engines(request):
    """engines(kind, host_ns) -> an engine on that host; every one closed after the test."""
    made = []

    def make(kind, host_ns, **options):
        engine = kind(host_ns, **options)
        made.append(engine)
        return engine
    yield make
    for engine in reversed(made):
        engine.close()


def across(engines_by_host, containers, networks):
    """Ping and iperf3 (TCP) between the two hosts' containers; their addresses.  The iperf3
    server's own report names the client by the address it has in its container: no NAT."""
    (e1, e2), (c1, c2), (n1, n2) = engines_by_host, containers, networks
    a1, a2 = e1.address(c1, n1), e2.address(c2, n2)
    assert "3 packets received" in e1.exec(c1, "ping", "-c", "3", "-W", "2", a2)
    e2.exec(c2, "iperf3", "-s", "-D", "-1", "-J", "--logfile", "/tmp/server.json", "-B", a2)
    for _ in range(50):                                   # until the server listens
        if f"{a2}:5201 " in e2.exec(c2, "netstat", "-ltn"):
            break
        time.sleep(0.1)
    report = json.loads(e1.exec(c1, "iperf3", "-c", a2, "-t", "2", "-J", timeout=60))
    assert "error" not in report, report["error"]
    received = report["end"]["sum_received"]
    assert received["bytes"] > 10_000_000, received   # a working TCP path, not a speed claim
    for _ in range(50):                                   # until the server has written its report
        try:
            server = json.loads(e2.exec(c2, "cat", "/tmp/server.json"))
            break
        except (ValueError, EngineError):
            time.sleep(0.1)
    assert server["start"]["connected"][0]["remote_host"] == a1, server["start"]["connected"]
    return a1, a2


def in_range(address, first, last):
    return ipaddress.ip_address(first) <= ipaddress.ip_address(address) <= ipaddress.ip_address(last)


def test_podman_with_the_cni_plugin(hosts, engines, image, tmp_path):
    """The issue's 'done when': a container started by Podman on each host, attached by the
    vxland CNI plugin, pings and carries iperf3 to the other; host-local gives each host's
    containers addresses of its own range; vxland knows each container before its first frame
    (a local static entry), and forgets it when Podman removes the container (CNI DEL)."""
    h1, h2 = hosts.hosts
    pair, containers = [], []
    for host, (first, last) in zip(hosts.hosts, CNI_RANGES):
        engine = engines(Podman, host.ns, backend="cni")
        engine.load(image)
        engine.add_cni_network("vxnet", vni=42, control=host.control, subnet=SUBNET, ip_range=(first, last))
        pair.append(engine)
        containers.append(engine.run("vxnet", "sleep", "1000"))
    for engine, container, host in zip(pair, containers, hosts.hosts):
        mac = engine.exec(container, "cat", "/sys/class/net/eth0/address").strip()
        address = engine.address(container, "vxnet")
        entry = next(e for e in host.vxland_json("fdb", "show") if e["mac"] == mac)
        assert entry["static"] and entry["port"] == "vx0" and entry["ips"] == [address], entry
        assert "mtu 1450" in engine.exec(container, "ip", "link", "show", "eth0")
    a1, a2 = across(pair, containers, ["vxnet", "vxnet"])
    assert in_range(a1, *CNI_RANGES[0]) and in_range(a2, *CNI_RANGES[1])
    # a second container on host 1 takes the next address of host 1's range, not host 2's
    third = pair[0].run("vxnet", "sleep", "1000")
    a3 = pair[0].address(third, "vxnet")
    assert in_range(a3, *CNI_RANGES[0]) and a3 != a1
    mac = pair[0].exec(third, "cat", "/sys/class/net/eth0/address").strip()
    pair[0].remove(third)
    assert mac not in [e["mac"] for e in h1.vxland_json("fdb", "show")]


def recipe(engine, host, name, host_index):
    """scripts/engine-network.sh on `host`, as the README tells a user to run it."""
    ip_range, gateway = RECIPE[host_index]
    env = {**os.environ, **engine.script_env(), "VXLAND": f"{sys.executable} -m vxland",
           "PYTHONPATH": ROOT}
    out = subprocess.run(["nsenter", f"--net=/run/netns/{host.ns}", os.path.join(ROOT, "scripts",
                          "engine-network.sh"), engine.command, name, "--vni", "42", "--subnet", SUBNET,
                          "--range", ip_range, "--gateway", gateway, "--control", host.control],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "bridge br0 (VNI 42), MTU 1450" in out.stdout, out.stdout
    return out


@pytest.mark.parametrize("kind,options", [(Podman, {"backend": "netavark"}), (Docker, {})],
                         ids=["podman", "docker"])
def test_the_engine_recipe(hosts, engines, image, kind, options):
    """The README's recipe: the engine's own bridge network on vxland's bridge, one subnet with
    a range and a gateway per host, the overlay MTU, no NAT.  Containers of the two hosts ping
    and carry iperf3 unNATed, with addresses from their host's range."""
    # A name per host, though on two machines one name would do: whatever its store, Podman
    # keeps netavark's address leases in one file per machine (/run/containers/networks/
    # ipam.db), by network name, and these two "hosts" share a machine.
    names = [f"vxnet-{hosts.tag}-{index}" for index in (1, 2)]
    pair, containers = [], []
    for index, (host, name) in enumerate(zip(hosts.hosts, names)):
        engine = engines(kind, host.ns, **options)
        engine.load(image)
        recipe(engine, host, name, index)
        pair.append(engine)
        containers.append(engine.run(name, "sleep", "1000"))
    for engine, container in zip(pair, containers):
        assert "mtu 1450" in engine.exec(container, "ip", "link", "show", "eth0")
    a1, a2 = across(pair, containers, names)
    for address, (ip_range, _) in zip((a1, a2), RECIPE):
        assert ipaddress.ip_address(address) in ipaddress.ip_network(ip_range)


def test_recipe_refuses_a_vni_vxland_does_not_serve(hosts, engines):
    engine = engines(Podman, hosts.hosts[0].ns, backend="netavark")
    env = {**os.environ, **engine.script_env(), "VXLAND": f"{sys.executable} -m vxland", "PYTHONPATH": ROOT}
    out = subprocess.run([os.path.join(ROOT, "scripts", "engine-network.sh"), "podman", "vxnet", "--vni", "7",
                          "--subnet", SUBNET, "--range", RECIPE[0][0], "--gateway", RECIPE[0][1],
                          "--control", hosts.hosts[0].control], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "no network with VNI 7" in out.stderr, out.stderr
    assert not os.listdir(engine.network_dir)


def test_the_demo_with_podman():
    """`vxland demo --containers podman` works, and leaves no namespace, container or store."""
    before = sh("ip", "netns", "list").stdout
    out = subprocess.run([sys.executable, "-m", "vxland", "demo", "--containers", "podman", "--seconds", "1"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": 0% lost") == 2 and out.stdout.count("iperf3 TCP 10.42.0.1") == 2, out.stdout
    assert "Traceback" not in out.stderr
    assert sh("ip", "netns", "list").stdout == before
    assert not [d for d in os.listdir(tempfile.gettempdir()) if d.startswith("vxland-podman-")]
