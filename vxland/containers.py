"""Real containers for the demo and the tests: Podman or Docker on one host namespace each,
with a store of their own, an image made offline, and a network on vxland's bridge.

    image = build_image_tar(workdir)          # busybox + iperf3, from this host's files
    engine = Podman("vxl-…-h1", workdir)      # or Docker(…): its own store, in that namespace
    engine.load(image)
    engine.add_cni_network("vxnet", …)        # vxland's CNI plugin (Podman, CNI backend), or
    engine.script_env()                       # … scripts/engine-network.sh with this environment
    cid = engine.run("vxnet", "sleep", "1000")
    engine.exec(cid, "ping", "-c", "1", "10.42.0.150")
    engine.close()                            # its containers, its daemon, its store: gone

An engine works in a host's network namespace (`nsenter --net`, not `ip netns exec`, which
remounts /sys and leaves runc without a cgroup mount), so the bridges it makes and the
veths it plugs in are that host's.  Nothing here touches the machine's own engine: Podman
gets a private containers.conf and storage.conf, Docker a daemon of its own (data root,
exec root, socket), stopped by PID.  Some settings are for machines like CI's only, not for
a user's host: see SANDBOX.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .cni import install_plugin

IMAGE = "localhost/vxland-demo"

# What the CI machines need and a user's host normally does not (containers.md): crun refuses
# the hybrid cgroup layout there, so runc with cgroupfs; the sandbox may not raise rlimits, so
# lower default ulimits; no journald, so events go to a file.  Harmless where runc is installed.
SANDBOX = """\
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class EngineError(RuntimeError):
    pass


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise EngineError(f"{tool} is not installed: apt-get install {package}")
    return path


