"""Reload: a new configuration applied live (SIGHUP, `vxland reload`).  Planned in memory
(reload.plan_reload), carried out by a running daemon in network namespaces: networks that
did not change lose no frame and no learned entry; what cannot change is refused whole."""

import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from vxland.config import parse_toml
from vxland.datapath import ReferenceDataPlane
from vxland.reload import plan_reload
from vxland.topology import sh

BASE = """
local = "192.0.2.1"
{extra}
[[network]]
vni = 42
tap = "vx0"
bridge = "br0"
peers = {peers}
{net42}
{more}
"""


def config(extra="", net42="", more="", peers='["192.0.2.2"]'):
    return parse_toml(BASE.format(extra=extra, net42=net42, more=more, peers=peers))


def test_an_unchanged_file_plans_nothing():
    plan = plan_reload(config(), config())
    assert plan.empty and plan.refused is None and plan.describe() == ["nothing changed"]


@pytest.mark.parametrize("extra,words", [
    ('port = 4790', "port cannot change"),
    ('datapath = "reference"', "datapath cannot change"),
    ('offloads = false', "offloads cannot change"),
    ('control = "/tmp/elsewhere.sock"', "control cannot change"),
])
def test_what_cannot_change_live_refuses_the_whole_reload(extra, words):
    plan = plan_reload(config(), config(extra=extra, more='[[network]]\nvni = 43\ntap = "vx43"\n'))
    assert plan.refused and words in plan.refused and not plan.added


def test_local_cannot_change():
    new = parse_toml(BASE.format(extra="", net42="", more="", peers="[]").replace("192.0.2.1", "192.0.2.9"))
    assert "local cannot change" in plan_reload(config(), new).refused


def test_a_tap_moving_between_vnis_is_refused():
    old = config(more='[[network]]\nvni = 43\ntap = "vx43"\n')
    new = config(more='[[network]]\nvni = 44\ntap = "vx43"\n')
    assert "would move from VNI 43 to VNI 44" in plan_reload(old, new).refused


def test_networks_added_removed_and_changed():
    old = config(more='[[network]]\nvni = 43\ntap = "vx43"\npeers = ["192.0.2.3"]\n')
    new = config(extra="ttl = 9", peers='["192.0.2.2", "192.0.2.4"]',
                 net42='ageing = 60\nstatic = [{ mac = "02:00:00:00:00:09", vtep = "192.0.2.9" }]\n',
                 more='[[network]]\nvni = 44\ntap = "vx44"\n')
    plan = plan_reload(old, new)
    assert [n.vni for n in plan.added] == [44] and [n.vni for n in plan.removed] == [43]
    (change,) = plan.changed
    assert change.peers_added == ["192.0.2.4"] and change.peers_removed == []
    assert [s.vtep for s in change.static_set] == ["192.0.2.9"] and change.limits and not change.data_path
    assert plan.outer
    assert plan.describe() == ["+VNI 44 on vx44", "-VNI 43 on vx43",
                               "VNI 42: peers +192.0.2.4, static +1 -0, ageing 60, max_learned 8192", "ttl 64 -> 9"]


class QueuedDataPlane(ReferenceDataPlane):
    """The reference data plane with a queue of sightings, as the data-path thread keeps one."""

    def __init__(self):
        super().__init__()
        self.queue = []

    slice = None                                 # at most this many a call, as native.TAKE
    event_slices = 1

    def take_events(self):
        n = self.slice or len(self.queue)
        queued, self.queue = self.queue[:n], self.queue[n:]
        return queued, []

    def thread_failed(self):
        return 0

    def watch_tap(self, net):
        pass

    def unwatch(self, fd):
        pass


class FakeTap:
    def __init__(self, name):
        self.name, self.fd, self.mac, self.vnet_hdr, self.uso, self.closed = name, -1, bytes(6), False, False, False
        self.mtu, self.queues, self.fds = 65521, (), (-1,)

    def close(self):
        self.closed = True


