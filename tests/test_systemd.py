"""vxland under systemd: the unit in the repository (verified and scored by systemd-analyze),
the notify protocol against a socket this test owns, and the daemon started the way the
unit starts it -- an unprivileged user holding only CAP_NET_ADMIN and CAP_NET_RAW as
ambient capabilities.  (systemd itself does not run on these machines: PID 1 is not it.)"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "systemd", "vxland.service")


@pytest.fixture
def unit(tmp_path):
    """The unit as install.sh --systemd installs it."""
    path = tmp_path / "vxland.service"
    with open(UNIT) as f:
        path.write_text(f.read().replace("@VXLAND@", os.path.join(ROOT, ".venv", "bin", "vxland")))
    return path


def unit_settings():
    with open(UNIT) as f:
        return [line.strip() for line in f if "=" in line and not line.startswith("#")]


def test_the_unit_verifies(unit):
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_unit_is_sandboxed(unit):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    assert score <= 2.5, result.stdout[-600:]                    # systemd calls up to 3.9 "OK"


def test_the_unit_says_what_the_issue_asks():
    settings = unit_settings()
    for wanted in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                   "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes"):
        assert wanted in settings, wanted


class Notifications:
    """The NOTIFY_SOCKET a service manager would own: a datagram socket at a path, as systemd's
    /run/systemd/notify (an abstract one would not reach into the daemon's network namespace)."""

    def __init__(self, directory):
        self.name = str(directory / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.name)
        self.sock.settimeout(15)

    def next(self):
        return dict(line.split("=", 1) for line in self.sock.recv(4096).decode().splitlines())


@pytest.mark.netns
def test_ready_reloading_and_stopping_are_notified(two_hosts, tmp_path):
    t = two_hosts
    h1, h2 = t.hosts
    notifications = Notifications(tmp_path)
    config = pathlib.Path(t.workdir) / "h1.toml"         # where the daemon, no longer root, reads it again
    config.write_text(f'local = "192.0.2.1"\ncontrol = "{h1.control}"\n[[network]]\nvni = 42\ntap = "vx0"\n'
                      'bridge = "br0"\npeers = ["192.0.2.2"]\n')
    daemon = t.start_vxland(h1, "--config", str(config), vni=None, env={"NOTIFY_SOCKET": notifications.name})
    ready = notifications.next()
    assert ready["READY"] == "1" and ready["MAINPID"] == str(daemon.pid) and "1 networks" in ready["STATUS"]
    config.write_text(config.read_text().replace('peers = ["192.0.2.2"]', 'peers = ["192.0.2.2", "198.51.100.4"]'))
    daemon.send_signal(signal.SIGHUP)
    reloading = notifications.next()
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert notifications.next()["READY"] == "1"
    assert h1.vxland_json("peers", "show")[0]["peers"] == ["192.0.2.2", "198.51.100.4"]
    daemon.send_signal(signal.SIGTERM)
    assert notifications.next()["STOPPING"] == "1"
    assert daemon.wait(10) == 0


@pytest.mark.netns
def test_it_runs_as_the_unit_starts_it(two_hosts):
    """CAP_NET_ADMIN and CAP_NET_RAW as ambient capabilities and nothing else, the bounding set
    cut to them, no_new_privs: what AmbientCapabilities= and CapabilityBoundingSet= give it.
    It starts, carries traffic, stops, and has nothing more to drop.  The unit's DynamicUser=
    also changes the uid; that cannot be done here: this sandbox's /dev/net/tun is 0600 root
    (udev makes it 0666 on Debian) and its Python lives under /root (0700).  Running as another
    user once started is tested by test_hostile.py (--user)."""
    t = two_hosts
    h1, h2 = t.hosts
    caps = "+net_admin,+net_raw"
    prefix = ("setpriv", f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}",
              "--no-new-privs")
    daemon = t.start_vxland(h1, prefix=prefix)
    t.start_vxland(h2)
    with open(f"/proc/{daemon.pid}/status") as f:
        status = f.read()
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert re.search(rf"{field}:\s+0000000000003000", status), status
    assert t.ping(h1, h2, count=2).returncode == 0
    assert "cannot" not in t.log_of(h1)
    assert t.stop_vxland(h1) == 0 and not os.path.exists(h1.control)


def test_notify_outside_systemd_does_nothing(monkeypatch):
    from vxland import systemd
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert sys.modules["vxland.systemd"] is systemd
