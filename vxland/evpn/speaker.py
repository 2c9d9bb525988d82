"""gobgpd's gRPC API, as vxland uses it (grpc.aio, on vxland's event loop).

    AddPath / DeletePath     our routes (a path is deleted by the UUID AddPath returned:
                             deleting by the path itself fails once its MAC-mobility
                             sequence number changed)
    WatchEvent (BEST, init)  every best path of the global table, then each change
    ListPath                 the global table now (a resynchronisation)
    ListPeer, GetBgp         sessions and identity, for `vxland evpn show` and the checks

Every call has a deadline; a failure raises SpeakerError with one clear line.
"""

from __future__ import annotations

from typing import AsyncIterator

import grpc

from .gobgp import capability_pb2  # noqa: F401  (its messages appear inside ListPeer answers)
from .gobgp import gobgp_pb2 as api
from .gobgp import gobgp_pb2_grpc as rpc
from .routes import EVPN_FAMILY

CALL_TIMEOUT = 5.0


class SpeakerError(RuntimeError):
    pass


def _explain(e: grpc.aio.AioRpcError, what: str) -> SpeakerError:
    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return SpeakerError(f"{what}: gobgpd does not answer ({e.code().name.lower()})")
    return SpeakerError(f"{what}: {e.details() or e.code().name}")


class Speaker:
    def __init__(self, api_address: str) -> None:
        self.address = api_address
        self._channel = grpc.aio.insecure_channel(api_address)
        self._stub = rpc.GobgpApiStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def identity(self) -> tuple[int, str]:
        """gobgpd's AS and router id (it answers: it is up)."""
        try:
            answer = await self._stub.GetBgp(api.GetBgpRequest(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            raise _explain(e, "GetBgp") from None
        identity = getattr(answer, "global")           # a Python keyword: no attribute syntax
        return identity.asn, identity.router_id

    async def add(self, path: api.Path) -> bytes:
        try:
            answer = await self._stub.AddPath(api.AddPathRequest(table_type=api.GLOBAL, path=path),
                                              timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            raise _explain(e, "AddPath") from None
        return answer.uuid

    async def delete(self, uuid: bytes) -> None:
        if not uuid:
            return                                  # an empty UUID would delete *every* local path
        try:
            await self._stub.DeletePath(api.DeletePathRequest(table_type=api.GLOBAL, family=EVPN_FAMILY, uuid=uuid),
                                        timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            raise _explain(e, "DeletePath") from None

    async def table(self) -> list[api.Path]:
        """Every path of the global EVPN table (each destination's best first)."""
        paths: list[api.Path] = []
        try:
            async for answer in self._stub.ListPath(api.ListPathRequest(table_type=api.GLOBAL, family=EVPN_FAMILY),
                                                    timeout=CALL_TIMEOUT * 4):
                paths += [p for p in answer.destination.paths if p.best]
        except grpc.aio.AioRpcError as e:
            raise _explain(e, "ListPath") from None
        return paths

    async def watch(self) -> AsyncIterator[list[api.Path]]:
        """Best-path changes of the global table, a batch per event, from the table as it is
        (init).  Ends with SpeakerError when gobgpd goes away."""
        request = api.WatchEventRequest(table=api.WatchEventRequest.Table(filters=[
            api.WatchEventRequest.Table.Filter(type=api.WatchEventRequest.Table.Filter.BEST, init=True)]))
        try:
            async for event in self._stub.WatchEvent(request):
                if event.HasField("table"):
                    yield list(event.table.paths)
        except grpc.aio.AioRpcError as e:
            raise _explain(e, "WatchEvent") from None
        raise SpeakerError("WatchEvent: gobgpd ended the stream")

    async def peers(self) -> list[api.Peer]:
        try:
            return [answer.peer async for answer in self._stub.ListPeer(api.ListPeerRequest(), timeout=CALL_TIMEOUT)]
        except grpc.aio.AioRpcError as e:
            raise _explain(e, "ListPeer") from None
