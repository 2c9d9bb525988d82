"""vxland/links.py: the daemon's own netlink requests (which link holds an address; a link's
MTU, master and state) -- against the kernel in a namespace, and against malformed replies."""

import json
import struct
import sys

import pytest

from vxland import links
from vxland.topology import sh

SNIPPET = """
import json, socket, sys
from vxland import links
out = {{"holder": links.link_holding("{ip}"), "eth0": links.index_of("eth0"),
        "nobody": links.link_holding("{absent}"), "missing": links.index_of("nope0")}}
tap = links.index_of("lk0")
links.set_link(tap, mtu=1400, master=links.index_of("lkbr"), up=True)
out["master"], out["mtu"] = links.master_of("lk0"), links.mtu_of("lk0")
links.set_link(tap, master=0)
out["detached"] = links.master_of("lk0")
try:
    links.set_link(99999, mtu=1400)
except OSError as e:
    out["error"] = e.errno
print(json.dumps(out))
"""


@pytest.mark.netns
@pytest.mark.parametrize("fixture,ip,absent", [("two_hosts", "192.0.2.1", "192.0.2.77"),
                                               ("two_hosts_ipv6", "2001:db8::1", "2001:db8::77")])
def test_links_are_found_and_set_as_ip_would(request, fixture, ip, absent):
    t = request.getfixturevalue(fixture)
    h1 = t.hosts[0]
    assert h1.underlay_ip == ip
    sh("ip", "link", "add", "lk0", "type", "veth", "peer", "name", "lk1", ns=h1.ns)
    sh("ip", "link", "add", "lkbr", "type", "bridge", ns=h1.ns)
    out = json.loads(sh(sys.executable, "-c", SNIPPET.format(ip=ip, absent=absent), ns=h1.ns).stdout)
    assert out["holder"] == out["eth0"] is not None and out["nobody"] is None and out["missing"] is None
    assert out["master"] == "lkbr" and out["mtu"] == 1400 and out["detached"] is None
    assert out["error"] == 19                                                            # ENODEV
    link = json.loads(sh("ip", "-j", "link", "show", "lk0", ns=h1.ns).stdout)[0]
    assert link["mtu"] == 1400 and "UP" in link["flags"]


def test_malformed_netlink_replies_are_refused_not_read_past():
    header = struct.Struct("=IHHII")
    with pytest.raises(OSError, match="malformed"):
        list(links._messages(header.pack(400, 20, 0, 1, 0) + bytes(8)))      # longer than received
    with pytest.raises(OSError, match="malformed"):
        list(links._messages(header.pack(4, 20, 0, 1, 0)))                   # shorter than its header
    good = links._attr(links.IFLA_MTU, struct.pack("=I", 1500))
    assert links._attrs(good + struct.pack("=HH", 200, 3) + bytes(4), 0) == {links.IFLA_MTU: struct.pack("=I", 1500)}
    assert links._attrs(struct.pack("=HH", 2, 1), 0) == {}                   # shorter than an attribute header