def test_sightings_queued_for_a_removed_network_go_with_it_not_to_its_successor():
    """The data-path thread queues sightings by network index.  A reload that removes a network
    and adds another, which takes its index, used to learn the old one's queued MACs into the
    new one (cross-VNI poisoning), or to raise KeyError on them.  Driven in memory: the
    reference data plane with a queue, as the thread keeps one."""
    import asyncio
    from vxland.daemon import Daemon
    from vxland.datapath import Sighting

    old, new = config(more='[[network]]\nvni = 43\ntap = "vx43"\n'), config(more='[[network]]\nvni = 44\ntap = "vx44"\n')
    daemon = Daemon(old, clock=lambda: 1.0)
    daemon.dataplane = QueuedDataPlane()
    daemon.dataplane.slice, daemon.dataplane.event_slices = 2, 4    # taken in slices, as the thread's
    daemon._events_fd = -1                                    # as if the thread ran
    for i, spec in enumerate(old.networks):
        daemon._add_network(i, spec, FakeTap(spec.tap))
    leaving = daemon._by_vni[43]
    daemon.dataplane.queue = [Sighting(leaving.index, bytes.fromhex(f"0243000000{i:02x}"), None) for i in range(5)]
    daemon._remove_network(leaving, asyncio.new_event_loop())
    assert leaving.tap.closed
    successor = daemon._add_network(daemon._free_index(), new.networks[1], FakeTap("vx44"))
    assert successor.index == leaving.index
    daemon._on_events()
    assert successor.table.size() == 0 and daemon.internal_errors == 0


def test_a_network_whose_tap_cannot_be_watched_is_not_left_live_and_unread(caplog):
    """epoll can refuse a reload's new TAP (ENOSPC at max_user_watches, EMFILE): the network
    used to stay in the data path and the tables, forwarding to a TAP nobody read.  It is
    taken out again, its TAP closed, and said in one line; the running networks stay."""
    import asyncio
    import errno
    from types import SimpleNamespace

    from vxland.daemon import Daemon

    class Refusing(QueuedDataPlane):
        def watch_tap(self, net):
            raise OSError(errno.ENOSPC, "vx_thread_watch_tap: No space left on device")

    old, new = config(), config(more='[[network]]\nvni = 44\ntap = "vx44"\n')
    daemon = Daemon(old, clock=lambda: 1.0)
    daemon.dataplane, daemon._events_fd = Refusing(), -1     # as if the thread ran
    daemon.underlay = SimpleNamespace(groups={})
    daemon._add_network(0, old.networks[0], FakeTap("vx0"))
    taps = []
    daemon._open_tap = lambda spec: taps.append(FakeTap(spec.tap)) or taps[-1]
    daemon._attached = lambda specs, directory: []
    daemon.reread = lambda: new
    answer = asyncio.run(daemon.reload())
    why = "VNI 44 not added: its TAP vx44 cannot be watched ([Errno 28] vx_thread_watch_tap: No space left on device)"
    assert answer == {"changes": [why]}                      # not "+VNI 44 on vx44"
    assert [n.spec.vni for n in daemon.networks] == [42] and 44 not in daemon._by_vni
    assert [n.vni for n in daemon.config.networks] == [42]   # so the next reload tries it again
    assert taps[0].closed and daemon.dataplane._nets.keys() == {0}
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"reload: {why}"] and daemon.internal_errors == 0
    daemon.dataplane.__class__ = QueuedDataPlane                # epoll has room again
    assert asyncio.run(daemon.reload()) == {"changes": ["+VNI 44 on vx44"]}
    assert [n.spec.vni for n in daemon.networks] == [42, 44] and not taps[1].closed


# ---- live, in network namespaces ----------------------------------------------------------



def write(path, text):
    path.write_text(text)


def host_config(t, h, control, net42="", more="", extra=""):
    others = ", ".join(f'"{o.underlay_ip}"' for o in t.hosts if o is not h)
    return f"""
local = "{h.underlay_ip}"
control = "{control}"
{extra}
[[network]]
vni = 42
tap = "vx0"
bridge = "br0"
peers = [{others}]
{net42}
{more}
"""


