"""The vxland CNI plugin (CNI spec 1.0.0): a container on a vxland network.

A container runtime runs it (installed as /opt/cni/bin/vxland) with the CNI_* environment
variables and the network configuration on stdin:

    {"cniVersion": "1.0.0", "name": "vxnet", "type": "vxland",
     "vni": 42,                                  # the vxland network to join
     "control": "/run/vxland/vxland.sock",       # optional: the daemon's control socket
     "mtu": 1450,                                # optional: default the MTU vxland reports
     "dataDir": "/var/lib/cni/vxland",           # optional: what DEL needs to undo ADD
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.42.0.0/24",
              "rangeStart": "10.42.0.2", "rangeEnd": "10.42.0.127"}]]}}

With an etcd network (vxland/etcd), the IPAM section needs no ranges -- {"type": "host-local"}
-- and one identical configuration serves every host: ADD asks vxland for the address blocks
this host holds and gives host-local one range per block (the whole overlay subnet on-link,
addresses from the block only).  A host that holds no block (its lease lost, or none free)
refuses ADD with "try again later" rather than risk a duplicate address.

ADD asks vxland which bridge the VNI's TAP is on and which MTU fits the overlay, makes a
veth pair (one end in that bridge, the other CNI_IFNAME in CNI_NETNS with that MTU), gets
addresses from the IPAM plugin the config names (from CNI_PATH: one range per host of one
shared subnet, and hosts never collide), sets them and the IPAM routes in the container,
and tells vxland the container's MAC and addresses -- a local static entry, known before its
first frame (and, with EVPN, announced).  DEL undoes all of it, and succeeds when there is
nothing left to undo.  CHECK verifies it.  VERSION says which versions it speaks.  Errors
are CNI error objects on stdout with the spec's codes, and a non-zero exit.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import os
import subprocess
import sys
from typing import Any

from . import control
from .config import DEFAULT_CONTROL
from .errors import VxlandError

SUPPORTED = ["0.4.0", "1.0.0"]
DATA_DIR = "/var/lib/cni/vxland"
KNOWN_KEYS = {"cniVersion", "name", "type", "vni", "control", "mtu", "dataDir", "ipam", "dns", "args",
              "prevResult", "runtimeConfig", "capabilities"}

# The spec's well-known error codes.
INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, INVALID_ENVIRONMENT = 1, 2, 3, 4
IO_FAILURE, DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER = 5, 6, 7, 11
PLUGIN_FAILURE = 100                       # vxland's own: a step of ADD/CHECK that did not work


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg,
                **({"details": self.details} if self.details else {})}


# ---- the request ------------------------------------------------------------------------------

class Request:
    """CNI_* variables and the network configuration, checked."""

    def __init__(self, environ: dict[str, str], stdin: bytes) -> None:
        self.command = environ.get("CNI_COMMAND", "")
        if self.command not in ("ADD", "DEL", "CHECK", "VERSION"):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {self.command!r} is not ADD, DEL, CHECK or VERSION")
        try:
            config = json.loads(stdin or b"{}")
        except ValueError as e:
            raise CniError(DECODE_FAILURE, "the network configuration is not JSON", str(e)) from None
        if not isinstance(config, dict):
            raise CniError(DECODE_FAILURE, "the network configuration is not a JSON object")
        self.config = config
        self.version = config.get("cniVersion", "1.0.0")
        if self.command == "VERSION":
            return
        if self.version not in SUPPORTED:
            raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {self.version!r} is not one of {', '.join(SUPPORTED)}")
        missing = [v for v in ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH") + (("CNI_NETNS",) if self.command != "DEL"
                                                                                else ()) if not environ.get(v)]
        if missing:
            raise CniError(INVALID_ENVIRONMENT, f"missing {', '.join(missing)}")
        self.container = environ["CNI_CONTAINERID"]
        self.ifname = environ["CNI_IFNAME"]
        self.netns = environ.get("CNI_NETNS", "")
        self.path = environ["CNI_PATH"].split(os.pathsep)
        self.environ = environ
        unknown = sorted(set(config) - KNOWN_KEYS)
        if unknown:
            raise CniError(UNSUPPORTED_FIELD, f"unsupported field {unknown[0]}={json.dumps(config[unknown[0]])[:80]}")
        vni = config.get("vni")
        if not isinstance(vni, int) or isinstance(vni, bool) or not 0 <= vni < 1 << 24:
            raise CniError(INVALID_CONFIG, f"vni must be the VNI of a vxland network (0..16777215), not {vni!r}")
        self.vni = vni
        self.control = config.get("control", DEFAULT_CONTROL)
        self.mtu = config.get("mtu")
        if self.mtu is not None and (not isinstance(self.mtu, int) or not 68 <= self.mtu <= 65535):
            raise CniError(INVALID_CONFIG, f"mtu must be 68..65535, not {self.mtu!r}")
        ipam = config.get("ipam")
        if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or "/" in ipam["type"]:
            raise CniError(INVALID_CONFIG, "ipam must name an IPAM plugin: {\"type\": \"host-local\", ...}")
        self.data_dir = config.get("dataDir", DATA_DIR)
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise CniError(INVALID_CONFIG, "dataDir must be a directory path")

    @property
    def host_ifname(self) -> str:
        """The host end of the veth: stable for a container and interface, at most 15 bytes."""
        return "vx" + hashlib.sha256(f"{self.container}/{self.ifname}".encode()).hexdigest()[:11]

    @property
    def state_path(self) -> str:
        name = hashlib.sha256(f"{self.container}/{self.ifname}".encode()).hexdigest()[:32]
        return os.path.join(self.data_dir, name)


# ---- vxland and the IPAM plugin -------------------------------------------------------------

def ask_vxland(request: Request, verb: str, args: dict[str, Any]) -> Any:
    try:
        return control.request(request.control, verb, args)
    except VxlandError as e:
        text = str(e)
        code = (TRY_AGAIN_LATER if "cannot reach" in text or "did not answer" in text
                else INVALID_CONFIG if "no network with VNI" in text else PLUGIN_FAILURE)
        raise CniError(code, f"vxland: {text}") from None


def network_of(request: Request) -> dict[str, Any]:
    rows = ask_vxland(request, "networks.show", {"vni": request.vni})
    network = rows[0]
    if not network.get("bridge"):
        raise CniError(INVALID_CONFIG, f"vxland's VNI {request.vni} has no bridge to attach containers to "
                                       "(give the network a bridge in vxland's config)")
    return network


def with_blocks(request: Request, network: dict[str, Any]) -> None:
    """An IPAM section without ranges, on a network whose addresses come from etcd blocks: the
    ranges of the blocks this host holds, filled in for ADD (and recorded for DEL and CHECK)."""
    ipam_config = request.config["ipam"]
    addresses = network.get("addresses")
    if addresses is None or _has_ranges(request):
        return
    if addresses.get("state") != "held" or not addresses.get("blocks"):
        raise CniError(TRY_AGAIN_LATER, f"vxland holds no address block for VNI {request.vni} (block state "
                                        f"{addresses.get('state')!r}; see `vxland etcd show`): no address is "
                                        "handed out rather than one that may collide")
    request.config["ipam"] = {**ipam_config, "ranges": [
        [{"subnet": b["subnet"], "rangeStart": b["first"], "rangeEnd": b["last"]}] for b in addresses["blocks"]]}


def ipam(request: Request, command: str) -> dict[str, Any]:
    """Run the IPAM plugin the config names, with the same environment and configuration."""
    kind = request.config["ipam"]["type"]
    for directory in request.path:
        plugin = os.path.join(directory, kind)
        if os.access(plugin, os.X_OK):
            break
    else:
        raise CniError(INVALID_CONFIG, f"IPAM plugin {kind} is not in CNI_PATH ({':'.join(request.path)})")
    config = {k: v for k, v in request.config.items() if k != "prevResult" or command != "ADD"}
    try:
        out = subprocess.run([plugin], input=json.dumps(config).encode(), capture_output=True, timeout=60,
                             env={**request.environ, "CNI_COMMAND": command})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(IO_FAILURE, f"cannot run IPAM plugin {kind}: {e}") from None
    try:
        answer = json.loads(out.stdout or b"{}")
    except ValueError:
        answer = {}
    if out.returncode != 0:
        message = f"IPAM plugin {kind}: {answer.get('msg', 'failed')}"
        if "no IP addresses available" in message and request.config["ipam"].get("ranges"):
            message += (" -- this host's address block is full (one block per host: a longer block_prefix in the "
                        "network's etcd addressing gives each host more)")
        raise CniError(int(answer.get("code", PLUGIN_FAILURE)), message,
                       answer.get("details", out.stderr.decode(errors="replace")[-300:]))
    return answer


# ---- the commands ----------------------------------------------------------------------------

def _links_in(netns: str, name: str) -> bool:
    """Is there an interface `name` in the namespace at path `netns`?"""
    from pyroute2 import NetNS
    ns = NetNS(netns)
    try:
        return bool(ns.link_lookup(ifname=name))
    finally:
        ns.close()


def add(request: Request) -> dict[str, Any]:
    """Attach the container, as the CNI reference plugins do: each step's undo is registered
    before the next step, and a failure undoes exactly what this ADD made -- in reverse, the
    IPAM lease included -- never an interface it did not create."""
    from pyroute2 import IPRoute, NetNS            # netlink: only here, where it is needed
    network = network_of(request)
    with_blocks(request, network)
    mtu = request.mtu or network["mtu"]
    if not os.path.exists(request.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {request.netns} does not exist")
    if _links_in(request.netns, request.ifname):
        raise CniError(PLUGIN_FAILURE, f"{request.ifname} already exists in {request.netns}: left as it is "
                                       "(a second ADD for this container and interface? DEL the first)")
    host, peer = request.host_ifname, request.host_ifname + "p"
    undo: list[tuple[str, Any]] = []
    try:
        undo.append(("the IPAM lease", lambda: ipam(request, "DEL")))    # before: an ADD cut short may hold one
        addresses = ipam(request, "ADD")
        with IPRoute() as ipr:
            bridge = ipr.link_lookup(ifname=network["bridge"])
            if not bridge:
                raise CniError(PLUGIN_FAILURE, f"bridge {network['bridge']} of VNI {request.vni} does not exist")
            stale = ipr.link_lookup(ifname=host)    # named for this container and interface: left by an
            if stale:                               # ADD that died half-way, so ours to replace
                ipr.link("del", index=stale[0])
            ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": request.netns})
            undo.append(("the veth", lambda: _delete_host_end(host)))
            index = ipr.link_lookup(ifname=host)[0]
            ipr.link("set", index=index, mtu=mtu, master=bridge[0], state="up")
            host_mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
        ns = NetNS(request.netns)
        try:
            index = ns.link_lookup(ifname=peer)[0]
            ns.link("set", index=index, ifname=request.ifname, mtu=mtu, state="up")
            mac = ns.get_links(index)[0].get_attr("IFLA_ADDRESS")
            ips = []
            for ip in addresses.get("ips", []):
                interface = ipaddress.ip_interface(ip["address"])
                ns.addr("add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
                ips.append({"address": ip["address"], **({"gateway": ip["gateway"]} if ip.get("gateway") else {}),
                            "interface": 1})
            for route in addresses.get("routes", []):
                gateway = route.get("gw") or next((ip.get("gateway") for ip in addresses.get("ips", [])
                                                   if ip.get("gateway")), None)
                ns.route("add", dst=route["dst"], oif=index, **({"gateway": gateway} if gateway else {}))
        finally:
            ns.close()
        first_ip = str(ipaddress.ip_interface(ips[0]["address"]).ip) if ips else None
        undo.append(("vxland's entry", lambda: _forget(request, request.control, mac)))   # a timeout may have added it
        ask_vxland(request, "fdb.add", {"mac": mac, "vni": request.vni, "local": True,
                                        **({"ip": first_ip} if first_ip else {})})
        _record(request, {"vni": request.vni, "mac": mac, "ip": first_ip, "control": request.control, "host": host,
                          "ranges": request.config["ipam"].get("ranges")})
    except Exception as e:
        for what, step in reversed(undo):
            try:
                step()
            except Exception as failed:                # said, and the rest is still undone
                sys.stderr.write(f"vxland CNI: undoing {what}: {failed}\n")
        if isinstance(e, CniError):
            raise
        raise CniError(PLUGIN_FAILURE, f"cannot attach {request.ifname} to VNI {request.vni}: {e}") from None
    return {"cniVersion": request.version,
            "interfaces": [{"name": host, "mac": host_mac}, {"name": request.ifname, "mac": mac,
                                                               "sandbox": request.netns}],
            "ips": ips, "routes": addresses.get("routes", []),
            "dns": request.config.get("dns") or addresses.get("dns") or {}}


def _record(request: Request, state: dict[str, Any]) -> None:
    """What DEL needs to undo ADD -- and what vxland reads to give the container its entry back
    after a restart (vxland/attachments.py): no secret, readable by the user vxland runs as."""
    os.makedirs(request.data_dir, mode=0o755, exist_ok=True)
    if os.stat(request.data_dir).st_mode & 0o777 != 0o755:
        os.chmod(request.data_dir, 0o755)          # one an older plugin made 0700: vxland must read it
    partial = request.state_path + ".new"
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w") as f:
        json.dump(state, f)
    os.replace(partial, request.state_path)


def _delete_host_end(host: str) -> None:
    """Delete the host end of a container's veth, which takes the container's end with it: the
    only interface the plugin ever deletes is one named for its own container and interface."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=host)
        if found:
            ipr.link("del", index=found[0])


