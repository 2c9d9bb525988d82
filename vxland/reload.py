"""Reload: what changes between the running configuration and a new one, or why it cannot.

Sans-IO: two DaemonConfigs in, a ReloadPlan out.  The daemon carries a plan out live
(Daemon.reload): networks removed and added (their TAPs deleted and created), and for
every network that stays, only what changed -- its flood list, group, static entries,
ageing, cap, acceptance, TAP MTU and bridge, and the daemon-wide outer-header options.
A network that did not change is not touched: its TAP, learned entries and counters
stay, and no frame is dropped.

What a running daemon cannot change (its underlay address, port, data path, offloads,
control socket, user, the [evpn] section) refuses the whole reload, with one line; so does
a TAP that would move from one VNI to another within one reload.  A network may start or
stop using EVPN (or change its route target) live.

The plan is the difference between the previous *file* and the new one: peers and static
entries added or removed through the control socket stay as they are, unless the file's
change touches the same peer or MAC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import DaemonConfig, NetworkSpec

#: Set at start, for the life of the daemon.
FIXED = ("local", "port", "datapath", "offloads", "datapath_thread", "queues", "datapath_threads", "control",
         "user", "evpn", "etcd")
#: Daemon-wide options that every network's data path carries.
OUTER = ("source_ports", "ttl", "group_ttl", "tos", "df", "reserved_bits", "inner_vlan")


@dataclass
class NetworkChange:
    """How one network that stays changes; each field is None or empty if it does not."""
    old: NetworkSpec
    new: NetworkSpec
    peers_added: list[str] = field(default_factory=list)
    peers_removed: list[str] = field(default_factory=list)
    static_set: list = field(default_factory=list)          # StaticEntry: new or moved
    static_removed: list = field(default_factory=list)      # StaticEntry of the old file
    group: bool = False
    limits: bool = False                                    # ageing or max_learned
    acceptance: bool = False
    data_path: bool = False                                 # learning or the TAP's MTU
    mtu: bool = False
    bridge: bool = False
    evpn: bool = False                                      # evpn or route_target
    etcd: bool = False                                      # etcd, subnets or block lengths

    @property
    def plane(self) -> bool:
        """The network's control plane changes: it leaves the old one (if any), joins the new."""
        return self.evpn or self.etcd


    def describe(self) -> str:
        parts = []
        if self.peers_added or self.peers_removed:
            parts.append("peers " + " ".join([*(f"+{p}" for p in self.peers_added),
                                              *(f"-{p}" for p in self.peers_removed)]))
        if self.static_set or self.static_removed:
            parts.append(f"static +{len(self.static_set)} -{len(self.static_removed)}")
        for flag, text in ((self.group, f"group {self.old.group} -> {self.new.group}"),
                           (self.limits, f"ageing {self.new.ageing:g}, max_learned {self.new.max_learned}"
                                         + (f", max_evpn {self.new.max_evpn}" if self.new.evpn else "")),
                           (self.acceptance, f"accept_from {self.new.accept_from or 'the daemon'}"),
                           (self.mtu, f"mtu {self.old.mtu} -> {self.new.mtu}"),
                           (self.bridge, f"bridge {self.old.bridge} -> {self.new.bridge}"),
                           (self.data_path and self.old.learning != self.new.learning,
                            f"learning {'on' if self.new.learning else 'off'}"),
                           (self.old.neigh_suppress != self.new.neigh_suppress,
                            f"neigh_suppress {'on' if self.new.neigh_suppress else 'off'}"),
                           (self.evpn, f"evpn {'on' if self.new.evpn else 'off'}"
                                       f"{', route target ' + self.new.route_target if self.new.route_target else ''}"),
                           (self.etcd, f"etcd {'on' if self.new.etcd else 'off'}"
                                       f"{', subnets ' + ' '.join(self.new.subnets) if self.new.subnets else ''}"),
                           (self.old.learns_remote != self.new.learns_remote,
                            f"learn_remote {'on' if self.new.learns_remote else 'off'}")):
            if flag:
                parts.append(text)
        return f"VNI {self.new.vni}: " + ", ".join(parts)