@pytest.fixture
def reloadable(two_hosts):
    """vxland on h1 from a config file (h1.toml, VNI 42 flooding to h2), vxland on h2.  The file
    is where the daemon, no longer root, can read it again (as /etc/vxland/vxland.toml)."""
    t = two_hosts
    h1, h2 = t.hosts
    path = pathlib.Path(t.workdir) / "h1.toml"
    write(path, host_config(t, h1, h1.control))
    t.start_vxland(h1, "--config", str(path), vni=None)
    t.start_vxland(h2)
    return t, h1, h2, path


def links(ns):
    return sh("ip", "-o", "link", "show", ns=ns).stdout


@pytest.mark.netns
def test_ten_reloads_while_ping_and_iperf3_run_lose_nothing(reloadable):
    """ping every 10 ms and an iperf3 run through VNI 42, while ten reloads add and remove
    other networks, change their peers, ageing and the outer TTL: no ping is lost, no learned
    entry of VNI 42 is forgotten, and the reloads are told apart in the log.  The data-path
    thread (the default) pumps throughout: its watches change with the networks."""
    t, h1, h2, path = reloadable
    assert h1.vxland_json("stats")["datapath_thread"]
    assert t.ping(h1, h2, count=2).returncode == 0
    learned = {(e["mac"], e.get("vtep")) for e in h1.vxland_json("fdb", "show") if not e["static"]}
    ping = subprocess.Popen(["ip", "netns", "exec", h1.container_ns, "ping", "-i", "0.01", "-c", "700",
                             h2.container_ip], stdout=subprocess.PIPE, text=True)
    iperf = {}
    runner = threading.Thread(target=lambda: iperf.update(t.iperf3(h1, h2, 6)))
    runner.start()
    variants = [
        dict(more='[[network]]\nvni = 43\ntap = "vx43"\npeers = ["192.0.2.2"]\n'),
        dict(more='[[network]]\nvni = 43\ntap = "vx43"\npeers = ["192.0.2.2", "198.51.100.1"]\n'),
        dict(more='[[network]]\nvni = 43\ntap = "vx43"\nageing = 30\n', extra="ttl = 33"),
        dict(more='[[network]]\nvni = 44\ntap = "vx44"\n'),
        dict(),
    ] * 2
    for i, variant in enumerate(variants):
        write(path, host_config(t, h1, h1.control, **variant))
        if i % 2:
            h1.process.send_signal(signal.SIGHUP)
        else:
            assert h1.vxland("reload").returncode == 0
        time.sleep(0.4)
    out, _ = ping.communicate(timeout=60)
    runner.join(60)
    assert " 0% packet loss" in out, out[-300:]
    assert iperf["end"]["sum_received"]["bits_per_second"] > 1e8
    log = t.log_of(h1)
    assert len(re.findall(r"reload \((SIGHUP|vxland reload)\)", log)) >= 10, log[-1500:]
    assert "refused" not in log
    # VNI 42 kept every learned entry; the last variant leaves only it
    now = {(e["mac"], e.get("vtep")) for e in h1.vxland_json("fdb", "show") if not e["static"]}
    assert learned <= now
    assert [v["vni"] for v in h1.vxland_json("stats")["vnis"]] == [42]
    assert "vx43" not in links(h1.ns) and "vx44" not in links(h1.ns)
    assert h1.vxland_json("stats")["reloads"] == {"done": 10, "refused": 0}


@pytest.mark.netns
def test_a_refused_reload_keeps_everything_and_says_why_in_one_line(reloadable):
    t, h1, h2, path = reloadable
    for text, words in ((host_config(t, h1, h1.control, extra="port = 4790"), "port cannot change"),
                        (host_config(t, h1, h1.control, more='[[network]]\nvni = 43\ntap = "vx43"\n'
                                     'bridge = "nosuchbridge"\n'), "bridge nosuchbridge does not exist"),
                        ("local = [", "not valid TOML")):
        write(path, text)
        result = h1.vxland("reload", check=False)
        assert result.returncode == 1 and words in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "vx43" not in links(h1.ns)
    assert [v["vni"] for v in h1.vxland_json("stats")["vnis"]] == [42]
    assert t.ping(h1, h2, count=2).returncode == 0
    assert h1.vxland_json("stats")["reloads"]["refused"] == 3