def _forget(request: Request, where: str, mac: str) -> None:
    """vxland's entry for `mac` removed.  Already gone, or vxland not running (its tables went
    with it): nothing to undo.  Not answering in time: try again later -- never a success that
    leaves a static entry behind."""
    try:
        control.request(where, "fdb.del", {"mac": mac, "vni": request.vni})
    except VxlandError as e:
        text = str(e)
        if "no entry for" in text or "cannot reach" in text or "no network with VNI" in text:
            return
        raise CniError(TRY_AGAIN_LATER, f"vxland: {text}") from None


def delete(request: Request) -> None:
    """Everything ADD did, undone; nothing left to undo is success."""
    state: dict[str, Any] = {}
    try:
        with open(request.state_path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        pass
    if not isinstance(state, dict):
        state = {}
    mac = state.get("mac") or next((i.get("mac") for i in (request.config.get("prevResult") or {}).get("interfaces", [])
                                    if isinstance(i, dict) and i.get("sandbox")), None)
    try:
        _delete_host_end(request.host_ifname)   # first the veth, so that no frame of the container is learned again
    except Exception as e:
        raise CniError(PLUGIN_FAILURE, f"cannot delete {request.host_ifname}: {e}") from None
    if isinstance(mac, str):
        _forget(request, state["control"] if isinstance(state.get("control"), str) else request.control, mac)
    _recorded_ranges(request, state)
    if not _has_ranges(request):                       # no record of an ADD (a killed one?): host-local
        request.config["ipam"] = {**request.config["ipam"], "ranges": PLACEHOLDER_RANGES}   # releases by
    ipam(request, "DEL")                               # container and interface, whatever the ranges
    try:
        os.unlink(request.state_path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):      # nothing recorded: nothing to remove
            raise CniError(IO_FAILURE, f"cannot remove {request.state_path}: {e.strerror}") from None


#: What DEL gives host-local when neither the configuration nor a record of ADD has ranges: it
#: needs some to start, and releases by container ID and interface whatever they are.
PLACEHOLDER_RANGES = [[{"subnet": "192.0.2.0/24"}]]


def _has_ranges(request: Request) -> bool:
    """Does the IPAM section say where addresses come from?  (Only host-local's is filled in.)"""
    ipam_config = request.config["ipam"]
    return "ranges" in ipam_config or "subnet" in ipam_config or ipam_config.get("type") != "host-local"


def _recorded_ranges(request: Request, state: dict[str, Any]) -> None:
    """The ranges ADD gave the IPAM plugin from vxland's blocks, for DEL and CHECK (which must
    work on what ADD did, also while vxland is down or holds another block now)."""
    ranges = state.get("ranges")
    if isinstance(ranges, list) and ranges and not _has_ranges(request):
        request.config["ipam"] = {**request.config["ipam"], "ranges": ranges}


def check(request: Request) -> None:
    from pyroute2 import IPRoute, NetNS
    previous = request.config.get("prevResult")
    if not isinstance(previous, dict):
        raise CniError(INVALID_CONFIG, "CHECK needs the prevResult of ADD")
    network = network_of(request)
    container = next((i for i in previous.get("interfaces", []) if i.get("sandbox")), None)
    if container is None or not os.path.exists(request.netns):
        raise CniError(UNKNOWN_CONTAINER, f"no container interface in {request.netns}")
    ns = NetNS(request.netns)
    try:
        found = ns.link_lookup(ifname=request.ifname)
        if not found:
            raise CniError(PLUGIN_FAILURE, f"{request.ifname} is gone from {request.netns}")
        link = ns.get_links(found[0])[0]
        if link.get_attr("IFLA_ADDRESS") != container["mac"]:
            raise CniError(PLUGIN_FAILURE, f"{request.ifname} has MAC {link.get_attr('IFLA_ADDRESS')}, "
                                           f"not {container['mac']}")
        have = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ns.get_addr(index=found[0])}
        for ip in previous.get("ips", []):
            if ip["address"] not in have:
                raise CniError(PLUGIN_FAILURE, f"{request.ifname} lost its address {ip['address']}")
    finally:
        ns.close()
    with IPRoute() as ipr:
        host = ipr.link_lookup(ifname=request.host_ifname)
        bridge = ipr.link_lookup(ifname=network["bridge"])
        if not host or not bridge or ipr.get_links(host[0])[0].get_attr("IFLA_MASTER") != bridge[0]:
            raise CniError(PLUGIN_FAILURE, f"{request.host_ifname} is not in bridge {network['bridge']}")
    entries = ask_vxland(request, "fdb.show", {"vni": request.vni})
    if not any(e["mac"] == container["mac"] and e["static"] and "port" in e for e in entries):
        raise CniError(PLUGIN_FAILURE, f"vxland does not know {container['mac']} in VNI {request.vni}")
    try:
        with open(request.state_path) as f:
            _recorded_ranges(request, json.load(f))
    except (OSError, ValueError, AttributeError):
        pass
    ipam(request, "CHECK")


