"""FRR (Debian's `frr`) as an EVPN peer in a host namespace: zebra and bgpd, and the kernel's
VXLAN as its VTEP, in the host's bridge -- the way switches, SONiC and Cumulus hosts run it.

Nothing of the machine's own FRR is used or changed: the daemons run as the `frr` user (in
group frrvty, as the package makes it) with a configuration, pid files, sockets and logs in
a private directory, and are stopped by PID.  vtysh finds them through --vty_socket and reads
a vtysh.conf (`username root nopassword`) from the same directory.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

from vxland.topology import Host, sh

DAEMONS = ("zebra", "bgpd")


class Frr:
    def __init__(self, host: Host, *, asn: int, vni: int, neighbors: list[tuple[str, int]],
                 svi: str | None = None, passwords: dict[str, str] | None = None) -> None:
        """FRR on `host` with a kernel VTEP for `vni` (dev vx<vni>, nolearning, in br0), BGP AS
        `asn` with EVPN sessions to `neighbors` ((address, asn): iBGP or eBGP), advertise-all-vni.
        `svi`: an address for br0 (FRR installs neighbour entries only with one); `passwords`:
        TCP MD5 secrets by neighbor address."""
        # its own directory under /tmp: the frr user must reach it (a test's tmp_path is root's alone)
        directory = tempfile.mkdtemp(prefix=f"vxland-frr-{host.ns}-")
        self.host, self.directory, self.vni = host, directory, vni
        self.device = f"vx{vni}"
        ns = host.ns
        sh("ip", "-n", ns, "link", "add", self.device, "type", "vxlan", "id", str(vni), "local", host.underlay_ip,
           "dstport", "4789", "nolearning")
        sh("ip", "-n", ns, "link", "set", self.device, "master", "br0", "up")
        if svi:
            sh("ip", "-n", ns, "addr", "add", svi, "dev", "br0")
        lines = ["frr defaults datacenter", f"hostname {ns}", f"router bgp {asn}",
                 f" bgp router-id {host.underlay_ip}", " no bgp default ipv4-unicast"]
        lines += [f" neighbor {address} remote-as {peer_as}" for address, peer_as in neighbors]
        lines += [f" neighbor {address} password {secret}" for address, secret in (passwords or {}).items()]
        lines += [" address-family l2vpn evpn"] + [f"  neighbor {a} activate" for a, _ in neighbors]
        lines += ["  advertise-all-vni", " exit-address-family", ""]
        self._write("bgpd.conf", "\n".join(lines))
        self._write("zebra.conf", f"hostname {ns}\n")
        self._write("vtysh.conf", "username root nopassword\n")
        uid, gid = pwd.getpwnam("frr").pw_uid, grp.getgrnam("frr").gr_gid
        os.chown(directory, uid, gid)
        for name in os.listdir(directory):
            os.chown(os.path.join(directory, name), uid, gid)
        self._common = ["-u", "frr", "-g", "frr", "-z", f"{directory}/zserv.api", "--vty_socket", directory,
                        "-A", "127.0.0.1", "--log", f"file:{directory}/frr.log"]
        try:
            for daemon in DAEMONS:
                self._start(daemon)
        except BaseException:
            self.stop()
            raise

    def _start(self, daemon: str) -> None:
        pidfile = os.path.join(self.directory, f"{daemon}.pid")
        if os.path.exists(pidfile):                     # left by one that was killed
            os.unlink(pidfile)
        sh("ip", "netns", "exec", self.host.ns, f"/usr/lib/frr/{daemon}", "-d", "-f",
           f"{self.directory}/{daemon}.conf", "-i", pidfile, *self._common)
        self._wait_for(pidfile)

    def restart(self, daemon: str) -> None:
        """Start `daemon` again (after it was killed), as it was started."""
        self._start(daemon)

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.directory, name), "w") as f:
            f.write(text)

    @staticmethod
    def _wait_for(path: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"FRR did not write {path}")
            time.sleep(0.05)

    def vtysh(self, *commands: str) -> str:
        args = [a for c in commands for a in ("-c", c)]
        out = subprocess.run(["ip", "netns", "exec", self.host.ns, "vtysh", "--vty_socket", self.directory,
                              "--config_dir", self.directory, *args], capture_output=True, text=True, timeout=30)
        return out.stdout + out.stderr

    def kernel_fdb(self) -> str:
        return sh("bridge", "-n", self.host.ns, "fdb", "show", "dev", self.device).stdout

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, "frr.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Each daemon by the PID it wrote, then the directory."""
        for daemon in reversed(DAEMONS):
            try:
                with open(os.path.join(self.directory, f"{daemon}.pid")) as f:
                    pid = int(f.read())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)
