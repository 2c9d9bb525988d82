"""A fleet on etcd, for real: a 3-member cluster of Debian's etcd in namespaces on the underlay
switch, three vxland hosts with one configuration file (only `local` differs) and no peer
list, and containers attached by the CNI plugin with one identical network configuration --
no ranges.  Then the faults: a host killed with -9, one member killed, all of them and back,
keys that lie, blocks that run out, TLS with client certificates, an IPv6 underlay.  Leases
are the default's (ttl 10 s), as a fleet would run them."""

import ipaddress
import json
import os
import signal
import threading
import time

import pytest

from etcd_cluster import EtcdCluster
from test_cni import cni
from test_evpn import wait_for
from vxland.topology import Topology, sh

pytestmark = pytest.mark.netns

TTL = 10                          # [etcd] ttl's default


def config_text(host, cluster, subnets='["10.88.0.0/16"]', extra="", etcd_extra=""):
    return (f'local = "{host.underlay_ip}"\n\n[[network]]\nvni = 42\ntap = "vx0"\nbridge = "br0"\netcd = true\n'
            f"subnets = {subnets}\n{extra}\n[etcd]\nendpoints = {json.dumps(cluster.endpoints)}\n{etcd_extra}")


class Fleet:
    def __init__(self, t, cluster):
        self.t, self.cluster = t, cluster

    def write_config(self, host, **options):
        path = os.path.join(self.t.workdir, f"{host.ns}.toml")
        with open(path, "w") as f:
            f.write(config_text(host, self.cluster, **options))
        os.chmod(path, 0o644)
        return path

    def start(self, *hosts, **options):
        """vxland on each of `hosts` at once (two hosts starting together must not share a block)."""
        errors = []

        def one(h):
            try:
                self.t.start_vxland(h, "--config", self.write_config(h, **options), vni=None)
            except Exception as e:                      # said below, in the test's thread
                errors.append(e)
        threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors

    def kill(self, host):
        """kill -9 of vxland, by its PID."""
        os.kill(host.process.pid, signal.SIGKILL)
        host.process.wait()
        host.process = None


@pytest.fixture
def cluster_and_hosts(request):
    with Topology(3, ipv6=getattr(request, "param", False)) as t:
        cluster = EtcdCluster(t, tls=False)
        try:
            cluster.start()
            cluster.wait_healthy()
            yield Fleet(t, cluster)
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                for h in t.hosts:
                    print(f"--- log of vxland on {h.ns} ---\n{t.log_of(h)}")
        finally:
            cluster.close()


def etcd(host):
    return host.vxland_json("etcd", "show")


def flood(host):
    return set(host.vxland_json("peers", "show")[0].get("etcd_peers", []))


def fdb(host):
    return {e["mac"]: e for e in host.vxland_json("fdb", "show")}


def addresses(host):
    return host.vxland_json("networks", "show")[0]["addresses"]


def cni_config(host, tmp_path):
    """The network configuration: the same on every host but for where host-local keeps its state."""
    return {"cniVersion": "1.0.0", "name": "vxnet", "type": "vxland", "vni": 42, "control": host.control,
            "dataDir": str(tmp_path / host.ns / "vxland"),
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / host.ns / "ipam")}}


def attach(f, host, tmp_path, name):
    netns = f"/run/netns/{f.t.namespace(name)}"
    status, result = cni(host, "ADD", cni_config(host, tmp_path), netns, container=name)
    return status, result, netns


def address_of(result):
    return result["ips"][0]["address"].split("/")[0]


def ping(netns, address, count=2):
    return sh("ping", "-c", str(count), "-i", "0.2", "-W", "2", address, ns=netns.rsplit("/", 1)[1], check=False)


