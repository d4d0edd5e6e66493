"""HE key sets: what the key authority (``tsfl keys init``) creates for one job.

- The **public part** is the CKKS parameters plus a ``key_id``; it is all any
  server-side process (coordinator, he service, release stage) ever holds. Clients
  encrypt with the secret key (symmetric CKKS), so there is no public key either: the
  server side has nothing that decrypts, and nothing that encrypts.
- The **secret part** (the parameters plus SEAL's secret key) goes only to the
  participating clients — the silos of a cross-silo job — or to a separate decryptor
  that decrypts each new global model for them. It is written with mode 0600.

A key set belongs to one job: ``key_id`` is in the job spec, on every encrypted update
and model, and a ciphertext under another key is refused. Rotation is a new key set for
the next job.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from tsfl.he.errors import HeError
from tsfl.he.params import CkksParams
from tsfl.he.seal import SecretSealContext, prime_of

SECRET_FORMAT = "tsfl-he-secret/1"
PUBLIC_FILE = "public.json"
SECRET_FILE = "secret.key"


def key_id_of(secret_key: bytes) -> str:
    """A public name for a secret key (one-way: a hash of 2^N-entropy material)."""
    return hashlib.sha256(b"tsfl-he-key-id\x00" + secret_key).hexdigest()[:24]



def unpack_key_file(data: bytes, fmt: str, what: str) -> dict[str, Any]:
    """A msgpack key file's map, checked to be of format ``fmt`` (``what`` names it in
    errors): the envelope of secret key sets and threshold key shares alike."""
    try:
        raw = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise HeError("key", f"not a TrustStram HE {what}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise HeError("key", f"not a {fmt} {what}")
    return raw


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path

@dataclass(frozen=True)
class PublicKeySet:
    """What the server side gets: parameters and the key's name, nothing secret."""

    key_id: str
    params: CkksParams
    prime: int  # the data prime q: all the server needs to add ciphertexts

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "params": self.params.to_json(), "prime": self.prime}

    @classmethod
    def from_json(cls, raw: Any) -> PublicKeySet:
        if not isinstance(raw, dict) or not isinstance(raw.get("key_id"), str):
            raise HeError("key", "a public key set needs key_id, params and prime")
        params = CkksParams.from_json(raw.get("params"))
        prime = raw.get("prime")
        if prime != prime_of(params):
            raise HeError("key", f"prime {prime!r} is not the parameters' data prime")
        return cls(raw["key_id"], params, prime)


class SecretKeySet:
    """The client side: encrypts updates and decrypts models of one job."""

    def __init__(self, params: CkksParams, secret_key: bytes | None = None):
        self.context = SecretSealContext(params, secret_key)
        self.secret_key = self.context.secret_key_bytes()
        self.key_id = key_id_of(self.secret_key)
        self.params = params

    @property
    def public(self) -> PublicKeySet:
        return PublicKeySet(self.key_id, self.params, self.context.prime)

    def to_bytes(self) -> bytes:
        return msgpack.packb({"format": SECRET_FORMAT, "key_id": self.key_id,
                              "params": self.params.to_json(), "secret_key": self.secret_key})

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretKeySet:
        raw = unpack_key_file(data, SECRET_FORMAT, "secret key file")
        keys = cls(CkksParams.from_json(raw.get("params")), raw.get("secret_key"))
        if keys.key_id != raw.get("key_id"):
            raise HeError("key", "the secret key file is corrupted (key id mismatch)")
        return keys

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """``public.json`` (0644) and ``secret.key`` (0600) in ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        public = d / PUBLIC_FILE
        public.write_text(json.dumps(self.public.to_json(), indent=2) + "\n")
        return public, write_private(d / SECRET_FILE, self.to_bytes())


def read_public(path: str | Path) -> PublicKeySet:
    p = Path(path)
    if p.is_dir():
        p = p / PUBLIC_FILE
    try:
        return PublicKeySet.from_json(json.loads(p.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise HeError("key", f"cannot read the public key set {p}: {exc}") from None


def read_secret(path: str | Path) -> SecretKeySet:
    p = Path(path)
    if p.is_dir():
        p = p / SECRET_FILE
    try:
        return SecretKeySet.from_bytes(p.read_bytes())
    except OSError as exc:
        raise HeError("key", f"cannot read the secret key {p}: {exc}") from None
