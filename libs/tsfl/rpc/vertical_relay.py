"""The relay of a vertical job over gRPC: parties post messages for each other and fetch
theirs; the relay (the coordinator's role) sees who talks to whom, kinds and lengths —
the PSI points it carries are blinded, the PSI result is encrypted between the parties,
activations and gradients name batch positions, never ids (docs/privacy.md).

Service ``tsfl.vertical.Relay``, two unary methods on msgpack envelopes (no generated
stubs): ``Send {job, party, token, dst, kind, payload}`` and ``Receive {job, party, token,
src, kind, timeout}`` → payload (long-polls up to ``timeout`` ≤ 60 s). A job is registered
with its parties and a token; every field is checked and bounded (names, kinds, payload
≤ 64 MiB, at most 1024 messages waiting per mailbox) before anything is queued.
"""

from __future__ import annotations

import hmac
import re
import threading
from collections import defaultdict, deque
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import msgpack

SERVICE = "tsfl.vertical.Relay"
MAX_PAYLOAD = 64 << 20
MAX_QUEUE = 1024
MAX_WAIT_S = 60.0
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KIND = re.compile(r"^[a-z.]{1,32}$")
OPTIONS = [("grpc.max_receive_message_length", MAX_PAYLOAD + (1 << 16)),
           ("grpc.max_send_message_length", MAX_PAYLOAD + (1 << 16))]


@dataclass(frozen=True)
class JobRoute:
    parties: frozenset[str]
    token: str


class Relay:
    """Mailboxes keyed by (job, destination, source, kind)."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobRoute] = {}
        self._boxes: dict[tuple[str, str, str, str], deque[bytes]] = defaultdict(deque)
        self._cond = threading.Condition()
        self.bytes_relayed = 0

    def register(self, job: str, parties: list[str], token: str) -> None:
        if not _NAME.match(job) or not all(_NAME.match(p) for p in parties):
            raise ValueError("bad job or party name")
        self._jobs[job] = JobRoute(frozenset(parties), token)

    def _check(self, req: dict[str, Any], peer_key: str) -> tuple[str, str, str, str]:
        job, me, peer, kind = (req.get("job"), req.get("party"), req.get(peer_key),
                               req.get("kind"))
        route = self._jobs.get(job) if isinstance(job, str) else None
        token = req.get("token")
        if route is None or not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), route.token.encode()):
            raise PermissionError("unknown job or bad token")
        if me not in route.parties or peer not in route.parties or me == peer:
            raise PermissionError("not a party of this job")
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise ValueError("bad message kind")
        return job, me, peer, kind  # type: ignore[return-value]

    def send(self, req: dict[str, Any]) -> None:
        job, me, dst, kind = self._check(req, "dst")
        payload = req.get("payload")
        if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
            raise ValueError("payload must be bytes of at most 64 MiB")
        with self._cond:
            box = self._boxes[(job, dst, me, kind)]
            if len(box) >= MAX_QUEUE:
                raise OverflowError("mailbox full")
            box.append(payload)
            self.bytes_relayed += len(payload)
            self._cond.notify_all()

    def receive(self, req: dict[str, Any]) -> bytes:
        job, me, src, kind = self._check(req, "src")
        wait = req.get("timeout", 10.0)
        if not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT_S:
            raise ValueError(f"timeout must be 0..{MAX_WAIT_S} s")
        key = (job, me, src, kind)
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._boxes.get(key)), timeout=wait):
                raise TimeoutError("nothing yet")
            return self._boxes[key].popleft()


def _unary(fn: Any) -> Any:
    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            req = msgpack.unpackb(request, raw=False, max_bin_len=MAX_PAYLOAD,
                                  max_str_len=1024, max_map_len=16, max_array_len=16)
            if not isinstance(req, dict):
                raise ValueError("request must be a map")
            out = fn(req)
        except PermissionError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except TimeoutError as exc:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except OverflowError as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except (ValueError, TypeError, msgpack.exceptions.ExtraData,
                msgpack.exceptions.FormatError, msgpack.exceptions.StackError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return out if isinstance(out, bytes) else b""

    return grpc.unary_unary_rpc_method_handler(call)


def serve(relay: Relay, address: str = "127.0.0.1:0", workers: int = 16) -> tuple[Any, int]:
    """Start a gRPC server for ``relay``; returns (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        SERVICE, {"Send": _unary(relay.send), "Receive": _unary(relay.receive)})])
    port = server.add_insecure_port(address)
    server.start()
    return server, port


class RelayClient:
    """A party's mailbox on the relay (:class:`tsfl.sdk.vertical.Mailbox`)."""

    def __init__(self, address: str, job: str, party: str, token: str):
        self._channel = grpc.insecure_channel(address, options=OPTIONS)
        self._send = self._channel.unary_unary(f"/{SERVICE}/Send")
        self._recv = self._channel.unary_unary(f"/{SERVICE}/Receive")
        self._base = {"job": job, "party": party, "token": token}

    def send(self, dst: str, kind: str, payload: bytes) -> None:
        self._send(msgpack.packb({**self._base, "dst": dst, "kind": kind,
                                  "payload": payload}), timeout=30)

    def recv(self, src: str, kind: str, timeout: float = 120.0) -> bytes:
        left = timeout
        while True:
            wait = min(left, 20.0)
            try:
                return self._recv(msgpack.packb({**self._base, "src": src, "kind": kind,
                                                 "timeout": wait}), timeout=wait + 10)
            except grpc.RpcError as exc:
                left -= wait
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or left <= 0:
                    raise

    def close(self) -> None:
        self._channel.close()