@pytest.mark.netns
def test_a_reload_changes_a_network_in_place_and_keeps_what_the_control_socket_added(reloadable):
    t, h1, h2, path = reloadable
    h1.vxland("peers", "add", "--vni", "42", "198.51.100.7")
    h1.vxland("fdb", "add", "--mac", "02:00:00:00:00:77", "--vni", "42", "--vtep", "198.51.100.7")
    write(path, host_config(t, h1, h1.control, net42='mtu = 1400\nmax_learned = 100\n'
                            'static = [{ mac = "02:00:00:00:00:99", vtep = "192.0.2.2" }]\n'))
    assert h1.vxland("reload").returncode == 0
    assert h1.vxland_json("networks", "show")[0]["mtu"] == 1400          # the overlay's: containers use it
    assert "mtu 65521" in links(h1.ns).split("vx0")[1].split("\n")[0]    # the TAP takes any frame (README: MTU)
    assert h1.vxland_json("peers", "show")[0]["peers"] == ["192.0.2.2", "198.51.100.7"]
    statics = {e["mac"] for e in h1.vxland_json("fdb", "show") if e["static"]}
    assert statics == {"02:00:00:00:00:77", "02:00:00:00:00:99"}
    # the file takes its own static entry away again; the control socket's stays
    write(path, host_config(t, h1, h1.control))
    h1.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    statics = {e["mac"] for e in h1.vxland_json("fdb", "show") if e["static"]}
    assert statics == {"02:00:00:00:00:77"}
    assert t.ping(h1, h2, count=2).returncode == 0


def test_reload_of_a_daemon_started_from_flags_is_refused():
    from vxland.cli import build_parser
    assert "reload" in build_parser().format_help()
    result = subprocess.run([sys.executable, "-m", "vxland", "reload", "--control", "/nonexistent/x.sock"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.startswith("vxland: cannot reach vxland")


@pytest.mark.netns
def test_sightings_still_queued_for_a_removed_network_never_reach_its_successor(reloadable):
    """A reload removes VNI 43 -- whose container sends from ever new source MACs -- and adds VNI
    44, which takes 43's index in the data path.  Sightings of 43 still queued between the
    data-path thread and the control plane used to be learned into 44 (cross-VNI poisoning) or
    to raise KeyError; now they are dropped with their network.  44 has no container at all:
    any MAC in its table came from 43."""
    t, h1, h2, path = reloadable
    sh("ip", "-n", h1.ns, "link", "add", "br1", "type", "bridge")
    sh("ip", "-n", h1.ns, "link", "set", "br1", "up")
    flooder = t.namespace("flood")
    sh("ip", "-n", flooder, "link", "add", "eth0", "type", "veth", "peer", "name", "fl0", "netns", h1.ns)
    sh("ip", "-n", h1.ns, "link", "set", "fl0", "master", "br1", "up")
    sh("ip", "-n", flooder, "link", "set", "eth0", "up")
    write(path, host_config(t, h1, h1.control, more='[[network]]\nvni = 43\ntap = "vx43"\nbridge = "br1"\n'
                                                    'max_learned = 1000000\npeers = ["192.0.2.2"]\n'))
    assert h1.vxland("reload").returncode == 0
    flood = subprocess.Popen(["ip", "netns", "exec", flooder, sys.executable, "-c", """
import os, socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
end = time.monotonic() + 4
i = 0
while time.monotonic() < end:
    i += 1
    s.send(b"\\xff" * 6 + b"\\x02\\x43" + i.to_bytes(4, "big") + b"\\x88\\xb5" + bytes(46))
"""])
    try:
        time.sleep(1.5)
        write(path, host_config(t, h1, h1.control, more='[[network]]\nvni = 44\ntap = "vx44"\n'))
        assert h1.vxland("reload").returncode == 0
    finally:
        flood.wait(30)
    time.sleep(1)
    assert [r["mac"] for r in h1.vxland_json("fdb", "show", "--vni", "44")] == []
    assert h1.vxland_json("stats")["internal_errors"] == 0 and "internal error" not in t.log_of(h1)
    assert t.ping(h1, h2, count=2).returncode == 0
