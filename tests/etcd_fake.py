"""An etcd in memory with store.Store's interface, for driving EtcdService without a cluster:
revisions, leases (expired by the test), compare-and-swap, watches, compaction, and an
outage switch.  What it models is what vxland relies on, checked against the real store by
tests/test_etcd.py."""

from __future__ import annotations

import asyncio

from vxland.etcd.store import KV, Compacted, Event, StoreError


class FakeStore:
    def __init__(self) -> None:
        self.kv: dict[bytes, KV] = {}
        self.rev = 1
        self.compacted = 0
        self.leases: dict[int, int] = {}           # id -> TTL
        self._next_lease = 100
        self.down = False
        self.fail_overs = 0
        self.endpoint = "http://fake:2379"
        self._watchers: list[tuple[bytes, asyncio.Queue]] = []
        self.puts: list[bytes] = []                 # keys put, in order (what the tests count)
        self.history: list[Event] = []              # every event, for watches that start in the past

    async def _check(self) -> None:
        await asyncio.sleep(0)                      # every call lets the others run: hosts interleave
        if self.down:
            raise StoreError("fake store: unavailable")

    def _commit(self, events: list[Event]) -> None:
        self.history += events
        for prefix, queue in self._watchers:
            mine = [e for e in events if e.key.startswith(prefix)]
            if mine:
                queue.put_nowait(mine)

    def _put(self, key: bytes, value: bytes, lease: int) -> int:
        if lease and lease not in self.leases:
            raise StoreError("fake store: requested lease not found")
        self.rev += 1
        self.kv[key] = KV(key, value, self.rev, lease)
        self.puts.append(key)
        self._commit([Event(True, key, value, self.rev)])
        return self.rev

    def _delete(self, key: bytes) -> None:
        if self.kv.pop(key, None) is not None:
            self.rev += 1
            self._commit([Event(False, key, b"", self.rev)])

    # ---- the interface ---------------------------------------------------------------
    async def range(self, prefix: bytes, limit: int | None = None) -> tuple[int, list[KV]]:
        await self._check()
        return self.rev, [kv for key, kv in sorted(self.kv.items()) if key.startswith(prefix)][:limit]

    async def revision(self, prefix: bytes = b"") -> int:
        await self._check()
        return self.rev

    async def get(self, key: bytes) -> KV | None:
        await self._check()
        return self.kv.get(key)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        await self._check()
        return self._put(key, value, lease)

    async def delete(self, key: bytes) -> None:
        await self._check()
        self._delete(key)

    async def delete_if_lease(self, key: bytes, lease: int) -> bool:
        await self._check()
        if key in self.kv and self.kv[key].lease == lease:
            self._delete(key)
            return True
        return False

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> KV | None:
        await self._check()
        if key in self.kv:
            return self.kv[key]
        self._put(key, value, lease)
        return None

    async def replace(self, key: bytes, value: bytes, lease: int, mod_revision: int) -> KV | None:
        await self._check()
        now = self.kv.get(key)
        if now is None or now.mod_revision != mod_revision:
            return now or KV(key, b"", 0, 0)
        self._put(key, value, lease)
        return None

    async def grant(self, ttl: int) -> int:
        await self._check()
        self._next_lease += 1
        self.leases[self._next_lease] = ttl
        return self._next_lease

    async def keep_alive(self, lease: int, timeout: float | None = None) -> int:
        await self._check()
        return self.leases.get(lease, 0)

    async def revoke(self, lease: int) -> None:
        await self._check()
        self.expire(lease)

    async def watch(self, prefix: bytes, start_revision: int):
        await self._check()
        if start_revision <= self.compacted:
            raise Compacted(self.compacted)
        queue: asyncio.Queue = asyncio.Queue()
        past = [e for e in self.history if e.mod_revision >= start_revision and e.key.startswith(prefix)]
        if past:
            queue.put_nowait(past)
        entry = (prefix, queue)
        self._watchers.append(entry)
        try:
            while True:
                batch = await queue.get()
                if isinstance(batch, Exception):
                    raise batch
                yield batch
        finally:
            self._watchers.remove(entry)

    async def close(self) -> None:
        pass

    # ---- what the tests do to it ---------------------------------------------------------
    def expire(self, lease: int) -> None:
        """The lease runs out: its keys go, as DELETE events."""
        self.leases.pop(lease, None)
        for key in [k for k, kv in self.kv.items() if kv.lease == lease]:
            self._delete(key)

    def outage(self, down: bool = True) -> None:
        """Every member unreachable (or back): calls fail, watches end."""
        self.down = down
        if down:
            for _, queue in self._watchers:
                queue.put_nowait(StoreError("fake store: unavailable"))

    def compact(self) -> None:
        """Compacted up to now, and every watch cancelled as the server does to a slow one."""
        self.compacted = self.rev
        for _, queue in self._watchers:
            queue.put_nowait(Compacted(self.compacted))

    def write(self, key: str, value: str, lease: int = 0) -> None:
        """A put from someone else (an operator, a forger)."""
        self._put(key.encode(), value.encode(), lease)
