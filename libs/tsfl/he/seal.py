"""The thin layer over SEAL (TenSEAL's ``sealapi`` bindings), used on the client side only.

Why sealapi and not TenSEAL's ``CKKSVector``: CKKSVector packs one real per slot and
serializes whole ciphertexts with SEAL's framing. Here each complex slot carries two
reals, and a ciphertext leaves SEAL as its two raw polynomials (NTT form, one RNS limb),
which the server adds as plain modular arithmetic (:mod:`tsfl.he.sealed`) — the server
needs no SEAL object, no key, and no trust in SEAL's deserializer.

A raw ciphertext goes back into SEAL by prefixing its polynomials with the serialized
header of a ciphertext of the same parameters; the prefix is derived, and checked, when
a context is built (two fresh encryptions must share it).

SEAL's bindings save and load only through file paths, so bytes pass through one
memory-backed scratch file per thread.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import numpy as np
import tenseal.sealapi as sealapi
import zstandard

from tsfl.he.errors import HeError
from tsfl.he.params import CkksParams

_SEC_LEVEL = {128: sealapi.SEC_LEVEL_TYPE.TC128, 192: sealapi.SEC_LEVEL_TYPE.TC192,
              256: sealapi.SEC_LEVEL_TYPE.TC256}
#: SEAL's serialization header: magic, header size, version, compression, size (LE)
SEAL_MAGIC = 0xA15E
SEAL_HEADER_BYTES = 16
_COMPR_NONE, _COMPR_ZSTD = 0, 2
_local = threading.local()


def _scratch_dir() -> str:
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="tsfl-he-", dir=base)


_SCRATCH = _scratch_dir()


@contextmanager
def _scratch() -> Iterator[str]:
    """A private file path for this thread (SEAL reads and writes paths only)."""
    path = getattr(_local, "path", None)
    if path is None:
        path = os.path.join(_SCRATCH, f"{os.getpid()}-{threading.get_ident()}")
        _local.path = path
    try:
        yield path
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)


def save_bytes(obj: object) -> bytes:
    """SEAL's serialization of ``obj`` (anything with ``save(path)``)."""
    with _scratch() as path:
        obj.save(path)  # type: ignore[attr-defined]
        with open(path, "rb") as f:
            return f.read()


def load_into(obj: object, context: sealapi.SEALContext, data: bytes) -> None:
    """``obj.load(context, ·)`` from bytes; SEAL checks them against the context."""
    with _scratch() as path:
        with open(path, "wb") as f:
            f.write(data)
        try:
            obj.load(context, path)  # type: ignore[attr-defined]
        except (RuntimeError, ValueError, OSError) as exc:
            raise HeError("key", f"SEAL refused the data: {exc}") from None


def _body(serialized: bytes) -> bytes:
    """The uncompressed body of a SEAL object serialization."""
    head = serialized[:SEAL_HEADER_BYTES]
    if int.from_bytes(head[0:2], "little") != SEAL_MAGIC:
        raise HeError("ciphertext", "not a SEAL serialization")
    if head[5] == _COMPR_ZSTD:
        return zstandard.ZstdDecompressor().decompressobj().decompress(
            serialized[SEAL_HEADER_BYTES:])
    if head[5] == _COMPR_NONE:
        return serialized[SEAL_HEADER_BYTES:]
    raise HeError("ciphertext", f"unsupported SEAL compression mode {head[5]}")


def _raw_header(template: bytes, body_len: int) -> bytes:
    head = bytearray(template[:SEAL_HEADER_BYTES])
    head[5] = _COMPR_NONE
    head[8:16] = (SEAL_HEADER_BYTES + body_len).to_bytes(8, "little")
    return bytes(head)


def prime_of(params: CkksParams) -> int:
    """The job's data prime: the largest ``prime_bits``-bit prime ≡ 1 (mod 2N), as SEAL
    picks it; the server needs it for modular additions, nothing else."""
    try:
        moduli = sealapi.CoeffModulus.Create(params.poly_degree, [params.prime_bits])
    except (RuntimeError, ValueError) as exc:
        raise HeError("params", f"no {params.prime_bits}-bit NTT prime for "
                                f"N = {params.poly_degree}: {exc}") from None
    return int(moduli[0].value())


class SecretSealContext:
    """SEAL with the secret key: encrypts (symmetric CKKS) and decrypts, to and from raw
    polynomial arrays of shape (2, N) uint64."""

    def __init__(self, params: CkksParams, secret_key: bytes | None = None):
        self.params = params
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_degree)
        parms.set_coeff_modulus(sealapi.CoeffModulus.Create(
            params.poly_degree, [params.prime_bits]))
        self.context = sealapi.SEALContext(parms, True, _SEC_LEVEL[params.security])
        if not self.context.parameters_set():
            raise HeError("params", "SEAL refused the parameters: "
                                    f"{self.context.parameters_error_message()}")
        self.prime = prime_of(params)
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.scale = float(2.0 ** params.scale_bits)
        if secret_key is None:
            self.secret_key = sealapi.KeyGenerator(self.context).secret_key()
        else:
            self.secret_key = sealapi.SecretKey()
            load_into(self.secret_key, self.context, secret_key)
        self.encryptor = sealapi.Encryptor(self.context, self.secret_key)
        self.decryptor = sealapi.Decryptor(self.context, self.secret_key)
        self._tail = 2 * params.poly_degree * 8
        self._prefix, self._header = self._derive_prefix()

    def _derive_prefix(self) -> tuple[bytes, bytes]:
        bodies, headers = [], []
        for _ in range(2):
            blob = save_bytes(self._encrypt(np.zeros(self.params.slots, np.complex128)))
            bodies.append(_body(blob))
            headers.append(blob[:SEAL_HEADER_BYTES])
        a, b = bodies
        cut = len(a) - self._tail
        if len(a) != len(b) or cut <= 0 or a[:cut] != b[:cut] or a[cut:] == b[cut:]:
            raise HeError("params", "this SEAL build serializes ciphertexts differently "
                                    "than expected (no shared header before the data)")
        return a[:cut], _raw_header(headers[0], len(a))

    def secret_key_bytes(self) -> bytes:
        return save_bytes(self.secret_key)

    def _encrypt(self, values: np.ndarray) -> sealapi.Ciphertext:
        pt = sealapi.Plaintext()
        self.encoder.encode(values.tolist(), self.scale, pt)
        ct = sealapi.Ciphertext(self.context)
        self.encryptor.encrypt_symmetric(pt, ct)
        return ct

    def encrypt(self, values: np.ndarray) -> np.ndarray:
        """Complex ``values`` (``slots`` of them) → the ciphertext's (2, N) polynomials."""
        body = _body(save_bytes(self._encrypt(values)))
        polys = np.frombuffer(body, dtype="<u8", offset=len(self._prefix))
        return polys.reshape(2, self.params.poly_degree)

    def decrypt(self, polys: np.ndarray) -> np.ndarray:
        """The (2, N) polynomials of a ciphertext (a fresh one or a sum) → complex slots."""
        data = np.ascontiguousarray(polys, dtype="<u8")
        if data.shape != (2, self.params.poly_degree) or not (data < self.prime).all():
            raise HeError("ciphertext", "not a ciphertext of this job's parameters")
        ct = sealapi.Ciphertext(self.context)
        load_into(ct, self.context, self._header + self._prefix + data.tobytes())
        pt = sealapi.Plaintext()
        self.decryptor.decrypt(ct, pt)
        return np.asarray(self.encoder.decode_complex(pt), dtype=np.complex128)
