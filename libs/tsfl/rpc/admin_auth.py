"""Who may call the admin API, and on which jobs.

Adversary: any network peer that reaches the coordinator's port, devices included. Every
AdminService call carries an **admin token** (``authorization: Bearer tsfl-admin.ID.SECRET``)
issued by ``tsfl admin create-token --role ROLE``; the database keeps only a salted scrypt
hash of the secret (RFC 7914; n = 2^14, r = 8, p = 1), so a leaked database grants nothing.
Device credentials (enrolment and session tokens, device certificates) live elsewhere
and are never admin identities.

Roles:

| role | may |
|---|---|
| ``viewer`` | read every job (status, rounds, participants, audit) |
| ``submitter`` | submit jobs; read and cancel the jobs it submitted |
| ``operator`` | everything, on every job |

Every admin call is authorised per job, and actions are audited under the caller's name.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tsfl.errors import ErrorKind, TsflError

ROLES = ("viewer", "submitter", "operator")
TOKEN_PREFIX = "tsfl-admin"
_TOKEN = re.compile(r"^tsfl-admin\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_CACHE_S = 60.0  # a verified token is trusted this long without re-hashing


class AdminAuthError(TsflError):
    """``code`` is ``unauthenticated`` (no or bad credential) or ``denied`` (the caller's
    role does not allow the action)."""

    kind = ErrorKind.DENIED

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Principal:
    """An authenticated admin identity."""

    token_id: str
    name: str
    role: str

    @property
    def label(self) -> str:
        return f"admin:{self.name}"


def _hash(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **_SCRYPT).hex()


def new_token(name: str, role: str) -> tuple[str, dict[str, Any]]:
    """(the token to hand out once, the row to store: no secret in it)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not re.fullmatch(r"[A-Za-z0-9._@-]{1,128}", name):
        raise ValueError("token name: 1-128 characters of letters, digits and . _ @ -")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return (f"{TOKEN_PREFIX}.{token_id}.{secret}",
            {"id": token_id, "name": name, "role": role, "salt": salt,
             "hash": _hash(secret, salt)})


def bearer(metadata: Any) -> str | None:
    """The bearer credential in gRPC invocation metadata, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


class AdminAuth:
    """Verifies admin tokens against the store and decides per-job access."""

    def __init__(self, store: Any):
        self.store = store
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AdminAuthError("unauthenticated", "the admin API needs an admin token "
                                 "(authorization: Bearer tsfl-admin...; tsfl admin "
                                 "create-token)")
        digest = hashlib.sha256(token.encode()).hexdigest()
        hit = self._verified.get(digest)
        if hit is not None and time.monotonic() - hit[1] < _CACHE_S:
            return hit[0]
        m = _TOKEN.match(token)
        row = await self.store.admin_token(m.group(1)) if m else None
        if (m is None or row is None or row["revoked_at"] is not None
                or not hmac.compare_digest(await asyncio.to_thread(_hash, m.group(2),
                                                                   row["salt"]),
                                           row["hash"])):
            raise AdminAuthError("unauthenticated", "not a valid admin token")
        principal = Principal(row["id"], row["name"], row["role"])
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[digest] = (principal, time.monotonic())
        return principal

    @staticmethod
    def may_submit(p: Principal) -> None:
        if p.role not in ("submitter", "operator"):
            raise AdminAuthError("denied", f"{p.label} ({p.role}) may not submit jobs")

    @staticmethod
    def may_read(p: Principal, job: Mapping[str, Any]) -> None:
        if p.role == "submitter" and job.get("owner") != p.name:
            raise AdminAuthError("denied", f"{p.label} may read only the jobs it submitted")

    @staticmethod
    def may_cancel(p: Principal, job: Mapping[str, Any]) -> None:
        if p.role == "operator" or (p.role == "submitter" and job.get("owner") == p.name):
            return
        raise AdminAuthError("denied", f"{p.label} ({p.role}) may not cancel job "
                                       f"{job.get('id')!r}")
