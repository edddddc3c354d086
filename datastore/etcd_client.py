"""A small asyncio etcd v3 client: range, transactions, watch and compaction over gRPC.

It uses the etcd v3 protobuf bindings that the `aetcd` package ships (generated for protobuf 4 and
later, unlike those of the older `etcd3` package) and opens the gRPC channel itself, because
aetcd 1.0's own client has no TLS. See docs/datastore.md for the choice.

Every gRPC failure that means "could not talk to etcd" becomes DatastoreUnavailable; with several
endpoints, the next one is tried before giving up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from percale.datastore.errors import DatastoreError, DatastoreUnavailable, RevisionCompacted

# Codes that say the request did not reach a working etcd; anything else is an answer.
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


# gRPC refuses responses over 4 MiB by default; listing every IPAM block of a large cluster is
# one range response and can be bigger than that.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


@dataclass(frozen=True)
class TLSFiles:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range cover every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdClient:
    def __init__(
        self, endpoints: Sequence[str], *, tls: TLSFiles | None = None, timeout: float = 5.0
    ):
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._endpoints = list(endpoints)
        self._tls = tls
        self._timeout = timeout
        self._current = 0
        self._channel: grpc.aio.Channel | None = None
        # Stubs are cheap but not free to build; one per type and channel.
        self._stubs: dict[type, tuple[grpc.aio.Channel, object]] = {}

    @property
    def endpoint(self) -> str:
        return self._endpoints[self._current]

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            url = urlsplit(self.endpoint if "//" in self.endpoint else f"http://{self.endpoint}")
            # unix:///path/to/socket reaches an etcd listening on a unix socket.
            target = f"unix:{url.path}" if url.scheme == "unix" else url.netloc
            secure = url.scheme == "https" or (self._tls is not None and self._tls.ca_file)
            if secure:
                self._channel = grpc.aio.secure_channel(
                    target, (self._tls or TLSFiles()).credentials(), options=_CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return self._channel

    async def _rotate(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self._current = (self._current + 1) % len(self._endpoints)

    def _stub(self, stub_type: type) -> object:
        channel = self._open()
        stub = self._stubs.get(stub_type)
        if stub is None or stub[0] is not channel:
            stub = self._stubs[stub_type] = (channel, stub_type(channel))
        return stub[1]

    async def _unary(self, stub_type: type, method: str, request: object) -> object:
        last: grpc.aio.AioRpcError | None = None
        for _ in self._endpoints:
            call = getattr(self._stub(stub_type), method)
            try:
                return await call(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as err:
                if err.code() not in _UNREACHABLE:
                    raise DatastoreError(f"etcd refused {method}: {err.details()}") from None
                last = err
                await self._rotate()
        assert last is not None
        raise DatastoreUnavailable(
            f"cannot reach etcd at {', '.join(self._endpoints)}: {last.details()}"
        )

    async def range(self, key: bytes, *, prefix: bool = False) -> rpc.RangeResponse:
        request = rpc.RangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        return await self._unary(rpc.KVStub, "Range", request)  # type: ignore[return-value]

    async def txn(
        self,
        compare: list[rpc.Compare],
        success: list[rpc.RequestOp],
        failure: list[rpc.RequestOp],
    ) -> rpc.TxnResponse:
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._unary(rpc.KVStub, "Txn", request)  # type: ignore[return-value]

    async def compact(self, revision: int) -> None:
        try:
            await self._unary(
                rpc.KVStub, "Compact", rpc.CompactionRequest(revision=revision, physical=True)
            )
        except DatastoreError as err:
            # Compacting to a revision that is already compacted is the goal reached.
            if "compacted" not in str(err):
                raise

    async def watch(self, prefix: bytes, *, after: int) -> AsyncIterator[rpc.WatchResponse]:
        """Responses carrying events on keys under `prefix` with revisions greater than `after`."""
        call = rpc.WatchStub(self._open()).Watch()
        try:
            await call.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=prefix, range_end=prefix_end(prefix), start_revision=after + 1,
                        prev_kv=True,
                    )
                )
            )
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise DatastoreUnavailable(f"etcd at {self.endpoint} closed the watch")
                if response.compact_revision:
                    raise RevisionCompacted(str(after), str(response.compact_revision))
                if response.canceled:
                    raise DatastoreError(f"etcd cancelled the watch: {response.cancel_reason}")
                if response.events:
                    yield response
        except grpc.aio.AioRpcError as err:
            if err.code() in _UNREACHABLE:
                await self._rotate()
                raise DatastoreUnavailable(f"watch on etcd broke: {err.details()}") from None
            raise DatastoreError(f"etcd refused the watch: {err.details()}") from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await asyncio.shield(channel.close())
