"""Configuration from flags and TOML: what is accepted, and the one-line refusals."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vxland.cli import build_parser, config_from_args
from vxland.config import parse_toml
from vxland.errors import VxlandError

GOOD = """
local = "192.0.2.1"
port = 8472
source_ports = [50000, 50100]
ttl = 9
datapath = "reference"
tos = "inherit"
df = "inherit"
reserved_bits = "drop"
inner_vlan = "carry"

[[network]]
vni = 1
tap = "vx1"
bridge = "br0"
peers = ["192.0.2.2", "192.0.2.3"]
ageing = 30
max_learned = 10
static = [{ mac = "02:00:00:00:00:01", vtep = "192.0.2.9" }]

[[network]]
vni = 2
tap = "vx2"
learning = false
"""


def test_full_config_file():
    c = parse_toml(GOOD)
    assert (c.local, c.port, c.source_ports, c.ttl, c.datapath) == ("192.0.2.1", 8472, (50000, 50100), 9, "reference")
    assert (c.tos, c.df, c.reserved_bits, c.inner_vlan) == ("inherit", "inherit", "drop", "carry")
    one, two = c.networks
    assert (one.vni, one.tap, one.bridge, one.peers, one.ageing, one.max_learned) == \
        (1, "vx1", "br0", ["192.0.2.2", "192.0.2.3"], 30.0, 10)
    assert one.static[0].mac == bytes.fromhex("020000000001") and one.static[0].vtep == "192.0.2.9"
    assert (two.vni, two.learning, two.peers, two.ageing) == (2, False, [], 300.0)


@pytest.mark.parametrize("text,words", [
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\n", "vni and tap are required"),
    ("[[network]]\nvni = 1\ntap = 'a'\n", "local (the underlay address) is required"),
    ("local = '192.0.2.1'\n", "no network configured"),
    ("local = '192.0.2.1'\nprot = 1\n[[network]]\nvni = 1\ntap = 'a'\n", "unknown key prot"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'a'\nagein = 3\n", "unknown key agein"),
    ("local = '192.0.2.1'\n[[network]]\nvni = '1'\ntap = 'a'\n", "vni must be int"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'a'\n[[network]]\nvni = 1\ntap = 'b'\n", "configured twice"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'a'\n[[network]]\nvni = 2\ntap = 'a'\n", "used by two"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'a'\npeers = ['2001:db8::1']\n", "IPv6 address on an IPv4 underlay"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'a'\nageing = 0\n", "ageing must be a positive number"),
    ("local = '192.0.2.1'\nport = 0\n[[network]]\nvni = 1\ntap = 'a'\n", "port 0 is outside"),
    ("local = '192.0.2.1'\nttl = 0\n[[network]]\nvni = 1\ntap = 'a'\n", "ttl 0 is outside"),
    ("local = 'x'\n[[network]]\nvni = 1\ntap = 'a'\n", "not an IPv4 or IPv6 address"),
    ("local = 'fe80::1'\n[[network]]\nvni = 1\ntap = 'a'\n", "must be a unicast address"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'a'\nstatic = [{ mac = 'zz', vtep = '192.0.2.2' }]\n",
     "not a MAC address"),
    ("local = [\n", "not valid TOML"),
    ("local = '192.0.2.1'\ntos = 300\n[[network]]\nvni = 1\ntap = 'a'\n", "neither 0..255 nor inherit"),
    ("local = '192.0.2.1'\ndf = 'maybe'\n[[network]]\nvni = 1\ntap = 'a'\n", "df 'maybe' is not one of"),
    ("local = '192.0.2.1'\ninner_vlan = 'keep'\n[[network]]\nvni = 1\ntap = 'a'\n", "inner_vlan 'keep'"),
])
def test_bad_config_is_refused_in_one_line(text, words):
    with pytest.raises(VxlandError) as e:
        parse_toml(text, "test.toml")
    assert words in str(e.value) and "\n" not in str(e.value)


def args(*argv):
    return build_parser().parse_args(["run", *argv])


def test_flags_make_one_network():
    c = config_from_args(args("--local", "192.0.2.1", "--vni", "42", "--tap", "vx0", "--peer", "192.0.2.2",
                              "--peer", "192.0.2.3", "--static", "02:00:00:00:00:01=192.0.2.2",
                              "--source-ports", "60000-60010", "--ageing", "5", "--no-learning",
                              "--tos", "inherit", "--df", "unset", "--reserved-bits", "drop"))
    (n,) = c.networks
    assert (n.vni, n.tap, n.peers, n.ageing, n.learning) == (42, "vx0", ["192.0.2.2", "192.0.2.3"], 5.0, False)
    assert c.source_ports == (60000, 60010) and n.static[0].vtep == "192.0.2.2"
    assert (c.tos, c.df, c.reserved_bits, c.inner_vlan) == ("inherit", "unset", "drop", "discard")


def test_flags_override_the_file_top_level_but_not_networks(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(GOOD)
    c = config_from_args(args("--config", str(f), "--port", "4789", "--datapath", "native"))
    assert c.port == 4789 and c.datapath == "native" and len(c.networks) == 2
    with pytest.raises(VxlandError, match="with --config, put it in the file"):
        config_from_args(args("--config", str(f), "--vni", "5"))


def test_missing_flags_are_named():
    with pytest.raises(VxlandError, match="missing --vni, --tap"):
        config_from_args(args("--local", "192.0.2.1"))


NET = "[[network]]\nvni = 1\ntap = 'vx1'\n"


@pytest.mark.parametrize("text,words", [
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'a_name_too_long16'\n", "bad TAP name"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'vx%d'\n", "bad TAP name"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = '..'\n", "bad TAP name"),
    ("local = '192.0.2.1'\n[[network]]\nvni = 1\ntap = 'vx1'\nbridge = 'br 0'\n", "bad bridge name"),
    ("local = '192.0.2.1'\n" + NET + "ageing = nan\n", "ageing must be a positive number"),
    ("local = '192.0.2.1'\n" + NET + "ageing = inf\n", "ageing must be a positive number"),
    ("local = '192.0.2.1'\n" + NET + "peers = ['192.0.2.1']\n", "this VTEP's own address"),
    ("local = '192.0.2.1'\n" + NET + "static = [{ mac = '02:00:00:00:00:01', vtep = '192.0.2.1' }]\n",
     "this VTEP's own address"),
    ("local = '192.0.2.1'\n" + NET + "peers = [" + ", ".join(f"'198.51.{i // 250}.{i % 250 + 1}'" for i in range(257))
     + "]\n", "at most 256 remotes"),
    ("local = '192.0.2.1'\n" + "".join(f"[[network]]\nvni = {i}\ntap = 'vx{i}'\n" for i in range(257)),
     "at most 256"),
    ("local = '192.0.2.1'\naccept_from = 'friends'\n" + NET, "accept_from 'friends' is not one of"),
    ("local = '192.0.2.1'\naccept_prefixes = ['2001:db8::/32']\n" + NET, "IPv6 prefix on an IPv4 underlay"),
    ("local = '192.0.2.1'\n" + NET + "accept_prefixes = ['nonsense']\n", "not an address prefix"),
    ("local = '192.0.2.1'\n" + NET + "max_learned = -1\n", "max_learned must be"),
])
def test_hostile_or_mistaken_config_is_refused_in_one_line(text, words):
    with pytest.raises(VxlandError) as e:
        parse_toml(text, "test.toml")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_acceptance_daemon_wide_and_per_network():
    c = parse_toml("local = '192.0.2.1'\naccept_from = 'known'\naccept_prefixes = ['198.51.100.0/24']\n"
                   + NET + "[[network]]\nvni = 2\ntap = 'vx2'\naccept_from = 'any'\n"
                   "[[network]]\nvni = 3\ntap = 'vx3'\naccept_prefixes = ['203.0.113.0/25']\n")
    assert [c.acceptance(n) for n in c.networks] == [
        ("known", ["198.51.100.0/24"]), ("any", ["198.51.100.0/24"]), ("known", ["203.0.113.0/25"])]
    flags = config_from_args(args("--local", "192.0.2.1", "--vni", "1", "--tap", "vx1", "--accept-from", "known",
                                  "--accept-prefix", "198.51.100.7/32"))
    assert flags.acceptance(flags.networks[0]) == ("known", ["198.51.100.7/32"])
    assert flags.networks[0].max_learned == 8192


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=20),
       st.sampled_from(["local", "port", "network", "ttl", "tos", "accept_from", "accept_prefixes", "source_ports"]))
def test_any_value_anywhere_is_taken_or_refused_in_one_line(value, key):
    """Whatever a config file holds: a config, or VxlandError with one line; never a traceback."""
    import tomli_w
    document = {"local": "192.0.2.1", "network": [{"vni": 1, "tap": "vx1"}]}
    document[key] = value
    try:
        text = tomli_w.dumps({k: v for k, v in document.items() if v is not None})
    except (TypeError, ValueError):
        return                                          # not representable in TOML at all
    try:
        parse_toml(text, "fuzz.toml")
    except VxlandError as e:
        assert "\n" not in str(e)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["vni", "tap", "bridge", "mtu", "peers", "group", "ageing", "max_learned",
                                        "learning", "static", "accept_from", "accept_prefixes", "bogus"]),
                       st.none() | st.booleans() | st.integers(-2, 1 << 25) | st.floats() | st.text(max_size=20)
                       | st.lists(st.text(max_size=20) | st.integers() | st.dictionaries(st.text(max_size=5),
                                                                                         st.text(max_size=20)),
                                  max_size=3),
                       max_size=8))
def test_any_network_table_is_taken_or_refused_in_one_line(network):
    import tomli_w
    try:
        text = tomli_w.dumps({"local": "192.0.2.1", "network": [{k: v for k, v in network.items() if v is not None}]})
    except (TypeError, ValueError):
        return
    try:
        parse_toml(text, "fuzz.toml")
    except VxlandError as e:
        assert "\n" not in str(e)


def test_without_its_user_vxland_started_as_root_refuses_rather_than_run_as_nobody(monkeypatch):
    from vxland import privileges
    monkeypatch.setattr(privileges, "DEFAULT_USER", "no-such-vxland-user")
    with pytest.raises(VxlandError, match="there is no user no-such-vxland-user to run as"):
        privileges.run_as(None)
    assert privileges.run_as("root") is None                  # asked for: uid 0 kept