def test_three_hosts_one_configuration_no_ranges(cluster_and_hosts, tmp_path):
    f = cluster_and_hosts
    h1, h2, h3 = f.t.hosts
    f.start(h1, h2, h3)
    wait_for("each host sees the two others", lambda: all(len(flood(h)) == 2 for h in (h1, h2, h3)))
    wait_for("each holds a block", lambda: all(addresses(h)["state"] == "held" for h in (h1, h2, h3)))
    blocks = [addresses(h)["blocks"][0]["block"] for h in (h1, h2, h3)]
    assert len(set(blocks)) == 3 and all(b.startswith("10.88.") and b.endswith("/24") for b in blocks)
    containers = []
    for i, h in enumerate((h1, h2, h3)):
        status, result, netns = attach(f, h, tmp_path, f"k{i + 1}")
        assert status == 0, result
        address = address_of(result)
        assert result["ips"][0]["address"].endswith("/16")          # the overlay on-link, addresses per block
        assert address.rsplit(".", 1)[0] == blocks[i].rsplit(".", 1)[0]
        containers.append((h, netns, address, result["interfaces"][1]["mac"]))
    assert len({c[2] for c in containers}) == 3
    for _, netns, _, _ in containers:
        for _, _, address, _ in containers:
            assert ping(netns, address).returncode == 0, address
    # throughput across, through etcd alone (no peer list anywhere)
    srv = sh("sh", "-c", f"iperf3 -s -1 -D -B {containers[1][2]}", ns=containers[1][1].rsplit("/", 1)[1])
    assert srv.returncode == 0
    time.sleep(0.5)
    out = sh("iperf3", "-c", containers[1][2], "-t", "2", "-J", ns=containers[0][1].rsplit("/", 1)[1], timeout=40)
    assert json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] > 50e6
    # the containers are announced: h1 knows h3's behind h3, with its address
    mac3 = containers[2][3]
    wait_for("h3's container on h1", lambda: fdb(h1).get(mac3, {}).get("vtep") == h3.underlay_ip)
    assert fdb(h1)[mac3].get("ips") == [containers[2][2]]
    # h3 killed with -9: gone from every table within the TTL; its block stays its own
    f.kill(h3)
    gone = time.monotonic()
    wait_for("h3 out of h1's and h2's tables", lambda: h3.underlay_ip not in flood(h1) | flood(h2)
             and mac3 not in fdb(h1) and mac3 not in fdb(h2), timeout=TTL + 6)
    assert time.monotonic() - gone <= TTL + 6
    assert ping(containers[0][1], containers[1][2]).returncode == 0
    f.start(h3)
    wait_for("h3 back, with the block it had", lambda: addresses(h3)["state"] == "held")
    assert addresses(h3)["blocks"][0]["block"] == blocks[2]
    wait_for("h3 in the others' flood lists", lambda: h3.underlay_ip in flood(h1) & flood(h2))
    # DEL, twice: the address is free again -- also when ADD's record is gone (an ADD killed after
    # the IPAM call): host-local releases by container, whatever ranges DEL can give it
    conf = cni_config(h1, tmp_path)
    for record in (tmp_path / h1.ns / "vxland").iterdir():
        record.unlink()
    leases = tmp_path / h1.ns / "ipam" / "vxnet"
    assert (leases / containers[0][2]).exists()
    for _ in range(2):
        status, result = cni(h1, "DEL", conf, containers[0][1], container="k1")
        assert status == 0, result
    assert not (leases / containers[0][2]).exists()


def test_podman_containers_with_one_network_configuration(cluster_and_hosts, tmp_path):
    """Podman (CNI networks) on two hosts, the same vxland network configuration on both and no
    ranges: addresses from each host's block, ping and iperf3 across, no NAT."""
    from test_containers import across
    from vxland.containers import Podman, build_image_tar
    f = cluster_and_hosts
    h1, h2, _ = f.t.hosts
    f.start(h1, h2)
    wait_for("blocks held", lambda: all(addresses(h)["state"] == "held" for h in (h1, h2)))
    image = build_image_tar(str(tmp_path))
    engines, containers = [], []
    try:
        for h in (h1, h2):
            engine = Podman(h.ns, backend="cni")
            engines.append(engine)
            engine.load(image)
            engine.add_cni_network("vxnet", vni=42, control=h.control)
            containers.append(engine.run("vxnet", "sleep", "1000"))
        a1, a2 = across(engines, containers, ["vxnet", "vxnet"])
        for h, address in zip((h1, h2), (a1, a2)):
            block = addresses(h)["blocks"][0]
            assert ipaddress.ip_address(address) in ipaddress.ip_network(block["block"]), (address, block)
    finally:
        for engine in engines:
            engine.close()


