"""Threshold key material: the collective public key every silo holds, each silo's
secret share, and what the server side holds of them (a name and the parameters).

- :class:`CollectivePublicKey` — the parameters, the CRS seed, pk0 = Σ p0_i, the
  participants (device id, Shamir point x, identity certificate) and the trusted identity
  authorities. Its ``key_id`` is SHA-256 of all of it: the **key commitment** every
  section signature names (:mod:`tsfl.he.signing`), so a section under any other key —
  even one made by the same silos — is refused.
- :class:`KeyShare` — one silo's S_j (its Shamir share of s = Σ s_i) and the per-job
  output-mask key the silos agreed on without the server (:mod:`ceremony`). Written mode
  0600; it decrypts nothing alone.
- :class:`JobKey` — the server side's view: ``key_id`` and the parameters. Nothing
  there decrypts or even encrypts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from tsfl.he.errors import HeError
from tsfl.he.keys import unpack_key_file, write_private
from tsfl.he.threshold.params import ThresholdParams
from tsfl.he.threshold.scheme import common_polynomial
from tsfl.identity import IdentityCertificate, IdentityError

PUBLIC_FORMAT = "tsfl-he-threshold-public/1"
SHARE_FORMAT = "tsfl-he-threshold-share/1"


def poly_bytes(poly: np.ndarray) -> bytes:
    """Residues (< 2^30) as little-endian uint32."""
    return np.ascontiguousarray(poly, dtype="<u4").tobytes()


def poly_from(data: bytes, params: ThresholdParams, shape: tuple[int, ...] = ()
              ) -> np.ndarray:
    want = (*shape, params.limbs, params.poly_degree)
    if not isinstance(data, bytes | bytearray) or len(data) != 4 * int(np.prod(want)):
        raise HeError("key", f"expected {int(np.prod(want))} residues")
    poly = np.frombuffer(data, dtype="<u4").astype(np.uint64).reshape(want)
    if (poly >= np.array(params.primes, dtype=np.uint64).reshape(-1, 1)).any():
        raise HeError("key", "a residue is not reduced")
    return poly


@dataclass(frozen=True)
class Participant:
    device_id: str
    x: int  # Shamir point (1-based rank of the device id)
    certificate: IdentityCertificate


@dataclass(frozen=True)
class JobKey:
    """What the server side holds: the key's commitment and the public parameters."""

    key_id: str
    params: ThresholdParams


@dataclass(frozen=True)
class CollectivePublicKey:
    label: str  # the ceremony's name (the job's)
    params: ThresholdParams
    crs_seed: bytes
    pk0: np.ndarray  # (k, N), NTT form
    participants: tuple[Participant, ...]
    authorities: tuple[bytes, ...]
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", hashlib.sha256(self._canonical()).hexdigest())

    def _canonical(self) -> bytes:
        return msgpack.packb([PUBLIC_FORMAT, self.label, self.params.to_json(),
                              self.crs_seed, poly_bytes(self.pk0),
                              [[p.device_id, p.x, p.certificate.to_wire()]
                               for p in self.participants],
                              sorted(self.authorities)])

    @property
    def a(self) -> np.ndarray:
        """The common reference polynomial (NTT form), from the public seed."""
        return common_polynomial(self.params, self.crs_seed)

    @property
    def job_key(self) -> JobKey:
        return JobKey(self.key_id, self.params)

    def participant(self, device_id: str) -> Participant:
        for p in self.participants:
            if p.device_id == device_id:
                return p
        raise HeError("key", f"{device_id!r} holds no share of key {self.key_id[:16]}")

    def to_wire(self) -> dict[str, Any]:
        return {"format": PUBLIC_FORMAT, "label": self.label,
                "params": self.params.to_json(), "crs": self.crs_seed,
                "pk0": poly_bytes(self.pk0),
                "participants": [[p.device_id, p.x, p.certificate.to_wire()]
                                 for p in self.participants],
                "authorities": list(self.authorities), "key_id": self.key_id}

    @classmethod
    def from_wire(cls, raw: Any) -> CollectivePublicKey:
        if not isinstance(raw, dict) or raw.get("format") != PUBLIC_FORMAT:
            raise HeError("key", f"not a {PUBLIC_FORMAT} key")
        params = ThresholdParams.from_json(raw.get("params"))
        try:
            participants = tuple(Participant(str(i), int(x), IdentityCertificate.from_wire(c))
                                 for i, x, c in raw["participants"])
            key = cls(str(raw["label"]), params, bytes(raw["crs"]),
                      poly_from(raw["pk0"], params), participants,
                      tuple(bytes(a) for a in raw["authorities"]))
        except (KeyError, TypeError, ValueError, IdentityError) as exc:
            raise HeError("key", f"malformed collective key: {exc}") from None
        if key.key_id != raw.get("key_id"):
            raise HeError("key", "the collective key does not match its key id")
        return key


@dataclass(frozen=True)
class KeyShare:
    """One silo's secret part of a threshold key."""

    public: CollectivePublicKey
    device_id: str
    x: int
    share: np.ndarray  # S_j (k, N), NTT form
    output_key: bytes  # 32 bytes: the silos' key for masking their partial decryptions

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def to_bytes(self) -> bytes:
        return msgpack.packb({"format": SHARE_FORMAT, "public": self.public.to_wire(),
                              "id": self.device_id, "x": self.x,
                              "share": poly_bytes(self.share), "out": self.output_key})

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyShare:
        raw = unpack_key_file(data, SHARE_FORMAT, "key share file")
        public = CollectivePublicKey.from_wire(raw.get("public"))
        me = public.participant(str(raw.get("id")))
        out = raw.get("out")
        share = raw.get("share")
        if (me.x != raw.get("x") or not isinstance(out, bytes) or len(out) != 32
                or not isinstance(share, bytes)):
            raise HeError("key", "the key share file is corrupted")
        return cls(public, me.device_id, me.x, poly_from(share, public.params), out)

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        return write_private(p, self.to_bytes())


def read_share(path: str | Path) -> KeyShare:
    try:
        return KeyShare.from_bytes(Path(path).read_bytes())
    except OSError as exc:
        raise HeError("key", f"cannot read the key share {path}: {exc}") from None