def build_image_tar(workdir: str) -> bytes:
    """A root filesystem holding busybox-static and this host's iperf3 (with the libraries it
    links), as the tar stream that `podman import` and `docker import` take."""
    busybox = _need("busybox", "busybox-static")
    rootfs = os.path.join(workdir, "rootfs")
    for directory in ("bin", "tmp"):
        os.makedirs(os.path.join(rootfs, directory), exist_ok=True)
    shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and not os.path.lexists(os.path.join(rootfs, "bin", applet)):
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    iperf3 = _need("iperf3", "iperf3")
    shutil.copy(iperf3, os.path.join(rootfs, "bin", "iperf3"))
    linked = subprocess.run(["ldd", iperf3], capture_output=True, text=True, check=True).stdout
    for library in (word for line in linked.splitlines() for word in line.split() if word.startswith("/")):
        target = os.path.join(rootfs, library.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(library, target)
    return subprocess.run(["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True).stdout


class Engine:
    """What Podman and Docker have in common: a command line run in one host namespace."""

    command = ""

    def __init__(self, host_ns: str, workdir: str | None) -> None:
        self.host_ns = host_ns
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"vxland-{self.command}-")
        os.makedirs(self.workdir, exist_ok=True)

    def script_env(self) -> dict[str, str]:
        """The environment under which the engine's command line uses this store."""
        return {}

    def cli(self, *args: str, timeout: float = 120, stdin: bytes | None = None) -> str:
        cmd = ["nsenter", f"--net=/run/netns/{self.host_ns}", self.command, *args]
        result = subprocess.run(cmd, capture_output=True, input=stdin, timeout=timeout,
                                env={**os.environ, **self.script_env()})
        if result.returncode != 0:
            raise EngineError(f"{self.command} {' '.join(args[:2])}: "
                              f"{result.stderr.decode(errors='replace').strip()[-600:]}")
        return result.stdout.decode(errors="replace")

    def load(self, image_tar: bytes) -> None:
        self.cli("import", "-", IMAGE, stdin=image_tar)

    def run(self, network: str, *command: str) -> str:
        """A container on `network` running `command`; its id.  (--init: a PID 1 that stops
        at once, where `sleep` would ignore SIGTERM.)"""
        return self.cli("run", "-d", "--init", "--network", network, IMAGE, *command).strip()

    def exec(self, container: str, *command: str, timeout: float = 120) -> str:
        return self.cli("exec", container, *command, timeout=timeout)

    def address(self, container: str, network: str) -> str:
        inspect = json.loads(self.cli("inspect", container))
        return inspect[0]["NetworkSettings"]["Networks"][network]["IPAddress"]

    def remove(self, *containers: str) -> None:
        if containers:
            self.cli("rm", "-f", "-t", "0", *containers)

    def remove_all(self) -> None:
        try:
            self.remove(*self.cli("ps", "-aq").split())
        except (EngineError, subprocess.TimeoutExpired):
            pass

    def close(self) -> None:
        self.remove_all()
        subprocess.run(["rm", "-rf", self.workdir], check=False)


class Podman(Engine):
    """Podman with a private store and configuration.  backend "cni" lets networks be CNI
    conflists (vxland's plugin); "netavark" is Podman's default, used by the recipe."""

    command = "podman"

    def __init__(self, host_ns: str, workdir: str | None = None, backend: str = "cni") -> None:
        _need("podman", "podman runc")
        super().__init__(host_ns, workdir)
        self.network_dir = os.path.join(self.workdir, "networks")
        self.plugins = os.path.join(self.workdir, "cni-bin")
        os.makedirs(self.network_dir, exist_ok=True)
        install_plugin(self.plugins)
        self.conf = os.path.join(self.workdir, "containers.conf")
        with open(self.conf, "w") as f:
            f.write(SANDBOX + f'tmp_dir = "{self.workdir}/tmp"\n[network]\nnetwork_backend = "{backend}"\n'
                    f'network_config_dir = "{self.network_dir}"\n'
                    f'cni_plugin_dirs = ["{self.plugins}", "/usr/lib/cni", "/opt/cni/bin"]\n')
        self.storage = os.path.join(self.workdir, "storage.conf")
        with open(self.storage, "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{self.workdir}/root"\n'
                    f'runroot = "{self.workdir}/runroot"\n')

    def script_env(self) -> dict[str, str]:
        return {"CONTAINERS_CONF": self.conf, "CONTAINERS_STORAGE_CONF": self.storage,
                "PODMAN_NETWORK_DIR": self.network_dir}

    def add_cni_network(self, name: str, *, vni: int, control: str, subnet: str | None = None,
                        ip_range: tuple[str, str] | None = None, mtu: int | None = None) -> str:
        """A CNI network of the vxland plugin: VNI `vni` of the vxland at `control`, addresses from
        `ip_range` of `subnet` (one range per host: hosts never collide) -- or, with neither, from
        the block vxland holds for this host (an etcd network: the same configuration everywhere)."""
        ipam: dict = {"type": "host-local", "dataDir": f"{self.workdir}/ipam"}
        if subnet is not None and ip_range is not None:
            ipam["ranges"] = [[{"subnet": subnet, "rangeStart": ip_range[0], "rangeEnd": ip_range[1]}]]
        plugin = {"type": "vxland", "vni": vni, "control": control, "dataDir": f"{self.workdir}/cni-state",
                  "ipam": ipam}
        if mtu:
            plugin["mtu"] = mtu
        path = os.path.join(self.network_dir, f"{name}.conflist")
        with open(path, "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": name, "plugins": [plugin]}, f, indent=2)
        return path

    def close(self) -> None:
        self.remove_all()
        try:       # their leases live outside the store (/run/containers/networks/ipam.db)
            for network in self.cli("network", "ls", "-q", "--filter", "driver=bridge").split():
                if network != "podman":
                    self.cli("network", "rm", network)
        except (EngineError, subprocess.TimeoutExpired):
            pass
        super().close()


class Docker(Engine):
    """A dockerd of its own in the host namespace (its bridges and iptables rules are that
    namespace's), with its own data root, exec root and socket; stopped by PID."""

    command = "docker"

    def __init__(self, host_ns: str, workdir: str | None = None, wait: float = 60) -> None:
        dockerd = _need("dockerd", "docker.io")
        _need("docker", "docker.io")
        # short: containerd's socket lives under the exec root, and sun_path holds 108 bytes
        super().__init__(host_ns, workdir or tempfile.mkdtemp(prefix="vxd-"))
        self.socket = os.path.join(self.workdir, "docker.sock")
        self.log = open(os.path.join(self.workdir, "dockerd.log"), "ab")
        self.daemon = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{host_ns}", dockerd, "--data-root", f"{self.workdir}/data",
             "--exec-root", f"{self.workdir}/run", "--pidfile", f"{self.workdir}/dockerd.pid",
             "--host", f"unix://{self.socket}"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + wait
        while True:
            if self.daemon.poll() is not None:
                self.close()
                raise EngineError(f"dockerd exited {self.daemon.returncode}: {self._log_tail()}")
            if os.path.exists(self.socket) and subprocess.run(
                    ["docker", "version"], capture_output=True, env={**os.environ, **self.script_env()}).returncode == 0:
                break
            if time.monotonic() > deadline:
                self.close()
                raise EngineError(f"dockerd did not answer within {wait}s: {self._log_tail()}")
            time.sleep(0.2)

    def _log_tail(self) -> str:
        with open(os.path.join(self.workdir, "dockerd.log"), errors="replace") as f:
            return f.read()[-1200:]

    def script_env(self) -> dict[str, str]:
        return {"DOCKER_HOST": f"unix://{self.socket}"}

    def close(self) -> None:
        if self.daemon.poll() is None:
            self.remove_all()
            self.daemon.send_signal(signal.SIGTERM)     # dockerd stops its containerd too
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait()
        self.log.close()
        subprocess.run(["umount", "-R", f"{self.workdir}/data"], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", self.workdir], check=False)
