"""etcd's v3 API over gRPC, as the etcd service needs it: the thin I/O of vxland/etcd.

The messages are etcd's own (the stubs that the `aetcd` package ships, generated from
etcd's .proto files); the channel is ours, so that it can speak TLS with a client
certificate, carry etcd's require-leader mark, and fail over: a call that finds its member
unreachable closes the channel and the next call goes to the next endpoint, round the list.
Every call has a deadline; a watch has none, but asks for a leader (a member cut off from
the others ends it instead of staying silent) and a member that vanishes without a reset is
noticed by the lease renewals beside it, which have deadlines.  Listings are paged at one
revision, so that no reply nears gRPC's size limits however many keys the store holds.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
from aetcd import rpc

from .layout import Endpoint

log = logging.getLogger("vxland.etcd")
# gRPC logs an error of its own for every failed connection whose details it cannot decode;
# the call's StoreError says what failed, once, in vxland's words.
logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)

TIMEOUT = 5.0                     # seconds a call may take
PAGE = 1000                       # keys per reply of a listing
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 5000),            # the members' minimum (--grpc-keepalive-min-time)
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_reconnect_backoff_ms", 1000),     # a member back is used within a second
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_receive_message_length", 16 << 20),
)
REQUIRE_LEADER = (("hasleader", "true"),)
FAIL_OVER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.CANCELLED)


class StoreError(Exception):
    """The store could not be asked (every endpoint tried in turn by the caller's retries)."""


class TooLarge(StoreError):
    """A reply past gRPC's message limit (a listing of big values: a page of fewer keys fits)."""


class Compacted(StoreError):
    """A watch's start revision is gone: list everything again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted (now {revision})")
        self.revision = revision


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Event:
    put: bool                     # False: deleted (by a host, or its lease ran out)
    key: bytes
    value: bytes
    mod_revision: int


def _why(e: grpc.aio.AioRpcError) -> str:
    """The status, and the first line of gRPC's details (which may carry binary after it)."""
    details = (e.details() or "").split("\n", 1)[0]
    return f"{e.code().name.lower()}: {''.join(c for c in details if c.isprintable())[:200]}"


def _range_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


class Store:
    def __init__(self, endpoints: list[Endpoint], ca: bytes | None = None, cert: bytes | None = None,
                 key: bytes | None = None, timeout: float = TIMEOUT) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self._credentials = (grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                          certificate_chain=cert)
                             if endpoints[0].scheme == "https" else None)
        self._at = 0
        self._channel: grpc.aio.Channel | None = None
        self._kv: rpc.KVStub | None = None
        self._lease: rpc.LeaseStub | None = None
        self._watch: rpc.WatchStub | None = None
        self.fail_overs = 0

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._at].url

    def _open(self) -> None:
        if self._channel is not None:
            return
        target = self.endpoints[self._at].target
        self._channel = (grpc.aio.secure_channel(target, self._credentials, options=CHANNEL_OPTIONS)
                         if self._credentials is not None else grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS))
        self._kv, self._lease, self._watch = (rpc.KVStub(self._channel), rpc.LeaseStub(self._channel),
                                              rpc.WatchStub(self._channel))

    async def fail_over(self) -> None:
        """The next endpoint, from the next call on (moved to first: a call made while the old
        channel closes goes to the new one)."""
        self._at = (self._at + 1) % len(self.endpoints)
        self.fail_overs += 1
        await self.close()

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def _failed(self, channel, e: BaseException, what: str, endpoint: str) -> StoreError:
        """What a failed call on `channel` means: a StoreError to raise, after a fail-over if the
        member is unreachable and that channel is still the one in use (a call that failed on a
        channel closed by an earlier fail-over moves nothing)."""
        if isinstance(e, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise e                               # our own task is being cancelled: let it
            return StoreError(f"{what} at {endpoint}: its channel was closed (a fail-over)")
        assert isinstance(e, grpc.aio.AioRpcError)
        if e.code() in FAIL_OVER and len(self.endpoints) > 1 and channel is self._channel:
            await self.fail_over()
        kind = TooLarge if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else StoreError
        return kind(f"{what} at {endpoint}: {_why(e)}")

    async def _call(self, method: str, stub: str, request, what: str, timeout: float | None = None):
        self._open()
        channel, endpoint = self._channel, self.endpoint
        try:
            return await getattr(getattr(self, stub), method)(request, timeout=timeout or self.timeout,
                                                              metadata=REQUIRE_LEADER)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
            raise await self._failed(channel, e, what, endpoint) from None

    # ---- keys ---------------------------------------------------------------------------
    async def range(self, prefix: bytes, limit: int | None = None) -> tuple[int, list[KV]]:
        """Every key under `prefix` (the first `limit`, if given) and the store's revision they
        are as of: a page at a time, every page at the first page's revision."""
        what, end = f"listing {prefix.decode(errors='replace')}", _range_end(prefix)
        out: list[KV] = []
        start, revision, size = prefix, 0, PAGE
        if limit is not None and limit <= 0:
            return await self.revision(prefix), out
        while True:
            page = size if limit is None else min(size, limit - len(out))
            try:
                reply = await self._call("Range", "_kv", rpc.RangeRequest(key=start, range_end=end, limit=page,
                                                                          revision=revision), what)
            except TooLarge:                             # big values: fewer of them a page
                if size == 1:
                    raise
                size = max(1, size // 8)
                continue
            revision = revision or reply.header.revision
            out += [KV(kv.key, kv.value, kv.mod_revision, kv.lease) for kv in reply.kvs]
            if not reply.more or not reply.kvs or (limit is not None and len(out) >= limit):
                return revision, out
            start = reply.kvs[-1].key + b"\0"

    async def revision(self, prefix: bytes) -> int:
        """The store's revision now (asked of `prefix`: a role limited to it may ask)."""
        reply = await self._call("Range", "_kv", rpc.RangeRequest(key=prefix, range_end=_range_end(prefix),
                                                                  count_only=True), "asking the revision")
        return reply.header.revision

    async def get(self, key: bytes) -> KV | None:
        reply = await self._call("Range", "_kv", rpc.RangeRequest(key=key), f"reading {key.decode(errors='replace')}")
        return KV(reply.kvs[0].key, reply.kvs[0].value, reply.kvs[0].mod_revision, reply.kvs[0].lease) \
            if reply.kvs else None

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        reply = await self._call("Put", "_kv", rpc.PutRequest(key=key, value=value, lease=lease),
                                 f"writing {key.decode(errors='replace')}")
        return reply.header.revision

    async def delete(self, key: bytes) -> None:
        await self._call("DeleteRange", "_kv", rpc.DeleteRangeRequest(key=key),
                         f"deleting {key.decode(errors='replace')}")

    async def delete_if_lease(self, key: bytes, lease: int) -> bool:
        """Delete `key` only if it is on `lease` (still ours): whether it was."""
        reply = await self._call("Txn", "_kv", rpc.TxnRequest(
            compare=[rpc.Compare(key=key, target=rpc.Compare.LEASE, result=rpc.Compare.EQUAL, lease=lease)],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))]),
            f"releasing {key.decode(errors='replace')}")
        return reply.succeeded

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> KV | None:
        """Put `key` only if it does not exist: None if it was created, else what holds it."""
        return await self._txn(rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                                           create_revision=0), key, value, lease)

    async def replace(self, key: bytes, value: bytes, lease: int, mod_revision: int) -> KV | None:
        """Put `key` only if it is still as read at `mod_revision`: None if it was, else what it is now."""
        return await self._txn(rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                                           mod_revision=mod_revision), key, value, lease)

    async def _txn(self, compare, key: bytes, value: bytes, lease: int) -> KV | None:
        reply = await self._call("Txn", "_kv", rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))]),
            f"claiming {key.decode(errors='replace')}")
        if reply.succeeded:
            return None
        kvs = reply.responses[0].response_range.kvs if reply.responses else []
        return KV(kvs[0].key, kvs[0].value, kvs[0].mod_revision, kvs[0].lease) if kvs else KV(key, b"", 0, 0)

    # ---- leases -----------------------------------------------------------------------
    async def grant(self, ttl: int) -> int:
        reply = await self._call("LeaseGrant", "_lease", rpc.LeaseGrantRequest(TTL=ttl), "granting a lease")
        if reply.error:
            raise StoreError(f"granting a lease at {self.endpoint}: {reply.error}")
        return reply.ID

    async def keep_alive(self, lease: int, timeout: float | None = None) -> int:
        """Renew `lease`; its TTL now, 0 if the store no longer has it."""
        self._open()
        assert self._lease is not None
        channel, endpoint = self._channel, self.endpoint
        try:
            call = self._lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                                              timeout=timeout or self.timeout, metadata=REQUIRE_LEADER)
            async for reply in call:
                return reply.TTL
            return 0
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
            raise await self._failed(channel, e, "renewing a lease", endpoint) from None

    async def revoke(self, lease: int) -> None:
        await self._call("LeaseRevoke", "_lease", rpc.LeaseRevokeRequest(ID=lease), "revoking a lease")

    # ---- watching --------------------------------------------------------------------
    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of changes under `prefix` from `start_revision` on; StoreError when the
        stream ends (Compacted if the revision is gone)."""
        self._open()
        assert self._watch is not None
        channel, endpoint = self._channel, self.endpoint
        stop = asyncio.Event()

        async def requests():
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=prefix, range_end=_range_end(prefix), start_revision=start_revision, progress_notify=True))
            await stop.wait()

        call = self._watch.Watch(requests(), metadata=REQUIRE_LEADER)
        try:
            async for reply in call:
                if reply.compact_revision:
                    raise Compacted(reply.compact_revision)
                if reply.canceled:
                    raise StoreError(f"watch at {endpoint} canceled: {reply.cancel_reason or 'no reason given'}")
                if reply.events:
                    yield [Event(ev.type == 0, ev.kv.key, ev.kv.value, ev.kv.mod_revision) for ev in reply.events]
            raise StoreError(f"watch at {endpoint} ended")
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
            raise await self._failed(channel, e, "watch", endpoint) from None
        finally:
            stop.set()
            call.cancel()