def test_members_fail_and_return(cluster_and_hosts):
    """One member down: nothing changes.  All down: the tables keep their state and vxland says
    so.  Back: what changed meanwhile arrives."""
    f = cluster_and_hosts
    h1, h2, h3 = f.t.hosts
    f.start(h1, h2)
    wait_for("h1 and h2 meet", lambda: flood(h1) == {h2.underlay_ip} and flood(h2) == {h1.underlay_ip})
    assert f.t.ping(h1, h2, count=2).returncode == 0
    f.cluster.kill(0)                                  # the first endpoint: where both are connected
    h1.vxland("fdb", "add", "--vni", "42", "--local", "--mac", "02:00:00:00:aa:01")
    wait_for("a change made after one member died", lambda: fdb(h2).get("02:00:00:00:aa:01", {}).get("vtep")
             == h1.underlay_ip, timeout=15)
    assert etcd(h1)["counters"]["fail_overs"] >= 1 or etcd(h2)["counters"]["fail_overs"] >= 1
    f.cluster.kill(1)
    f.cluster.kill(2)
    wait_for("both notice", lambda: not etcd(h1)["counters"]["connected"] and not etcd(h2)["counters"]["connected"],
             timeout=20)
    h2.vxland("fdb", "add", "--vni", "42", "--local", "--mac", "02:00:00:00:bb:01")       # meanwhile
    time.sleep(TTL + 2)                                 # longer than a lease: nothing is flushed here
    assert flood(h1) == {h2.underlay_ip} and fdb(h1)["02:00:00:00:aa:01"]["port"] == "vx0"
    assert fdb(h2)["02:00:00:00:aa:01"]["vtep"] == h1.underlay_ip
    assert f.t.ping(h1, h2, count=2).returncode == 0
    assert "the tables keep their state" in f.t.log_of(h1)
    f.cluster.start()
    f.cluster.wait_healthy()
    wait_for("back and resynchronised", lambda: fdb(h1).get("02:00:00:00:bb:01", {}).get("vtep") == h2.underlay_ip,
             timeout=30)
    assert etcd(h1)["counters"]["connected"] and "the store answers again" in f.t.log_of(h1)
    assert flood(h1) == {h2.underlay_ip} and flood(h2) == {h1.underlay_ip}


def test_keys_that_lie(cluster_and_hosts):
    """Keys written by someone else: one in h1's name is deleted by h1; one placing a MAC behind a
    VTEP that is no member is not installed; garbage is counted; a claim on h1's container (a
    static entry) does not move it."""
    f = cluster_and_hosts
    h1, h2, _ = f.t.hosts
    f.start(h1, h2)
    wait_for("h1 and h2 meet", lambda: flood(h1) == {h2.underlay_ip})
    h1.vxland("fdb", "add", "--vni", "42", "--local", "--mac", "02:00:00:00:aa:01")
    wait_for("h2 has it", lambda: "02:00:00:00:aa:01" in fdb(h2))
    base = "/vxland/vni/42/routes/"
    forged = f"{base}2/02:00:00:00:cc:01/{h1.underlay_ip}"
    f.cluster.ctl("put", forged, '{"seq": 5}')
    wait_for("h1 deleted the key in its name", lambda: not f.cluster.ctl("get", forged).stdout.strip())
    assert etcd(h1)["counters"]["stale_deleted"] >= 1
    f.cluster.ctl("put", f"{base}2/02:00:00:00:cc:02/192.0.2.99", '{"seq": 1}')        # no such member
    f.cluster.ctl("put", f"{base}2/not-a-mac/192.0.2.2", "{}")
    f.cluster.ctl("put", f"{base}3/2001:db8::9", "{}")                                 # the wrong family
    f.cluster.ctl("put", f"{base}2/02:00:00:00:aa:01/192.0.2.98", '{"seq": 4294967295}')
    wait_for("counted", lambda: sum(etcd(h2)["counters"]["ignored"].values()) >= 2
             and etcd(h2)["counters"]["held_back"] >= 2)
    assert "02:00:00:00:cc:02" not in fdb(h2) and fdb(h2)["02:00:00:00:aa:01"]["vtep"] == h1.underlay_ip
    f.cluster.ctl("put", f"{base}3/192.0.2.98", "{}")        # the liar joins: its claim is a sequence
    wait_for("h2 decides", lambda: "192.0.2.98" in flood(h2))  # number against h1's sticky static MAC
    assert fdb(h1)["02:00:00:00:aa:01"]["port"] == "vx0" and fdb(h1)["02:00:00:00:aa:01"]["static"]
    assert f.t.ping(h1, h2, count=2).returncode == 0
    # values as big as the store takes, more than a gRPC reply holds in all: a host that starts now
    # still lists the store (in smaller pages) and meets the others
    big = os.path.join(f.t.workdir, "big")
    with open(big, "w") as out:
        out.write("x" * 1_400_000)
    for i in range(13):
        sh("sh", "-c", f'etcdctl --endpoints {f.cluster.endpoints[0]} put {base}2/02:00:00:00:dd:{i:02x}/192.0.2.2 '
                       f'< {big}', ns=h1.ns)
    f.start(f.t.hosts[2])
    h3 = f.t.hosts[2]
    wait_for("h3 meets h1 and h2 past the big values", lambda: {h1.underlay_ip, h2.underlay_ip} <= flood(h3))
    for h in (h1, h2, h3):
        assert "Traceback" not in f.t.log_of(h)
        assert etcd(h)["counters"]["internal_errors"] == 0