def run(environ: dict[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """One plugin invocation: (exit status, what to print on stdout)."""
    version = "1.0.0"
    try:
        request = Request(environ, stdin)
        version = request.version if request.version in SUPPORTED else version
        if request.command == "VERSION":
            return 0, {"cniVersion": version, "supportedVersions": SUPPORTED}
        if request.command == "ADD":
            result = add(request)
            if version == "0.4.0":                     # the older result says each address's version
                for ip in result["ips"]:
                    ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
            return 0, result
        if request.command == "DEL":
            delete(request)
        else:
            check(request)
        return 0, None
    except CniError as e:
        return 1, e.to_json(version)
    except Exception as e:                             # a bug: still an error object, never a traceback
        return 1, CniError(PLUGIN_FAILURE, f"internal error: {e.__class__.__name__}: {e}").to_json(version)


def install_plugin(directory: str) -> str:
    """Make `directory`/vxland (a runtime's plugin directory, /opt/cni/bin by default) an
    executable that runs this installation's plugin; its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "vxland")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(path + ".new", "w") as f:
        f.write(f'#!/bin/sh\n# the vxland CNI plugin (vxland/cni.py)\nPYTHONPATH={root} exec {sys.executable} -m vxland.cni "$@"\n')
    os.chmod(path + ".new", 0o755)
    os.replace(path + ".new", path)
    return path


def main() -> int:
    status, output = run(dict(os.environ), sys.stdin.buffer.read())
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
