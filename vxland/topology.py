"""Hosts and containers in network namespaces: the topology of the demo, the tests and the benchmark.

    container c1 (10.42.0.1)            container c2 (10.42.0.2)
          | veth                              | veth
       bridge br0 -- VTEP            VTEP -- bridge br0
       host h1 (192.0.2.1) ====veth==== host h2 (192.0.2.2)

With more than two hosts, host i (192.0.2.i) meets the others on a bridge in a
"switch" namespace instead of one veth.

Every namespace is named vxl-<run tag>-<role>, so runs never collide, and
`close()` (or leaving the `with` block) kills what it started and removes them
all, also after a failure.  Addresses are documentation (underlay) and private
(containers) ranges, used inside these namespaces only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

VNI = 42
CONTAINER_MTU = 1450


class TopologyError(RuntimeError):
    pass


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    result = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise TopologyError(f"{' '.join(full)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Host:
    ns: str
    underlay_ip: str
    container_ns: str
    container_ip: str
    container_mac: str
    control: str                     # the control socket of a vxland started here
    log: str                         # its stderr
    process: subprocess.Popen | None = None

    def vxland(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a vxland client verb against this host's daemon."""
        return sh(sys.executable, "-m", "vxland", *args, "--control", self.control, check=check)

    def vxland_json(self, *args: str):
        return json.loads(self.vxland(*args, "--json").stdout)


