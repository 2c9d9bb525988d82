"""The userspace L2 tunnels a user could pick instead of vxland, set up for the benchmark.

Each `start_*` puts one host's end of a peer into the topology of vxland.topology in
place of vxland: its device in the host's bridge br0 (or, for Open vSwitch, the container's
port in OVS's own bridge), talking over the same underlay, with encryption off so that
what is compared is the data path.  Each returns the processes it started; the caller
stops them by PID (stop()).  All are Debian packages (`scripts/install.sh --bench`).

  ovs      Open vSwitch's userspace datapath (datapath_type=netdev): "userspace tunneling",
           a br-phy netdev bridge holding the underlay port eth0 and its address, br-int with
           a VXLAN port (VNI 42) and the container's port; one ovsdb-server and one ovs-vswitchd
           per host with their own run/db/log directory.  Its ports are AF_PACKET sockets,
           which take no checksum offload: the container veth's tx offloads are turned off,
           as OVS needs (without it TCP does not pass at all).
  tinc     tinc 1.0 in switch mode, Cipher = none, Digest = none (RSA keys for the meta
           connection only), its TAP in br0.
  fastd    fastd in tap mode with method "null", its TAP in br0.
  openvpn  OpenVPN 2.6, TAP mode, peer to peer with no key (cleartext; DCO off: it has
           no TAP support), its TAP made persistent in br0 before it starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from vxland.topology import VNI, Host, Topology, TopologyError, sh

PEERS = ("ovs", "tinc", "fastd", "openvpn")


def _spawn(t: Topology, host: Host, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(os.path.join(t.workdir, f"{name}-{host.ns}.log"), "ab")
    try:
        return subprocess.Popen(["ip", "netns", "exec", host.ns, *cmd], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    finally:
        log.close()


def _wait_for(what: str, ready, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise TopologyError(f"{what} did not come up within {timeout:.0f}s")


def _link_exists(host: Host, dev: str) -> bool:
    return sh("ip", "link", "show", dev, ns=host.ns, check=False).returncode == 0


def _others(t: Topology, host: Host) -> list[Host]:
    return [h for h in t.hosts if h is not host]


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---- Open vSwitch, userspace datapath ---------------------------------------------------

def start_ovs(t: Topology, host: Host) -> list[subprocess.Popen]:
    d = os.path.join(t.workdir, f"ovs-{host.ns}")
    os.makedirs(d, exist_ok=True)
    env = {"OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d, "OVS_PKGDATADIR": d}
    db, sock = os.path.join(d, "conf.db"), os.path.join(d, "db.sock")
    subprocess.run(["ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"], check=True,
                   capture_output=True)
    procs = [_spawn(t, host, "ovsdb-server", ["ovsdb-server", db, f"--remote=punix:{sock}",
                                              f"--unixctl={d}/ovsdb.ctl", f"--pidfile={d}/ovsdb.pid"], env)]
    _wait_for("ovsdb-server", lambda: os.path.exists(sock))

    def vsctl(*args: str) -> None:
        sh("ovs-vsctl", f"--db=unix:{sock}", "--timeout=10", *args, ns=host.ns)

    vsctl("--no-wait", "init")
    procs.append(_spawn(t, host, "ovs-vswitchd", ["ovs-vswitchd", f"unix:{sock}", f"--unixctl={d}/vswitchd.ctl",
                                                  f"--pidfile={d}/vswitchd.pid"], env))
    _wait_for("ovs-vswitchd", lambda: os.path.exists(f"{d}/vswitchd.ctl"))
    mac = sh("cat", "/sys/class/net/eth0/address", ns=host.ns).stdout.strip()
    prefix = "/64" if ":" in host.underlay_ip else "/24"
    # the underlay: eth0 into br-phy, its address onto br-phy's internal port
    vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev", f"other_config:hwaddr={mac}")
    vsctl("add-port", "br-phy", "eth0")
    sh("ip", "addr", "flush", "dev", "eth0", ns=host.ns)
    sh("ip", "addr", "add", host.underlay_ip + prefix, "dev", "br-phy", ns=host.ns)
    sh("ip", "link", "set", "br-phy", "up", ns=host.ns)
    # the overlay: the container's port and one VXLAN port per remote host
    sh("ip", "link", "set", "ctr0", "nomaster", ns=host.ns)
    sh("ethtool", "-K", "eth0", "tx", "off", ns=host.container_ns)    # OVS's AF_PACKET ports need it
    vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev")
    vsctl("add-port", "br-int", "ctr0")
    for i, other in enumerate(_others(t, host)):
        vsctl("add-port", "br-int", f"vxlan{i}", "--", "set", "interface", f"vxlan{i}", "type=vxlan",
              f"options:remote_ip={other.underlay_ip}", f"options:key={VNI}")
    sh("ip", "link", "set", "br-int", "up", ns=host.ns)
    return procs


# ---- tinc 1.0, switch mode ----------------------------------------------------------------

def _tinc_dir(t: Topology, host: Host) -> str:
    return os.path.join(t.workdir, f"tinc-{host.ns}")


def _tinc_name(host: Host) -> str:
    return host.ns.replace("-", "_")


def start_tinc(t: Topology, host: Host) -> list[subprocess.Popen]:
    # every host's config and key first (the first call does all), then each daemon
    for h in t.hosts:
        d = _tinc_dir(t, h)
        if os.path.exists(d):
            continue
        os.makedirs(os.path.join(d, "hosts"))
        connect = "".join(f"ConnectTo = {_tinc_name(o)}\n" for o in _others(t, h) if t.hosts.index(o) < t.hosts.index(h))
        with open(os.path.join(d, "tinc.conf"), "w") as f:
            f.write(f"Name = {_tinc_name(h)}\nMode = switch\nDeviceType = tap\nInterface = tinc0\n"
                    f"AddressFamily = ipv4\nBindToAddress = {h.underlay_ip}\n{connect}")
        with open(os.path.join(d, "hosts", _tinc_name(h)), "w") as f:
            f.write(f"Address = {h.underlay_ip}\nPort = 655\nCipher = none\nDigest = none\n")
        up = os.path.join(d, "tinc-up")
        with open(up, "w") as f:
            f.write("#!/bin/sh\nip link set \"$INTERFACE\" master br0 up\n")
        os.chmod(up, 0o755)
        subprocess.run(["tincd", "-c", d, "-K", "2048"], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    for h in t.hosts:                     # everyone knows everyone's host file (with its public key)
        for o in _others(t, h):
            src = os.path.join(_tinc_dir(t, o), "hosts", _tinc_name(o))
            with open(src) as f, open(os.path.join(_tinc_dir(t, h), "hosts", _tinc_name(o)), "w") as g:
                g.write(f.read())
    d = _tinc_dir(t, host)
    proc = _spawn(t, host, "tincd", ["tincd", "-c", d, "-D", f"--pidfile={d}/pid"])
    _wait_for("tincd's TAP in br0", lambda: "master br0" in sh("ip", "link", "show", "tinc0", ns=host.ns,
                                                                 check=False).stdout)
    return [proc]


# ---- fastd, null method -------------------------------------------------------------------

def _fastd_keys() -> tuple[str, str]:
    out = subprocess.run(["fastd", "--generate-key"], check=True, capture_output=True, text=True).stdout
    secret = public = ""
    for line in out.splitlines():
        if line.lower().startswith("secret:"):
            secret = line.split(":", 1)[1].strip()
        elif line.lower().startswith("public:"):
            public = line.split(":", 1)[1].strip()
    return secret, public


_fastd_keys_of: dict[str, tuple[str, str]] = {}


def start_fastd(t: Topology, host: Host) -> list[subprocess.Popen]:
    for h in t.hosts:
        _fastd_keys_of.setdefault(h.ns, _fastd_keys())
    d = os.path.join(t.workdir, f"fastd-{host.ns}")
    os.makedirs(d, exist_ok=True)
    peers = "".join(f'peer "{o.ns}" {{\n  key "{_fastd_keys_of[o.ns][1]}";\n  remote {o.underlay_ip}:10000;\n}}\n'
                    for o in _others(t, host))
    conf = os.path.join(d, "fastd.conf")
    with open(conf, "w") as f:
        f.write(f'log to stderr level warn;\ninterface "fastd0";\nmode tap;\nmethod "null";\n'
                f'bind {host.underlay_ip}:10000;\nsecret "{_fastd_keys_of[host.ns][0]}";\nmtu 1500;\n'
                f'on up "ip link set $INTERFACE master br0 up";\n{peers}')
    proc = _spawn(t, host, "fastd", ["fastd", "-c", conf])
    _wait_for("fastd's TAP in br0", lambda: "master br0" in sh("ip", "link", "show", "fastd0", ns=host.ns,
                                                                 check=False).stdout)
    return [proc]


# ---- OpenVPN 2.6, TAP, no key ----------------------------------------------------------------

def start_openvpn(t: Topology, host: Host) -> list[subprocess.Popen]:
    if len(t.hosts) != 2:
        raise TopologyError("OpenVPN peer-to-peer mode joins exactly two hosts")
    (other,) = _others(t, host)
    sh("ip", "tuntap", "add", "dev", "ovpn0", "mode", "tap", ns=host.ns)
    sh("ip", "link", "set", "ovpn0", "master", "br0", "up", ns=host.ns)
    proc = _spawn(t, host, "openvpn", [
        "openvpn", "--dev", "ovpn0", "--dev-type", "tap", "--proto", "udp", "--local", host.underlay_ip,
        "--lport", "1194", "--remote", other.underlay_ip, "--rport", "1194", "--disable-dco",
        "--tun-mtu", "1500", "--verb", "1"])
    # (no handshake without a key: it is up once bound; the caller's ping checks the path)
    _wait_for("openvpn", lambda: "link remote" in
              open(os.path.join(t.workdir, f"openvpn-{host.ns}.log"), errors="replace").read())
    return [proc]


START = {"ovs": start_ovs, "tinc": start_tinc, "fastd": start_fastd, "openvpn": start_openvpn}
