"""How the coordinator stores the device-side secrets it checks.

- **Session tokens** are 256-bit random strings the coordinator issues at Register: a
  SHA-256 digest is enough to store them (nothing to brute-force).
- **Enrolment tokens** may be chosen by whoever submits a job (``tsfl job submit --token``),
  so they can be guessable: they are stored as a salted, memory-hard scrypt digest
  (``scrypt:`` + hex; salt = the job id, unique per job), so a leaked database does not
  hand out a fleet's enrolment secret. Rows written before this scheme hold a plain
  SHA-256 digest and still verify. Every comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac

_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 28}  # ~16 MiB, tens of ms
_PREFIX = "scrypt:"


def session_hash(token: str) -> str:
    """The stored form of a coordinator-issued session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_matches(token: str, stored: str | None) -> bool:
    return bool(stored) and hmac.compare_digest(str(stored), session_hash(token))


def enrollment_digest(job_id: str, token: str) -> str:
    """The stored form of a job's enrolment token (fits the 64-character column)."""
    salt = b"tsfl-enrolment\x00" + job_id.encode()
    return _PREFIX + hashlib.scrypt(token.encode(), salt=salt, **_SCRYPT).hex()


def enrollment_matches(job_id: str, token: str, stored: str | None) -> bool:
    """Whether ``token`` is the job's enrolment token (scrypt, or a legacy SHA-256 row)."""
    if not stored:
        return False
    if stored.startswith(_PREFIX):
        return hmac.compare_digest(stored, enrollment_digest(job_id, token))
    return hmac.compare_digest(stored, session_hash(token))
