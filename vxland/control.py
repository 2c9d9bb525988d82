"""The control socket: one JSON request per line in, one JSON reply per line out.

    {"verb": "fdb.show", "args": {...}}   ->   {"ok": true, "result": ...}
                                          or   {"ok": false, "error": "one line"}

The server side dispatches to a callable (Daemon.control); the client side is
what every `vxland` verb other than `run` uses.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
from typing import Any, Callable

from .errors import VxlandError

log = logging.getLogger("vxland.control")
MAX_REQUEST = 1 << 16


class ControlServer:
    def __init__(self, path: str, dispatch: Callable[[str, dict[str, Any]], Any]) -> None:
        self.path = path
        self._dispatch = dispatch
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as e:
            raise VxlandError(f"cannot create {directory} for the control socket: {e.strerror}") from None
        if os.path.exists(self.path):
            if _answers(self.path):
                raise VxlandError(f"control socket {self.path} is in use by a running vxland "
                                  "(give another with --control)")
            os.unlink(self.path)                      # left over by a daemon that died
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Session(self._dispatch), self.path)
        except OSError as e:
            raise VxlandError(f"cannot listen on control socket {self.path}: {e.strerror}") from None
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class _Session(asyncio.Protocol):
    def __init__(self, dispatch: Callable[[str, dict[str, Any]], Any]) -> None:
        self._dispatch = dispatch
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_REQUEST:
            self._reply({"ok": False, "error": "request too long"})
            self._transport.close()
            return
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._reply(self._answer(line))

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            verb, args = request["verb"], request.get("args", {})
            if not isinstance(verb, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request: want {\"verb\": ..., \"args\": {...}}"}
        try:
            return {"ok": True, "result": self._dispatch(verb, args)}
        except (VxlandError, ValueError) as e:
            return {"ok": False, "error": str(e)}
        except Exception:  # a bug: say so, keep the daemon up
            log.exception("control verb %s failed", verb)
            return {"ok": False, "error": f"internal error in {verb}; see the daemon's log"}

    def _reply(self, reply: dict[str, Any]) -> None:
        self._transport.write(json.dumps(reply).encode() + b"\n")  # type: ignore[attr-defined]


def _answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
        return True
    except OSError:
        return False


def request(path: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """Ask the daemon at `path`; its result, or VxlandError with its one-line reason."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as e:
            hint = " (is vxland running? give its socket with --control)" \
                if e.errno in (errno.ENOENT, errno.ECONNREFUSED) else ""
            raise VxlandError(f"cannot reach vxland at {path}: {e.strerror}{hint}") from None
        s.sendall(json.dumps({"verb": verb, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise VxlandError(f"vxland at {path} closed the connection without an answer")
            data += chunk
    reply = json.loads(data)
    if not reply.get("ok"):
        raise VxlandError(reply.get("error", "unknown error"))
    return reply["result"]
