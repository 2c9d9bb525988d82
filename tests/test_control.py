"""The control socket protocol, with a daemon-less dispatcher on a real Unix socket."""

import asyncio
import threading

import pytest

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
