"""Record what gobgpd's API says about real EVPN routes, for tests/test_evpn_routes.py.

Run as root: `.venv/bin/python tests/evpn/record.py`.  It builds three hosts in namespaces:
h1 runs vxland (with the gobgpd it runs), h2 runs FRR with the kernel's VXLAN and an eBGP
session (AS 65001), h3 runs FRR over iBGP (AS 65000).  A container behind each FRR speaks;
then h3's container moves to h1's bridge (FRR withdraws it, vxland announces it with a
MAC-mobility sequence number), and moves back (FRR announces it with a higher one).  The paths
h1's gobgpd reports -- ListPath snapshots and WatchEvent batches, withdrawals included -- are
written as JSON (protobuf's JSON mapping of apipb.Path) to tests/evpn/paths.json, each with
what it is.  Review the diff before committing.
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.dirname(HERE)]

from vxland.topology import Topology, sh  # noqa: E402

from frr import Frr  # noqa: E402
from test_evpn import established, start_evpn, wait_for  # noqa: E402

# Runs in h1's namespace: watches the table and answers "snapshot" requests on stdin.
WATCHER = r'''
import json, sys, threading
import grpc
from google.protobuf.json_format import MessageToDict
from vxland.evpn.gobgp import gobgp_pb2 as api, gobgp_pb2_grpc as rpc
from vxland.evpn.routes import EVPN_FAMILY
stub = rpc.GobgpApiStub(grpc.insecure_channel("127.0.0.1:50051"))
def watch():
    request = api.WatchEventRequest(table=api.WatchEventRequest.Table(filters=[
        api.WatchEventRequest.Table.Filter(type=api.WatchEventRequest.Table.Filter.BEST, init=False)]))
    for event in stub.WatchEvent(request):
        for path in event.table.paths:
            print(json.dumps({"from": "watch", "path": MessageToDict(path)}), flush=True)
threading.Thread(target=watch, daemon=True).start()
for line in sys.stdin:
    for answer in stub.ListPath(api.ListPathRequest(table_type=api.GLOBAL, family=EVPN_FAMILY)):
        for path in answer.destination.paths:
            print(json.dumps({"from": "list", "path": MessageToDict(path)}), flush=True)
    print(json.dumps({"from": "mark", "label": line.strip()}), flush=True)
'''


def move(src, dst, peer) -> None:
    """h3's container (its veth end ctr3) from src's bridge to dst's; it speaks from there."""
    sh("ip", "-n", src.ns, "link", "set", "ctr3", "nomaster")
    sh("ip", "-n", src.ns, "link", "set", "ctr3", "netns", dst.ns)
    sh("ip", "-n", dst.ns, "link", "set", "ctr3", "master", "br0", "up")
    sh("ping", "-c", "2", "-W", "2", peer.container_ip, ns=f"{src.ns.rsplit('-', 1)[0]}-c3", check=False)
    time.sleep(4)


def mark(watcher, label: str) -> None:
    watcher.stdin.write(label + "\n")
    watcher.stdin.flush()


def main() -> None:
    with Topology(4) as t:
        h1, h2, h3, _ = t.hosts
        frr2 = Frr(h2, asn=65001, vni=42, svi="10.42.0.252/24", neighbors=[(h1.underlay_ip, 65000)])
        frr3 = Frr(h3, asn=65000, vni=42, svi="10.42.0.253/24", neighbors=[(h1.underlay_ip, 65000)])
        watcher = None
        try:
            start_evpn(t, h1, [(h2, 65001), (h3,)])
            wait_for("sessions", lambda: established(h1, 2), timeout=60)
            watcher = subprocess.Popen(["ip", "netns", "exec", h1.ns, sys.executable, "-c", WATCHER],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       env={**os.environ, "PYTHONPATH": ROOT})
            time.sleep(1)
            for h in (h2, h3):                              # the FRR hosts' containers speak
                sh("ping", "-c", "2", "-W", "2", h1.container_ip, ns=h.container_ns, check=False)
            time.sleep(3)
            mark(watcher, "after the containers spoke")
            sh("ip", "-n", h3.ns, "link", "set", "ctr0", "name", "ctr3")
            move(h3, h1, h2)                                # h3's container moves behind h1...
            mark(watcher, "after the move to h1")
            move(h1, h3, h2)                                # ...and back
            mark(watcher, "after the move back to h3")
            out = ""
            while not out.rstrip().endswith('"after the move back to h3"}'):
                out += watcher.stdout.readline()
        finally:
            if watcher is not None and watcher.poll() is None:
                watcher.kill()
            frr2.stop()
            frr3.stop()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    path = os.path.join(HERE, "paths.json")
    with open(path, "w") as f:
        json.dump({"recorded_with": _versions(), "hosts": {"vxland": "192.0.2.1", "frr_ebgp": "192.0.2.2",
                                                           "frr_ibgp": "192.0.2.3"},
                   "records": records}, f, indent=1)
    print(f"{len(records)} records in {path}")


def _versions() -> dict:
    def version(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"
    return {"gobgpd": version(["gobgpd", "--version"]), "frr": version(["/usr/lib/frr/bgpd", "--version"])}


if __name__ == "__main__":
    main()