@dataclass
class ReloadPlan:
    refused: str | None = None
    removed: list[NetworkSpec] = field(default_factory=list)
    added: list[NetworkSpec] = field(default_factory=list)
    changed: list[NetworkChange] = field(default_factory=list)
    outer: list[str] = field(default_factory=list)          # daemon-wide outer-header options changed
    acceptance: bool = False                                # daemon-wide accept_from/prefixes
    metrics: bool = False

    @property
    def empty(self) -> bool:
        return not (self.removed or self.added or self.changed or self.outer or self.acceptance or self.metrics)

    def describe(self) -> list[str]:
        lines = [f"+VNI {n.vni} on {n.tap}" for n in self.added]
        lines += [f"-VNI {n.vni} on {n.tap}" for n in self.removed]
        lines += [c.describe() for c in self.changed]
        lines += self.outer
        if self.acceptance:
            lines.append("accept_from / accept_prefixes")
        if self.metrics:
            lines.append("metrics")
        return lines or ["nothing changed"]


def plan_reload(old: DaemonConfig, new: DaemonConfig) -> ReloadPlan:
    for name in FIXED:
        if getattr(old, name) != getattr(new, name):
            return ReloadPlan(refused=f"{name} cannot change while vxland runs ({getattr(old, name)!r} -> "
                                      f"{getattr(new, name)!r}): restart it for that")
    before = {n.vni: n for n in old.networks}
    after = {n.vni: n for n in new.networks}
    plan = ReloadPlan(outer=[f"{k} {getattr(old, k)} -> {getattr(new, k)}" for k in OUTER
                             if getattr(old, k) != getattr(new, k)],
                      acceptance=(old.accept_from, old.accept_prefixes) != (new.accept_from, new.accept_prefixes),
                      metrics=(old.metrics, old.metrics_allow) != (new.metrics, new.metrics_allow))
    plan.removed = [n for vni, n in before.items() if vni not in after or after[vni].tap != n.tap]
    plan.added = [n for vni, n in after.items() if vni not in before or before[vni].tap != n.tap]
    leaving = {n.tap: n.vni for n in plan.removed}
    for n in plan.added:
        if n.tap in leaving and leaving[n.tap] != n.vni:
            return ReloadPlan(refused=f"TAP {n.tap} would move from VNI {leaving[n.tap]} to VNI {n.vni} in one "
                                      "reload: remove it in one, add it in the next")
    for vni, n in after.items():
        o = before.get(vni)
        if o is None or o.tap != n.tap or o == n:
            continue
        change = NetworkChange(o, n)
        change.peers_added = [p for p in n.peers if p not in o.peers]
        change.peers_removed = [p for p in o.peers if p not in n.peers]
        old_static = {s.mac: s for s in o.static}
        new_static = {s.mac: s for s in n.static}
        change.static_set = [s for mac, s in new_static.items() if old_static.get(mac) != s]
        change.static_removed = [s for mac, s in old_static.items() if mac not in new_static]
        change.group = o.group != n.group
        change.limits = (o.ageing, o.max_learned, o.max_evpn) != (n.ageing, n.max_learned, n.max_evpn)
        change.acceptance = (o.accept_from, o.accept_prefixes) != (n.accept_from, n.accept_prefixes)
        change.mtu = o.mtu != n.mtu
        change.bridge = o.bridge != n.bridge
        change.evpn = (o.evpn, o.route_target) != (n.evpn, n.route_target)
        change.etcd = (o.etcd, o.subnets, o.block_prefix, o.block_prefix6) != \
            (n.etcd, n.subnets, n.block_prefix, n.block_prefix6)
        change.data_path = (o.learning != n.learning or o.neigh_suppress != n.neigh_suppress or change.mtu
                            or o.learns_remote != n.learns_remote or o.evpn != n.evpn or o.etcd != n.etcd)
        plan.changed.append(change)
    return plan
