#!/usr/bin/env bash
# A container engine's bridge network on a vxland network: containers that Podman or Docker
# starts on this host join the VNI's bridge, and so the containers of every other host on the
# same VNI.  Run it on each host, as root, after vxland serves the VNI on a bridge:
#
#   ip link add br-vx42 type bridge && ip link set br-vx42 up
#   vxland run --local 192.0.2.1 --vni 42 --tap vx42 --bridge br-vx42 --peer 192.0.2.2 &
#   scripts/engine-network.sh docker vxnet --vni 42 --subnet 10.42.0.0/24 \
#       --range 10.42.0.64/26 --gateway 10.42.0.1           # host 1
#   scripts/engine-network.sh docker vxnet --vni 42 --subnet 10.42.0.0/24 \
#       --range 10.42.0.128/26 --gateway 10.42.0.2          # host 2
#   docker run --network vxnet ...
#
# With a network on etcd (vxland's [etcd], etcd = true) the three addresses come from vxland --
# the subnet, this host's block as the range, the block's first address as the gateway -- and
# the same command runs on every host:
#
#   scripts/engine-network.sh docker vxnet --vni 42
#
# What it makes, and why:
# - the engine's bridge network *on vxland's bridge* (the one `vxland networks show` names for
#   the VNI), so that vxland's TAP and the containers' veths share one L2 segment;
# - one subnet on every host, each host allocating from its own --range of it and with its own
#   --gateway address, so that no two containers (and no two bridges) ever share an address;
# - the overlay MTU that vxland reports (the underlay's less the 50 bytes of VXLAN over IPv4,
#   70 over IPv6) on every container interface, or frames that fit the bridge will not fit the
#   tunnel;
# - no NAT: the engine must not masquerade the subnet (Docker: enable_ip_masquerade=false;
#   Podman: --internal), or containers reach each other under the host's address;
# - no engine DNS (Podman --disable-dns): its names would be this host's containers only.
#
# Options:  --vni N          the VNI (vxland must serve it, on a bridge)
#           --subnet CIDR    the network's subnet, the same on every host   } all three, or none
#           --range CIDR     this host's share of it (disjoint from every    } with an etcd network:
#                            other host's)                                  } the block vxland holds
#           --gateway IP     this host's address in the subnet (another on every host)
#           --control PATH   vxland's control socket (default: vxland's default)
# Environment: VXLAND (the vxland command, default vxland); PODMAN_NETWORK_DIR (Podman older
# than 4.4 only: where its network files live, default /etc/containers/networks).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
fail() { echo "engine-network: $*" >&2; exit 1; }

[ $# -ge 2 ] || usage
engine=$1 name=$2
shift 2
vni="" subnet="" range="" gateway="" control=()
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case "$1" in
        --vni) vni=$2 ;;
        --subnet) subnet=$2 ;;
        --range) range=$2 ;;
        --gateway) gateway=$2 ;;
        --control) control=(--control "$2") ;;
        *) usage ;;
    esac
    shift 2
done
[ -n "$vni" ] || usage
given=0
for value in "$subnet" "$range" "$gateway"; do [ -z "$value" ] || given=$((given + 1)); done
[ "$given" = 0 ] || [ "$given" = 3 ] || fail "give --subnet, --range and --gateway together, or none of them (an etcd network's block)"
case "$engine" in podman|docker) ;; *) fail "engine must be podman or docker, not '$engine'" ;; esac
command -v "$engine" >/dev/null || fail "$engine is not installed"

# The bridge and the MTU of the VNI, from vxland itself.
shown=$(${VXLAND:-vxland} networks show --vni "$vni" --json "${control[@]}" 2>&1) || fail "$shown"
read -r bridge mtu block_subnet block block_gateway < <(python3 -c '
import json, sys
(row,) = json.load(sys.stdin)
a = row.get("addresses") or {}
held = [b for b in a.get("blocks", []) if ":" not in b["block"]] if a.get("state") == "held" else []
b = held[0] if held else {"subnet": "-", "block": "-", "first": a.get("state", "-")}
print(row["bridge"] or "-", row["mtu"], b["subnet"], b["block"], b["first"])' <<<"$shown")
if [ "$given" = 0 ]; then
    [ "$block" != "-" ] || fail "give --subnet, --range and --gateway: vxland holds no IPv4 address block for VNI" \
        "$vni (block state: $block_gateway; see vxland etcd show)"
    subnet=$block_subnet range=$block gateway=$block_gateway
fi
[ "$bridge" != "-" ] || fail "vxland's network $vni has no bridge: create one (ip link add br-vx$vni type bridge;" \
    "ip link set br-vx$vni up), give it to the network (bridge = \"br-vx$vni\" in its [[network]], then" \
    "vxland reload; or --bridge), and run this again"

case "$engine" in
docker)
    docker network create --driver bridge --subnet "$subnet" --ip-range "$range" --gateway "$gateway" \
        -o com.docker.network.bridge.name="$bridge" \
        -o com.docker.network.driver.mtu="$mtu" \
        -o com.docker.network.bridge.enable_ip_masquerade=false \
        "$name" >/dev/null
    ;;
podman)
    options=(--driver bridge --subnet "$subnet" --ip-range "$range" --gateway "$gateway" --opt mtu="$mtu"
             --internal --disable-dns)
    if podman network create --help | grep -- --interface-name >/dev/null; then   # not -q: pipefail
        podman network create "${options[@]}" --interface-name "$bridge" "$name" >/dev/null
    else
        # Podman < 4.4 (Debian 12 has 4.3) cannot name the bridge on the command line: name it
        # in the network's file, which Podman reads on every command.
        [ "$(podman info --format '{{.Host.NetworkBackend}}')" = netavark ] \
            || fail "this Podman uses CNI networks: use vxland's CNI plugin instead (README: Containers)"
        file=${PODMAN_NETWORK_DIR:-/etc/containers/networks}/$name.json
        podman network create "${options[@]}" "$name" >/dev/null
        [ -f "$file" ] || { podman network rm "$name" >/dev/null; fail "no $file: set PODMAN_NETWORK_DIR"; }
        python3 - "$file" "$bridge" <<'PY'
import json, os, sys
path, bridge = sys.argv[1:]
with open(path) as f:
    network = json.load(f)
network["network_interface"] = bridge
with open(path + ".new", "w") as f:
    json.dump(network, f, indent=5)
os.replace(path + ".new", path)
PY
    fi
    ;;
esac
echo "$engine network $name: bridge $bridge (VNI $vni), MTU $mtu, addresses $range of $subnet, gateway $gateway"
