"""gobgpd, the BGP speaker beside vxland: its configuration file, and the process when vxland
runs it (`[evpn] gobgpd = "run"`, the default).

vxland does not speak BGP itself.  gobgpd (Debian's `gobgpd`) holds the sessions and the
tables; vxland adds its routes and watches everyone else's over gobgpd's gRPC API, which
listens on loopback only.  Run by vxland, gobgpd gets a configuration made from `[evpn]`
(written to a private directory), runs in vxland's network namespace, is restarted if it
dies (counted), and is stopped by PID when vxland stops -- which ends its BGP sessions with a
Cease, so that every peer withdraws this VTEP's routes at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field

from ..errors import VxlandError

log = logging.getLogger("vxland.evpn")


@dataclass(frozen=True)
class Neighbor:
    address: str
    asn: int
    route_reflector_client: bool = False   # with iBGP: reflect routes to it (we are its reflector)
    password: str | None = None            # TCP MD5 signature on the session


@dataclass(frozen=True)
class SpeakerConfig:
    asn: int
    router_id: str
    local: str                       # the VTEP address: BGP's source address, and next hop
    neighbors: tuple[Neighbor, ...] = field(default_factory=tuple)
    hold_time: int = 9               # seconds (FRR's datacenter default: keepalive 3, hold 9)
    port: int = 179


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(config: SpeakerConfig) -> str:
    """gobgpd's TOML for `config`: the global table, and one neighbor per peer with the L2VPN
    EVPN family, our VTEP address as the session's source.

    A VTEP is no transit: it announces its own routes (and, as a route reflector, reflects its
    clients'), never passes on what it learned -- gobgpd would, to eBGP neighbors, with itself
    as the next hop, drawing other VTEPs' traffic to this one.  An export policy says so."""
    keepalive = max(1, config.hold_time // 3)
    clients = [n.address for n in config.neighbors if n.route_reflector_client]
    lines = ["[global.config]", f"  as = {config.asn}", f"  router-id = {_toml_string(config.router_id)}",
             f"  port = {config.port}", f"  local-address-list = [{_toml_string(config.local)}]",
             "[global.apply-policy.config]", '  export-policy-list = ["vxland-export"]',
             '  default-export-policy = "reject-route"', ""]
    if clients:
        lines += ["[[defined-sets.neighbor-sets]]", '  neighbor-set-name = "reflector-clients"',
                  f"  neighbor-info-list = [{', '.join(_toml_string(c) for c in clients)}]", ""]
    lines += ["[[policy-definitions]]", '  name = "vxland-export"', "  [[policy-definitions.statements]]",
              '    name = "our-own"', "    [policy-definitions.statements.conditions.bgp-conditions]",
              '      route-type = "local"', "    [policy-definitions.statements.actions]",
              '      route-disposition = "accept-route"']
    if clients:
        lines += ["  [[policy-definitions.statements]]", '    name = "reflected"',
                  "    [policy-definitions.statements.conditions.match-neighbor-set]",
                  '      neighbor-set = "reflector-clients"',
                  "    [policy-definitions.statements.conditions.bgp-conditions]", '      route-type = "internal"',
                  "    [policy-definitions.statements.actions]", '      route-disposition = "accept-route"']
    lines.append("")
    for n in config.neighbors:
        lines += ["[[neighbors]]", "  [neighbors.config]", f"    neighbor-address = {_toml_string(n.address)}",
                  f"    peer-as = {n.asn}",
                  *([f"    auth-password = {_toml_string(n.password)}"] if n.password else []),
                  "  [neighbors.timers.config]", f"    hold-time = {config.hold_time}",
                  f"    keepalive-interval = {keepalive}", "    connect-retry = 5",
                  "  [neighbors.transport.config]", f"    local-address = {_toml_string(config.local)}"]
        if n.route_reflector_client:
            lines += ["  [neighbors.route-reflector.config]", "    route-reflector-client = true",
                      f"    route-reflector-cluster-id = {_toml_string(config.router_id)}"]
        lines += ["  [[neighbors.afi-safis]]", "    [neighbors.afi-safis.config]",
                  '      afi-safi-name = "l2vpn-evpn"', ""]
    return "\n".join(lines)


class Gobgpd:
    """A gobgpd child process with the configuration `config`, its API on `api`."""

    def __init__(self, config: SpeakerConfig, api: str, binary: str = "gobgpd") -> None:
        path = shutil.which(binary)
        if path is None:
            raise VxlandError("[evpn] needs gobgpd: apt-get install gobgpd (or gobgpd = \"external\" "
                              "with one already running)")
        self.binary, self.api, self.config = path, api, config
        self.directory = tempfile.mkdtemp(prefix="vxland-gobgpd-")
        self.config_path = os.path.join(self.directory, "gobgpd.toml")
        with open(self.config_path, "w") as f:
            f.write(render(config))
        self.process: subprocess.Popen | None = None
        self.starts = 0
        checked = subprocess.run([path, "-f", self.config_path, "-t", "toml", "-d"], capture_output=True, text=True)
        if checked.returncode != 0:
            raise VxlandError(f"gobgpd refuses the configuration made from [evpn]: "
                              f"{(checked.stderr or checked.stdout).strip()[-300:]}")

    def start(self) -> None:
        """Start (or restart) it.  Its log goes to vxland's standard error, plain text."""
        self.process = subprocess.Popen(
            [self.binary, "-f", self.config_path, "-t", "toml", "--api-hosts", self.api, "--pprof-disable",
             "--log-plain", "--log-level", "info"],
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        log.info("evpn: gobgpd started (pid %d), AS %d, router id %s, API %s, %d neighbors",
                 self.process.pid, self.config.asn, self.config.router_id, self.api, len(self.config.neighbors))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_status(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
