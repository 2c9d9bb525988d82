"""The control socket: one JSON request per line in, one JSON reply per line out.

    {"verb": "fdb.show", "args": {...}}   ->   {"ok": true, "result": ...}
                                          or   {"ok": false, "error": "one line"}

The server side checks each request against the verb's arguments (`Verb`) and
dispatches it to a callable (Daemon.dispatch); the client side is what every
`vxland` verb other than `run` uses.  The socket file is created with mode 0660
(owner and group: whoever may change the tables) and removed by the daemon
that made it, never by another.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import logging
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import VxlandError

log = logging.getLogger("vxland.control")
MAX_REQUEST = 1 << 16
MAX_REPLY = 64 << 20             # an fdb show of every entry of 256 full networks fits


@dataclass(frozen=True)
class Verb:
    """What a control verb takes: required and optional arguments and their types."""
    required: dict[str, type] = field(default_factory=dict)
    optional: dict[str, type] = field(default_factory=dict)

    def check(self, name: str, args: dict[str, Any]) -> None:
        """VxlandError, one line, unless args are exactly what the verb takes."""
        unknown = set(args) - set(self.required) - set(self.optional)
        missing = set(self.required) - set(args)
        if unknown or missing:
            takes = ", ".join([*self.required, *(f"[{a}]" for a in self.optional)]) or "no arguments"
            raise VxlandError(f"{name} takes {takes}"
                              + (f"; not {', '.join(sorted(unknown))}" if unknown else ""))
        for key, value in args.items():
            kind = self.required.get(key) or self.optional[key]
            if value is None and key in self.optional:
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise VxlandError(f"{name}: {key} must be {kind.__name__}, not {value!r}"[:200])


class ControlServer:
    def __init__(self, path: str, dispatch: Callable[[str, dict[str, Any]], Any],
                 verbs: dict[str, Verb] | None = None) -> None:
        self.path = path
        self._dispatch = dispatch
        self._verbs = verbs
        self._server: asyncio.AbstractServer | None = None
        self._made: tuple[int, int] | None = None       # (device, inode) of the socket file we made
        self._made_dir = False

    async def start(self) -> None:
        if not self.path:
            raise VxlandError("the control socket path is empty")
        directory = os.path.dirname(self.path) or "."
        self._made_dir = not os.path.exists(directory)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as e:
            raise VxlandError(f"cannot create {directory} for the control socket: "
                              f"{e.strerror or e}") from None
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as e:
            raise VxlandError(f"control socket {self.path}: {e.strerror}") from None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise VxlandError(f"control socket path {self.path} exists and is not a socket: "
                                  "refusing to replace it (give another with --control)")
            if _answers(self.path):
                raise VxlandError(f"control socket {self.path} is in use by a running vxland "
                                  "(give another with --control)")
            os.unlink(self.path)                      # left over by a daemon that died
        old_umask = os.umask(0o117)                   # 0660 from the moment it exists
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Session(self._dispatch, self._verbs), self.path)
        except OSError as e:
            raise VxlandError(f"cannot listen on control socket {self.path}: {e.strerror}") from None
        finally:
            os.umask(old_umask)
        st = os.stat(self.path)
        self._made = (st.st_dev, st.st_ino)

    def chown(self, uid: int, gid: int) -> None:
        """Hand the socket file (and its directory, if we made it) to the user the daemon will
        run as (--user), so that it can still remove them when it stops."""
        if self._made is not None:
            try:
                os.chown(self.path, uid, gid)
                if self._made_dir:
                    os.chown(os.path.dirname(self.path) or ".", uid, gid)
            except OSError as e:
                raise VxlandError(f"cannot hand control socket {self.path} to uid {uid}: {e.strerror}") from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.remove()

    def remove(self) -> None:
        """Unlink the socket file if it is still the one this server made (never another's)."""
        if self._made is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._made:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove control socket %s: %s", self.path, e.strerror)
        self._made = None


class _Session(asyncio.Protocol):
    def __init__(self, dispatch: Callable[[str, dict[str, Any]], Any], verbs: dict[str, Verb] | None) -> None:
        self._dispatch = dispatch
        self._verbs = verbs
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            answer = self._answer(line)
            if inspect.isawaitable(answer.get("result")):      # a verb that takes time (reload)
                asyncio.ensure_future(self._finish(answer["result"]))
            else:
                self._reply(answer)
        if len(self._buffer) > MAX_REQUEST:
            self._reply({"ok": False, "error": "request too long"})
            self._transport.close()
            self._buffer = b""

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            verb, args = request["verb"], request.get("args", {})
            if not isinstance(verb, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            return {"ok": False, "error": "malformed request: want {\"verb\": ..., \"args\": {...}}"}
        try:
            if self._verbs is not None:
                if verb not in self._verbs:
                    raise VxlandError(f"unknown verb {verb[:40]!r}")
                self._verbs[verb].check(verb, args)
            return {"ok": True, "result": self._dispatch(verb, args)}
        except (VxlandError, ValueError) as e:
            return {"ok": False, "error": str(e)}
        except Exception:  # a bug: say so, keep the daemon up
            log.exception("control verb %s failed", verb)
            return {"ok": False, "error": f"internal error in {verb}; see the daemon's log"}

    async def _finish(self, pending: Any) -> None:
        try:
            self._reply({"ok": True, "result": await pending})
        except (VxlandError, ValueError) as e:
            self._reply({"ok": False, "error": str(e)})
        except Exception:
            log.exception("control verb failed")
            self._reply({"ok": False, "error": "internal error; see the daemon's log"})

    def _reply(self, reply: dict[str, Any]) -> None:
        if self._transport.is_closing():  # type: ignore[attr-defined]
            return
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
            raise VxlandError(f"cannot reach vxland at {path}: {e.strerror or e}{hint}") from None
        data = bytearray()                 # (bytes += would copy 11 MB of fdb show 170 times)
        try:
            s.sendall(json.dumps({"verb": verb, "args": args or {}}).encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise VxlandError(f"vxland at {path} closed the connection without an answer")
                data += chunk
                if len(data) > MAX_REPLY:
                    raise VxlandError(f"vxland at {path} sent an answer longer than {MAX_REPLY} bytes")
        except socket.timeout:
            raise VxlandError(f"vxland at {path} did not answer within {timeout:g} s") from None
        except OSError as e:
            raise VxlandError(f"lost the connection to vxland at {path}: {e.strerror or e}") from None
    try:
        reply = json.loads(data)
        ok, result, error = reply.get("ok"), reply.get("result"), reply.get("error")
    except (ValueError, AttributeError):
        raise VxlandError(f"vxland at {path} answered with something that is not a reply") from None
    if not ok:
        raise VxlandError(str(error or "unknown error"))
    return result
