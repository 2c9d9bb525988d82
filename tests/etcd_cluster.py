"""A cluster of Debian's etcd, one member per network namespace, on a topology's underlay
switch (../shared/reference/etcd.md): members at 192.0.2.101.. (2001:db8::101.. on an IPv6
underlay), each started, killed (SIGKILL, by PID) and restarted on its own; with `tls`, every
member and client speaks TLS with client certificates (a CA made for the run)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from vxland.topology import Topology, sh

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"


def make_ca(directory: str, ips: list[str]) -> dict[str, str]:
    """A CA, a server certificate for `ips` and a client certificate, by openssl: their paths."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=vxland test CA", "-keyout", "ca.key", "-out", "ca.pem")
    sans = ",".join(f"IP:{ip}" for ip in ips + ["127.0.0.1"])
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        with open(os.path.join(directory, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName={sans}\nextendedKeyUsage={usage}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    for name in ("ca.key", "server.key", "client.key"):
        os.chmod(os.path.join(directory, name), 0o600)
    return {"ca": os.path.join(directory, "ca.pem"), "cert": os.path.join(directory, "client.pem"),
            "key": os.path.join(directory, "client.key"),
            "server_cert": os.path.join(directory, "server.pem"), "server_key": os.path.join(directory, "server.key")}


class EtcdCluster:
    def __init__(self, topology: Topology, members: int = 3, tls: bool = False) -> None:
        self.t = topology
        self.ipv6 = topology.ipv6
        self.ips = [f"2001:db8::{101 + i}" if self.ipv6 else f"192.0.2.{101 + i}" for i in range(members)]
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen | None] = [None] * members
        self.data = tempfile.mkdtemp(prefix=f"vxland-etcd-{topology.tag}-", dir="/dev/shm")
        self.certs = make_ca(self.data, self.ips) if tls else None
        self.scheme = "https" if tls else "http"
        switch = f"vxl-{topology.tag}-sw"
        for i, ip in enumerate(self.ips):
            ns = topology.namespace(f"e{i + 1}")
            self.namespaces.append(ns)
            sh("ip", "-n", switch, "link", "add", f"e{i + 1}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", switch, "link", "set", f"e{i + 1}", "master", "br0", "up")
            if self.ipv6:
                sh("sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=0", ns=ns)
                sh("ip", "-n", ns, "addr", "add", f"{ip}/64", "dev", "eth0", "nodad")
            else:
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def url(self, i: int, port: int = 2379) -> str:
        ip = self.ips[i]
        return f"{self.scheme}://[{ip}]:{port}" if self.ipv6 else f"{self.scheme}://{ip}:{port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.url(i) for i in range(len(self.ips))]

    def start(self, i: int | None = None) -> None:
        """Member i (all, with None) started -- again, after a kill: its data directory stays."""
        for j in range(len(self.ips)) if i is None else [i]:
            peers = ",".join(f"m{k + 1}={self.url(k, 2380)}" for k in range(len(self.ips)))
            cmd = [ETCD, "--name", f"m{j + 1}", "--data-dir", os.path.join(self.data, f"m{j + 1}"),
                   "--listen-peer-urls", self.url(j, 2380), "--initial-advertise-peer-urls", self.url(j, 2380),
                   "--listen-client-urls", self.url(j), "--advertise-client-urls", self.url(j),
                   "--initial-cluster", peers, "--initial-cluster-state", "new",
                   "--initial-cluster-token", f"vxland-{self.t.tag}", "--logger=zap", "--log-level", "warn"]
            if self.certs:
                c = self.certs
                cmd += ["--cert-file", c["server_cert"], "--key-file", c["server_key"], "--trusted-ca-file", c["ca"],
                        "--client-cert-auth", "--peer-cert-file", c["server_cert"], "--peer-key-file",
                        c["server_key"], "--peer-trusted-ca-file", c["ca"], "--peer-client-cert-auth"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
            log = open(os.path.join(self.data, f"m{j + 1}.log"), "ab")
            self.processes[j] = subprocess.Popen(["ip", "netns", "exec", self.namespaces[j], *cmd], stdout=log,
                                                 stderr=log, stdin=subprocess.DEVNULL, env=env)
            log.close()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ctl("endpoint", "health", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd not healthy within {timeout:.0f} s: {self.ctl('endpoint', 'health', check=False).stderr}")
            time.sleep(0.3)

    def kill(self, i: int) -> None:
        """SIGKILL member i, by the PID it was started with."""
        p, self.processes[i] = self.processes[i], None
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)          # `ip netns exec` execs etcd: the PID is etcd's
            p.wait()

    def ctl(self, *args: str, check: bool = True, endpoints: list[str] | None = None) -> subprocess.CompletedProcess:
        """etcdctl against the cluster, from the first host's namespace (which can reach it)."""
        tls = ["--cacert", self.certs["ca"], "--cert", self.certs["cert"], "--key", self.certs["key"]] \
            if self.certs else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        cmd = ["ip", "netns", "exec", self.t.hosts[0].ns, ETCDCTL, "--endpoints", ",".join(endpoints or self.endpoints),
               "--dial-timeout", "2s", "--command-timeout", "5s", *tls, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)
        if check and out.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {out.stderr.strip()}")
        return out

    def close(self) -> None:
        for i in range(len(self.ips)):
            self.kill(i)
        shutil.rmtree(self.data, ignore_errors=True)
