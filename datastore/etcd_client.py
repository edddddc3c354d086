"""A small asyncio etcd v3 client: range, transactions, watch and compaction over gRPC.

It uses the etcd v3 protobuf bindings that the `aetcd` package ships (generated for protobuf 4 and
later, unlike those of the older `etcd3` package) and opens the gRPC channel itself, because
aetcd 1.0's own client has no TLS. See docs/datastore.md for the choice.

Every gRPC failure that means "could not talk to etcd" becomes DatastoreUnavailable; with several
endpoints, the next one is tried before giving up.

Coming back after an outage. gRPC reconnects a channel by itself, but with a back-off that grows
to 120 s, and new channels to the same address share the old one's connection and its back-off
(the global subchannel pool): after a 30 s etcd outage, calls kept failing for 14 s once etcd
was back. So every channel has a subchannel of its own and a reconnect back-off bounded at
0.5 s. A call on a channel that worked before waits up to 2 s for it to reconnect: the first
request after etcd's return succeeds, and one during an outage fails after those 2 s (a CNI ADD
then answers "try again later"). Keepalive pings find a connection whose
far end vanished without closing it (a watch on it would otherwise wait forever).

A channel replaced after a failure is closed only when the client closes: closing it at once
cancelled other calls in flight on it, which gRPC reports as asyncio.CancelledError in tasks
that were never cancelled.
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

# Codes that say the request did not reach a working etcd, or etcd asks to be asked again later;
# anything else is an answer.
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

ENDPOINT_SCHEMES = ("http", "https", "unix")

RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 500
# How long a call waits for a channel that is reconnecting: a few of its attempts.
RECONNECT_WAIT_SECONDS = 2.0

_CHANNEL_OPTIONS = [
    # gRPC refuses responses over 4 MiB by default; listing every IPAM block of a large cluster
    # is one range response and can be bigger than that.
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    # Not grpc.min_reconnect_backoff_ms: gRPC also takes it as the deadline of a connection
    # attempt, and 100 ms cut TLS handshakes short.
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    # etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


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


def channel_target(endpoint: str) -> tuple[str, bool]:
    """The gRPC target an etcd endpoint names, and whether its scheme asks for TLS; ValueError
    saying what is wrong when it names none.

    Endpoints are written as etcdctl and calicoctl take them: http://host[:port],
    https://host[:port], or unix:///path/to/socket for an etcd listening on a unix socket; a bare
    host[:port] means http. Checked before any channel exists, because gRPC takes what it is given:
    an empty target logs C-core errors on stderr, a port over 65535 silently becomes another port
    (121563 is 56027), and any other scheme would be taken for http.
    """
    try:
        url = urlsplit(endpoint if "//" in endpoint else f"http://{endpoint}")
    except ValueError as err:  # "Invalid IPv6 URL": a '[' without its ']', or the reverse
        raise ValueError(f"not a valid URL ({err})") from None
    if url.scheme not in ENDPOINT_SCHEMES:
        raise ValueError("the scheme must be http, https or unix")
    if url.scheme == "unix":
        # gRPC's unix: target is the path alone; a host would be dropped without a word.
        if url.netloc or not url.path:
            raise ValueError("a unix endpoint is unix:///path/to/socket"
                             " (an absolute path, no host)")
        return f"unix:{url.path}", False
    if url.netloc.count(":") > 1 and "[" not in url.netloc:
        raise ValueError("an IPv6 address goes in brackets, as in http://[::1]:2379")
    if not url.hostname:
        raise ValueError("the host is missing")
    try:
        port = url.port
    except ValueError:  # not a number, or over 65535
        port = 0
    if port == 0 or url.netloc.endswith(":"):
        raise ValueError("the port must be 1-65535")
    return url.netloc, url.scheme == "https"


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
        for endpoint in endpoints:
            try:
                channel_target(endpoint)
            except ValueError as err:
                raise ValueError(f"etcd endpoint {endpoint!r}: {err}") from None
        self._endpoints = list(endpoints)
        self._tls = tls
        self._timeout = timeout
        self._current = 0
        self._channel: grpc.aio.Channel | None = None
        self._retired: list[grpc.aio.Channel] = []
        self._connected_once = False
        # Stubs are cheap but not free to build; one per type and channel.
        self._stubs: dict[type, tuple[grpc.aio.Channel, object]] = {}
        # Requests made, by method ("Range", "Txn", "Watch", ...): percale-node's metrics.
        self.requests: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return self._endpoints[self._current]

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            target, https = channel_target(self.endpoint)
            secure = https or (self._tls is not None and self._tls.ca_file)
            if secure:
                self._channel = grpc.aio.secure_channel(
                    target, (self._tls or TLSFiles()).credentials(), options=_CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return self._channel

    def _rotate(self, failed: grpc.aio.Channel | None) -> None:
        """Move on to the next endpoint (with one endpoint: a fresh channel to it), unless
        another call already did since `failed` was used."""
        if failed is None or failed is not self._channel:
            return
        self._retired.append(failed)
        self._channel = None
        self._current = (self._current + 1) % len(self._endpoints)

    def _stub(self, stub_type: type) -> object:
        channel = self._open()
        stub = self._stubs.get(stub_type)
        if stub is None or stub[0] is not channel:
            stub = self._stubs[stub_type] = (channel, stub_type(channel))
        return stub[1]

    async def _unary(self, stub_type: type, method: str, request: object) -> object:
        last = ""
        for _ in self._endpoints:
            stub = self._stub(stub_type)
            channel = self._channel
            assert channel is not None
            # A channel that worked before and is down now is reconnecting: wait for it (up to
            # the deadline) rather than fail at once, so the first request after etcd's return
            # succeeds instead of meeting the back-off. Never-connected channels fail at once:
            # `percalectl` against a wrong address says so without a wait.
            reconnecting = self._connected_once and (
                channel.get_state(try_to_connect=True) != grpc.ChannelConnectivity.READY)
            self.requests[method] = self.requests.get(method, 0) + 1
            try:
                timeout = min(self._timeout, RECONNECT_WAIT_SECONDS) if reconnecting else self._timeout
                answer = await getattr(stub, method)(request, timeout=timeout,
                                                     wait_for_ready=reconnecting)
                self._connected_once = True
                return answer
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.OUT_OF_RANGE and getattr(request, "revision", 0):
                    # A read at a revision etcd compacted away: the contract's error, as the
                    # watch's, so a reader lists again (etcd does not say which it still has).
                    raise RevisionCompacted(str(request.revision), "unknown") from None
                if err.code() not in _UNREACHABLE:
                    raise DatastoreError(f"etcd refused {method}: {err.details()}") from None
                last = err.details() or err.code().name
            except asyncio.CancelledError:
                if _really_cancelled():
                    raise
                last = "the call was cancelled by gRPC"  # its channel went away under it
            if len(self._endpoints) > 1:
                self._rotate(channel)
        raise DatastoreUnavailable(f"cannot reach etcd at {', '.join(self._endpoints)}: {last}")

    async def read(self, request: rpc.RangeRequest) -> rpc.RangeResponse:
        """A Range as the caller built it (keys only, at a revision, ...)."""
        return await self._unary(rpc.KVStub, "Range", request)  # type: ignore[return-value]

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

    async def watch(self, prefix: bytes, *, after: int,
                    previous: bool = True) -> AsyncIterator[rpc.WatchResponse]:
        """Responses carrying events on keys under `prefix` with revisions greater than `after`;
        with `previous`, each event carries the key's value before it too (prev_kv). That costs
        etcd a read per event and per watcher: with 8 watchers of 7 kB blocks, a third of its
        CPU per write."""
        channel = self._open()
        # Only while the member has a leader (clientv3's WithRequireLeader): a member cut off
        # from the others keeps a watch open and delivers nothing, and the view went stale for
        # good; refused, the watch is resumed on another endpoint.
        call = rpc.WatchStub(channel).Watch(metadata=(("hasleader", "true"),))
        self.requests["Watch"] = self.requests.get("Watch", 0) + 1
        try:
            await call.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=prefix, range_end=prefix_end(prefix), start_revision=after + 1,
                        prev_kv=previous,
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
                if len(self._endpoints) > 1:
                    self._rotate(channel)
                raise DatastoreUnavailable(f"watch on etcd broke: {err.details()}") from None
            raise DatastoreError(f"etcd refused the watch: {err.details()}") from None
        except asyncio.CancelledError:
            if _really_cancelled():
                raise
            raise DatastoreUnavailable("watch on etcd was cancelled by gRPC") from None
        finally:
            call.cancel()

    async def close(self) -> None:
        channels, self._retired = self._retired, []
        if self._channel is not None:
            channels.append(self._channel)
            self._channel = None
        for channel in channels:
            await asyncio.shield(channel.close())


def _really_cancelled() -> bool:
    """Whether the running task is being cancelled (by its owner), as opposed to gRPC raising
    CancelledError for a call it cancelled itself."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
