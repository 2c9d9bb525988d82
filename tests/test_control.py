"""The control socket protocol, with a daemon-less dispatcher on a real Unix socket."""

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vxland import control
from vxland.errors import VxlandError


@pytest.fixture
def server(tmp_path):
    path = str(tmp_path / "ctl" / "vxland.sock")
    calls = []

    def dispatch(verb, args):
        calls.append((verb, args))
        if verb == "boom":
            raise RuntimeError("a bug")
        if verb == "refuse":
            raise VxlandError("no network with VNI 7")
        return {"verb": verb, "args": args}

    loop = asyncio.new_event_loop()
    srv = control.ControlServer(path, dispatch)
    loop.run_until_complete(srv.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield path, calls
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(srv.stop())
    loop.close()


def test_request_and_reply(server):
    path, calls = server
    assert control.request(path, "fdb.show", {"vni": 42}) == {"verb": "fdb.show", "args": {"vni": 42}}
    assert calls == [("fdb.show", {"vni": 42})]


def test_errors_come_back_as_one_line(server):
    path, _ = server
    with pytest.raises(VxlandError, match="no network with VNI 7"):
        control.request(path, "refuse")
    with pytest.raises(VxlandError, match="internal error in boom"):
        control.request(path, "boom")
    assert control.request(path, "still.alive") == {"verb": "still.alive", "args": {}}


def test_malformed_request_is_answered(server):
    import socket
    path, _ = server
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b"not json\n")
        assert b"malformed request" in s.recv(1000)


def test_a_second_server_on_a_live_socket_is_refused(server):
    path, _ = server
    with pytest.raises(VxlandError, match="in use by a running vxland"):
        asyncio.run(control.ControlServer(path, lambda v, a: None).start())


def test_no_daemon_says_so(tmp_path):
    with pytest.raises(VxlandError, match="is vxland running"):
        control.request(str(tmp_path / "none.sock"), "stats")


def in_memory_daemon():
    """A Daemon whose networks have no devices: enough to answer control verbs."""
    from types import SimpleNamespace

    from vxland.config import DaemonConfig, NetworkSpec
    from vxland.daemon import Daemon
    config = DaemonConfig(local="192.0.2.1", networks=[NetworkSpec(vni=42, tap="vx0", peers=["192.0.2.2"])],
                          datapath="reference").validate()
    daemon = Daemon(config)
    tap = SimpleNamespace(name="vx0", fd=-1, mac=bytes.fromhex("0200000000ee"), vnet_hdr=False, uso=False,
                          mtu=1450, queues=(), overflow_drops=lambda: 0)
    daemon._add_network(0, config.networks[0], tap)
    return daemon


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=30), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(verb=st.sampled_from(["fdb.show", "fdb.add", "fdb.del", "peers.show", "peers.add", "peers.del", "stats",
                             "nope"]) | st.text(max_size=10),
       args=st.dictionaries(st.sampled_from(["vni", "mac", "vtep", "address", "extra"]),
                            st.sampled_from([42, 7, "42", None, True, "02:00:00:00:00:01", "192.0.2.9", "x",
                                             "224.0.0.1", -1]) | json_values, max_size=4))
def test_any_request_gets_one_answer_and_no_internal_error(verb, args):
    import json

    from vxland.daemon import VERBS
    daemon = in_memory_daemon()
    session = control._Session(daemon.dispatch, VERBS)
    reply = session._answer(json.dumps({"verb": verb, "args": args}).encode())
    assert set(reply) in ({"ok", "result"}, {"ok", "error"})
    if not reply["ok"]:
        assert "\n" not in reply["error"] and "internal error" not in reply["error"], reply
    json.dumps(reply)                                   # whatever it says can be sent


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_get_an_answer(line):
    reply = control._Session(lambda verb, args: None, {})._answer(line)
    assert reply["ok"] is False and "\n" not in reply["error"]


def test_the_socket_is_0660_from_the_start_and_only_a_stale_socket_is_replaced(tmp_path):
    import os
    import socket
    import stat

    loop = asyncio.new_event_loop()
    old = os.umask(0)                                   # the most permissive umask
    try:
        path = str(tmp_path / "s.sock")
        srv = control.ControlServer(path, lambda v, a: None)
        loop.run_until_complete(srv.start())
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        loop.run_until_complete(srv.stop())
        assert not os.path.exists(path)
    finally:
        os.umask(old)
    regular = tmp_path / "file"
    regular.write_text("precious")
    for bad, words in ((str(regular), "is not a socket"), (str(tmp_path), "is not a socket"), ("", "is empty"),
                       (str(regular / "x.sock"), "cannot create")):
        with pytest.raises(VxlandError, match=words):
            loop.run_until_complete(control.ControlServer(bad, lambda v, a: None).start())
    assert regular.read_text() == "precious"
    # a stale socket (its daemon died) is replaced
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    srv = control.ControlServer(stale, lambda v, a: None)
    loop.run_until_complete(srv.start())
    # a daemon stopping never removes another's socket made at the same path since
    os.unlink(stale)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(stale)
    loop.run_until_complete(srv.stop())
    assert os.path.exists(stale)
    other.close()
    loop.close()


def test_a_reset_connection_is_one_line(tmp_path):
    import socket
    path = str(tmp_path / "rst.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def reset():
        conn, _ = listener.accept()
        conn.recv(100)
        conn.close()                                      # no answer at all
    t = threading.Thread(target=reset)
    t.start()
    with pytest.raises(VxlandError, match="closed the connection|lost the connection"):
        control.request(path, "stats")
    t.join()
    listener.close()


def test_this_vteps_own_address_is_never_a_remote():
    daemon = in_memory_daemon()
    for verb, args in (("peers.add", {"vni": 42, "address": "192.0.2.1"}),
                       ("fdb.add", {"vni": 42, "mac": "02:00:00:00:00:01", "vtep": "192.0.2.1"})):
        with pytest.raises(ValueError, match="own address"):
            daemon.dispatch(verb, args)
    assert daemon.dispatch("peers.show", {})[0]["peers"] == ["192.0.2.2"]
