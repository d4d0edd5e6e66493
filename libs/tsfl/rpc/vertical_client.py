"""A party's mailbox on the coordinator's relay (:mod:`tsfl.rpc.vertical_service`): a
:class:`tsfl.sdk.vertical.Mailbox` with reports.

    box = PartyClient("coordinator:50051", job_id, "lab-a", enrolment_token)
    out = run_party(box.spec, "lab-a", my_table, box, salt=..., num_classes=box.num_classes)

The client enrols (``Register``) at construction and checks the admitted spec against
the one the party agreed to, when given (:func:`same_terms`): a coordinator cannot
quietly change the protections (``cut_dp``, ``label_dp``), the model or the parties.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import msgpack

from tsfl.config import JobSpec
from tsfl.errors import ErrorKind, TsflError
from tsfl.rpc.common import DEVICE_HEADER
from tsfl.rpc.party_relay import MAX_PAYLOAD, MAX_WAIT_S

SERVICE = "tsfl.vertical.PartyRelay"
OPTIONS = [("grpc.max_receive_message_length", MAX_PAYLOAD + (1 << 16)),
           ("grpc.max_send_message_length", MAX_PAYLOAD + (1 << 16))]
#: how long a sender waits for room in a full mailbox before giving up
SEND_PATIENCE_S = 120.0


class TermsMismatch(TsflError):
    """The coordinator's job is not the one this party agreed to."""

    kind = ErrorKind.PRECONDITION


def terms(spec: JobSpec) -> dict[str, Any]:
    """What a party agrees to: the name, seed, epochs, training and the vertical section
    (the protections, the model, the parties and their columns)."""
    return {"name": spec.name, "seed": spec.seed, "rounds": spec.rounds,
            "training": spec.training.model_dump(mode="json"),
            "vertical": spec.vertical.model_dump(mode="json") if spec.vertical else None}


def same_terms(mine: JobSpec, theirs: JobSpec) -> None:
    """Raise :class:`TermsMismatch` naming the sections that differ."""
    a, b = terms(mine), terms(theirs)
    differ = sorted(k for k in a if a[k] != b[k])
    if differ:
        raise TermsMismatch(f"the coordinator's job differs from this party's spec in: "
                            f"{', '.join(differ)}")


class PartyClient:
    """One party's enrolment and mailbox on the coordinator (thread-safe calls)."""

    def __init__(self, address: str, job: str, party: str, enrollment_token: str, *,
                 spec: JobSpec | None = None,
                 credentials: grpc.ChannelCredentials | None = None):
        self._channel = (grpc.secure_channel(address, credentials, options=OPTIONS)
                         if credentials else grpc.insecure_channel(address, options=OPTIONS))
        call = {m: self._channel.unary_unary(f"/{SERVICE}/{m}")
                for m in ("Register", "Send", "Receive", "Report")}
        self._send, self._recv, self._report = call["Send"], call["Receive"], call["Report"]
        self.job, self.party = job, party
        reply = msgpack.unpackb(call["Register"](msgpack.packb(
            {"job": job, "party": party, "enrollment_token": enrollment_token}), timeout=60),
            raw=False, max_str_len=1 << 20)
        self.spec = JobSpec.model_validate_json(reply["spec"])
        if spec is not None:
            same_terms(spec, self.spec)
        self.num_classes = int(reply["num_classes"])
        self._md = ((DEVICE_HEADER, party),
                    ("authorization", f"Bearer {reply['session_token']}"))

    def send(self, dst: str, kind: str, payload: bytes) -> None:
        """Post ``payload`` for ``dst``; waits for room while the relay is full."""
        req = msgpack.packb({"job": self.job, "dst": dst, "kind": kind, "payload": payload})
        give_up, pause = time.monotonic() + SEND_PATIENCE_S, 0.05
        while True:
            try:
                self._send(req, timeout=60, metadata=self._md)
                return
            except grpc.RpcError as exc:
                if (exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
                        or time.monotonic() > give_up):
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 1.0)

    def recv(self, src: str, kind: str, timeout: float = 120.0) -> bytes:
        """The next message from ``src`` of ``kind``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.0, min(deadline - time.monotonic(), 20.0, MAX_WAIT_S))
            try:
                out: bytes = self._recv(msgpack.packb(
                    {"job": self.job, "src": src, "kind": kind, "timeout": wait}),
                    timeout=wait + 15, metadata=self._md)
                return out
            except grpc.RpcError as exc:
                if (exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                        or time.monotonic() >= deadline):
                    raise

    def report(self, kind: str, body: dict[str, Any]) -> None:
        """Tell the coordinator ``psi`` sizes, an ``epoch``'s metrics or the ``end``."""
        self._report(msgpack.packb({"job": self.job, "kind": kind, "body": body}),
                     timeout=60, metadata=self._md)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PartyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