@dataclass
class Topology:
    hosts_wanted: int = 2
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    # An IPv6 underlay (2001:db8::i/64) instead of IPv4; the containers' MTU shrinks by 20.
    ipv6: bool = False
    hosts: list[Host] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    workdir: str = ""
    tun: str | None = None

    def __enter__(self) -> "Topology":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def namespace(self, role: str) -> str:
        """A network namespace of this run, removed by close()."""
        name = f"vxl-{self.tag}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        # No IPv6 autoconfiguration: its router solicitations and MLD reports would
        # disturb the tests that count frames exactly.
        sh("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
           ns=name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    def build(self) -> None:
        n = self.hosts_wanted
        self.workdir = tempfile.mkdtemp(prefix=f"vxland-{self.tag}-")
        # The daemons drop to an unprivileged user once started: they must reach their control
        # sockets (in a directory each makes and hands over, as /run/vxland) and config files.
        os.chmod(self.workdir, 0o755)
        self.tun = self._debian_tun()
        h = [self.namespace(f"h{i + 1}") for i in range(n)]
        c = [self.namespace(f"c{i + 1}") for i in range(n)]
        if n == 2:
            sh("ip", "-n", h[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", h[1])
        else:
            switch = self.namespace("sw")
            # no multicast snooping: there is no querier here, and groups must simply be flooded
            sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            sh("ip", "-n", switch, "link", "set", "br0", "up")
            for i in range(n):
                sh("ip", "-n", switch, "link", "add", f"p{i + 1}", "type", "veth", "peer", "name", "eth0",
                   "netns", h[i])
                sh("ip", "-n", switch, "link", "set", f"p{i + 1}", "master", "br0", "up")
        mtu = CONTAINER_MTU - (20 if self.ipv6 else 0)
        for i in range(n):
            underlay_ip = f"2001:db8::{i + 1}" if self.ipv6 else f"192.0.2.{i + 1}"
            container_ip = f"10.42.0.{i + 1}"
            mac = f"02:42:0a:2a:00:{i + 1:02x}"
            if self.ipv6:
                sh("sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=0", ns=h[i])
                sh("ip", "-n", h[i], "addr", "add", f"{underlay_ip}/64", "dev", "eth0", "nodad")
            else:
                sh("ip", "-n", h[i], "addr", "add", f"{underlay_ip}/24", "dev", "eth0")
            # The underlay keeps a veth's default offloads, as a virtio NIC between VMs has
            # them: a kernel VTEP's inner checksums and TSO super-frames cross it unfinished,
            # and vxland must (and does) finish them.
            sh("ip", "-n", h[i], "link", "set", "eth0", "up")
            sh("ip", "-n", h[i], "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", h[i], "link", "set", "br0", "up")
            sh("ip", "-n", c[i], "link", "add", "eth0", "address", mac, "mtu", str(mtu),
               "type", "veth", "peer", "name", "ctr0", "netns", h[i])
            sh("ip", "-n", h[i], "link", "set", "ctr0", "master", "br0", "up")
            sh("ip", "-n", c[i], "addr", "add", f"{container_ip}/24", "dev", "eth0")
            sh("ip", "-n", c[i], "link", "set", "eth0", "up")
            self.hosts.append(Host(h[i], underlay_ip, c[i], container_ip, mac,
                                   control=os.path.join(self.workdir, f"h{i + 1}", "vxland.sock"),
                                   log=os.path.join(self.workdir, f"h{i + 1}.log")))

    def _debian_tun(self) -> str | None:
        """Debian's udev makes /dev/net/tun 0666, so a daemon that dropped root can still create
        TAPs (a reload that adds a network).  Where this machine's is not (a sandbox without
        udev: devtmpfs gives 0600), a node like Debian's, bound over it in each daemon's own
        mount namespace (`ip netns exec` makes one): the machine's node is left as it is."""
        if os.stat("/dev/net/tun").st_mode & 0o006 == 0o006:
            return None
        node = os.path.join(self.workdir, "tun")
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
        os.chmod(node, 0o666)
        return node

    # ---- VTEPs -------------------------------------------------------------------------
    def start_vxland(self, host: Host, *extra: str, vni: int | None = VNI, datapath: str = "native",
                     peers: list[str] | None = None, wait: float = 15.0, env: dict[str, str] | None = None,
                     prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        """vxland on `host`: one network (VNI `vni` on TAP vx0 in br0, flooding to `peers`,
        by default every other host), or with vni=None the networks of a --config in `extra`.
        `env` adds to its environment; `prefix` runs it through a command (setpriv, say)."""
        cmd = [sys.executable, "-m", "vxland", "run", "--control", host.control, "--datapath", datapath,
               "-v", *extra]
        if vni is not None:
            cmd += ["--local", host.underlay_ip, "--vni", str(vni), "--tap", "vx0", "--bridge", "br0"]
            other = [h.underlay_ip for h in self.hosts if h is not host]
            for peer in other if peers is None else peers:
                cmd += ["--peer", peer]
        log = open(host.log, "ab")
        tun = ("sh", "-c", 'mount --bind "$0" /dev/net/tun && exec "$@"', self.tun) if self.tun else ()
        host.process = subprocess.Popen(["ip", "netns", "exec", host.ns, *tun, *prefix, *cmd], stdout=log,
                                        stderr=log, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if host.process.poll() is not None:
                raise TopologyError(f"vxland on {host.ns} exited {host.process.returncode}: {self.log_of(host)}")
            if os.path.exists(host.control) and host.vxland("stats", "--json", check=False).returncode == 0:
                return host.process
            time.sleep(0.1)
        raise TopologyError(f"vxland on {host.ns} did not answer within {wait}s: {self.log_of(host)}")

    def stop_vxland(self, host: Host, timeout: float = 10.0) -> int | None:
        p, host.process = host.process, None
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return None

    def start_kernel_vxlan(self, host: Host, *options: str, vni: int = VNI, port: int = 4789,
                           flood: bool = True) -> None:
        """The Linux kernel's VXLAN as this host's VTEP, flooding to the other hosts (unless
        flood=False); `options` go to `ip link add ... type vxlan` (e.g. "noudpcsum", "group", G)."""
        sh("ip", "-n", host.ns, "link", "add", "vx0", "type", "vxlan", "id", str(vni), "dstport", str(port),
           "local", host.underlay_ip, "dev", "eth0", *options)
        for other in self.hosts if flood else []:
            if other is not host:
                sh("bridge", "-n", host.ns, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0",
                   "dst", other.underlay_ip)
        sh("ip", "-n", host.ns, "link", "set", "vx0", "master", "br0", "up")

    def kernel_fdb(self, host: Host) -> str:
        return sh("bridge", "-n", host.ns, "fdb", "show", "dev", "vx0").stdout

    def log_of(self, host: Host) -> str:
        try:
            with open(host.log, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    # ---- traffic -------------------------------------------------------------------------
    def ping(self, src: Host, dst: Host, count: int = 3, interval: float = 0.2,
             size: int = 56) -> subprocess.CompletedProcess:
        return sh("ping", "-c", str(count), "-i", str(interval), "-W", "2", "-s", str(size),
                  dst.container_ip, ns=src.container_ns, check=False)

    def iperf3(self, client: Host, server: Host, seconds: float = 2, *extra: str) -> dict:
        srv = subprocess.Popen(["ip", "netns", "exec", server.container_ns, "iperf3", "-s", "-1", "-B",
                                server.container_ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(50):                  # wait for the server to listen
                if sh("ss", "-ltn", "sport = :5201", ns=server.container_ns).stdout.count("LISTEN"):
                    break
                time.sleep(0.1)
            out = sh("iperf3", "-c", server.container_ip, "-t", str(seconds), "-J", *extra,
                     ns=client.container_ns, check=False, timeout=seconds + 30)
            try:
                return json.loads(out.stdout)
            except ValueError:
                raise TopologyError(f"iperf3 failed: {out.stderr.strip() or out.stdout[-500:]}") from None
        finally:
            srv.kill()
            srv.wait()

    def send_frames(self, src: Host, dst_mac: str, count: int, interval: float = 0.0,
                    ethertype: int = 0x88B5, src_mac: str | None = None) -> None:
        """Raw Ethernet frames out of a container's eth0 (by default of a local experimental
        type that nobody answers), so that counts at the other end are exact."""
        script = (
            "import socket, time\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            "s.bind(('eth0', 0))\n"
            f"frame = bytes.fromhex('{dst_mac.replace(':', '')}{(src_mac or src.container_mac).replace(':', '')}"
            f"{ethertype:04x}') + bytes(46)\n"
            f"for i in range({count}):\n"
            "    s.send(frame)\n"
            f"    time.sleep({interval})\n")
        sh(sys.executable, "-c", script, ns=src.container_ns)

    # ---- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        for host in self.hosts:
            self.stop_vxland(host)
        for ns in reversed(self.namespaces):
            # kill whatever still runs inside (iperf3, ping), then remove the namespace
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        if self.workdir:                    # control sockets and logs (already shown on failure)
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""