def test_blocks_run_out_with_a_clear_error(cluster_and_hosts, tmp_path):
    """A /29 cut into /30 blocks: two hosts hold one (two addresses each), the third none."""
    f = cluster_and_hosts
    hosts = f.t.hosts
    f.start(*hosts, subnets='["10.88.0.0/29"]', extra="block_prefix = 30\n")
    wait_for("settled", lambda: all(addresses(h)["state"] in ("held", "exhausted") for h in hosts))
    states = {h.ns: addresses(h)["state"] for h in hosts}
    assert sorted(states.values()) == ["exhausted", "held", "held"], states
    without = next(h for h in hosts if states[h.ns] == "exhausted")
    status, result, _ = attach(f, without, tmp_path, "x0")
    assert status == 1 and result["code"] == 11 and "no address block" in result["msg"]
    assert "no free block of /30 left in 10.88.0.0/29" in f.t.log_of(without)
    for holder in (h for h in hosts if states[h.ns] == "held"):
        block = addresses(holder)["blocks"][0]
        room = int(block["last"].rsplit(".", 1)[1]) - int(block["first"].rsplit(".", 1)[1]) + 1
        assert room in (1, 2)                          # the first block leaves the gateway out
        got = []
        for i in range(room):
            status, result, _ = attach(f, holder, tmp_path, f"y{holder.ns[-1]}{i}")
            assert status == 0, result
            got.append(address_of(result))
        assert block["first"] in got and block["last"] in got
        status, result, _ = attach(f, holder, tmp_path, f"z{holder.ns[-1]}")
        assert status != 0 and "block is full" in result["msg"], result


def test_tls_with_client_certificates():
    """The recommended setup: members that take only clients with a certificate of the CA."""
    with Topology(3) as t:
        cluster = EtcdCluster(t, tls=True)
        try:
            cluster.start()
            cluster.wait_healthy()
            f = Fleet(t, cluster)
            h1, h2, h3 = t.hosts
            for name in ("ca", "cert", "key"):       # the daemon reads them as root, before it drops
                assert os.stat(cluster.certs[name]).st_uid == 0
            c = cluster.certs
            tls = f'ca = "{c["ca"]}"\ncert = "{c["cert"]}"\nkey = "{c["key"]}"\n'
            f.start(h1, h2, etcd_extra=tls)
            wait_for("h1 and h2 meet over TLS", lambda: flood(h1) == {h2.underlay_ip} and flood(h2) == {h1.underlay_ip})
            assert addresses(h1)["state"] == "held"
            assert t.ping(h1, h2, count=2).returncode == 0
            f.start(h3, etcd_extra=f'ca = "{c["ca"]}"\n')          # no client certificate
            wait_for("h3 says it cannot", lambda: "etcd:" in t.log_of(h3) and "retrying" in t.log_of(h3), timeout=20)
            assert not etcd(h3)["counters"]["connected"] and h3.underlay_ip not in flood(h1)
            assert "Traceback" not in t.log_of(h3)
        except BaseException:
            for h in t.hosts:
                print(f"--- log of vxland on {h.ns} ---\n{t.log_of(h)}")
            raise
        finally:
            cluster.close()


@pytest.mark.parametrize("cluster_and_hosts", [True], indirect=True, ids=["ipv6"])
def test_an_ipv6_underlay(cluster_and_hosts):
    f = cluster_and_hosts
    h1, h2, h3 = f.t.hosts
    for h in (h1, h2, h3):      # as on any IPv6 host (the topology turns it off for quiet): gRPC
        sh("sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0", ns=h.ns)   # needs ::1 for IPv6
    f.start(h1, h2, h3)
    wait_for("each host sees the two others", lambda: all(len(flood(h)) == 2 for h in (h1, h2, h3)))
    assert flood(h1) == {h2.underlay_ip, h3.underlay_ip} and ":" in h2.underlay_ip
    assert f.t.ping(h1, h2, count=2).returncode == 0 and f.t.ping(h1, h3, count=2).returncode == 0
    wait_for("h2's container on h1, from the store", lambda: fdb(h1).get(h2.container_mac, {}).get("vtep")
             == h2.underlay_ip)
