#!/usr/bin/env bash
# Install what vxland needs on a Debian machine, as root: the system tools it and
# its demo use, then a virtual environment in .venv holding vxland, its C fast
# path built in place (pip install -e), and its Python dependencies.
#   --evpn     also what BGP EVPN needs: gobgpd, gRPC, and the stubs of gobgpd's API
#              generated from its .proto files (scripts/gobgp-api.sh)
#   --etcd     also what the etcd control plane needs: etcd's gRPC API (aetcd's stubs) and etcdctl
#   --test     also what the test suite needs (pytest, scapy, hypothesis, tshark, clang,
#              container engines, FRR, an etcd server; and all of --evpn and --etcd)
#   --bench    also what the benchmark needs: matplotlib, and the userspace tunnels it
#              compares vxland with (Open vSwitch, tinc, fastd, OpenVPN; bench/peers.py)
#   --systemd  also install the systemd unit (systemd/vxland.service) running this
#              checkout's vxland, and an example /etc/vxland/vxland.toml if there is none
#   --cni      also install the CNI plugin as /opt/cni/bin/vxland (README: Containers), with
#              Debian's containernetworking-plugins for its IPAM (host-local)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
test=""
bench=""
evpn=""
etcd=""
systemd=""
cni=""
for option in "$@"; do
    case "$option" in
        --test) test=yes; evpn=yes; etcd=yes; extras="$extras,test,evpn,etcd" ;;
        --evpn) evpn=yes; extras="$extras,evpn" ;;
        --etcd) etcd=yes; extras="$extras,etcd" ;;
        --bench) bench=yes; extras="$extras,bench" ;;
        --systemd) systemd=yes ;;
        --cni) cni=yes ;;
        *) echo "usage: $0 [--test] [--evpn] [--etcd] [--bench] [--systemd] [--cni]" >&2; exit 2 ;;
    esac
done

# iproute2: ip and bridge; iputils-ping, iperf3: the demo's traffic; util-linux:
# setpriv (tests); gcc: the cffi build.
packages="iproute2 iputils-ping iperf3 util-linux gcc"
# tshark: the tests check with Wireshark's dissector that what vxland sends is well-formed VXLAN;
# clang and its sanitizer and libFuzzer runtimes: the fuzz harnesses (scripts/fuzz.sh)
# ethtool: a test turns a container's segmentation offload off (PMTU without TSO, as the issue asks)
[ -n "$test" ] && packages="$packages tshark clang libclang-rt-dev ethtool"
# real containers (tests/test_containers.py): Podman with runc, Docker, the CNI plugins, and
# busybox for the image they run.  (On a machine with systemd, docker.io also enables the
# system's dockerd; the tests start daemons of their own.)
[ -n "$test" ] && packages="$packages podman runc docker.io containernetworking-plugins busybox-static"
# BGP EVPN: gobgpd (the speaker vxland runs); FRR, the fleet member the tests interoperate with
[ -n "$evpn" ] && packages="$packages gobgpd"
[ -n "$test" ] && packages="$packages frr"
# etcd: etcdctl for operators; the tests run a 3-member cluster of Debian's etcd in namespaces
# (on a machine with systemd, etcd-server also enables the system's own etcd on localhost, unused)
[ -n "$etcd" ] && packages="$packages etcd-client"
[ -n "$test" ] && packages="$packages etcd-server"
[ -n "$cni" ] && packages="$packages containernetworking-plugins"
# the benchmark's peers (each started by bench/peers.py in the benchmark's namespaces; on a
# machine with systemd, openvswitch-switch also enables the system's own OVS, unused here)
[ -n "$bench" ] && packages="$packages ethtool openvswitch-switch tinc fastd openvpn"
python3 -m venv --help >/dev/null 2>&1 || packages="$packages python3-venv"
python3 - <<'PY' || packages="$packages python3-dev"
import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
PY
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# the unprivileged user the daemon becomes once its devices and sockets are open (README: Security)
id -u vxland >/dev/null 2>&1 || useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "vxland daemon" vxland

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[${extras#,}]}"
.venv/bin/python -c "import vxland.native" # the C fast path built and loads
if [ -n "$evpn" ]; then
    PYTHON=.venv/bin/python bash scripts/gobgp-api.sh
    .venv/bin/python -c "import vxland.evpn.service"   # EVPN loads
fi
[ -z "$etcd" ] || .venv/bin/python -c "import vxland.etcd.service"   # the etcd plane loads
echo "vxland installed in $(pwd)/.venv"

if [ -n "$cni" ]; then
    .venv/bin/python -c "from vxland.cni import install_plugin; print('installed', install_plugin('/opt/cni/bin'))"
fi

if [ -n "$systemd" ]; then
    unit=/etc/systemd/system/vxland.service
    sed "s#@VXLAND@#$(pwd)/.venv/bin/vxland#" systemd/vxland.service > "$unit"
    case "$(pwd)" in    # the unit hides home directories; a checkout in one must stay readable
        /home/*|/root/*) sed -i 's/^ProtectHome=yes/ProtectHome=read-only/' "$unit" ;;
    esac
    mkdir -p /etc/vxland
    # readable by the daemon's group (for reloads), not by everyone: it may hold BGP MD5 passwords
    [ -e /etc/vxland/vxland.toml ] || install -m 0640 -g vxland systemd/vxland.toml /etc/vxland/vxland.toml
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        echo "installed $unit: edit /etc/vxland/vxland.toml, then systemctl enable --now vxland"
    else
        echo "installed $unit (systemd is not running here)"
    fi
fi
