"""The one error the HE library raises: bad parameters, keys or ciphertexts."""

from __future__ import annotations

from tsfl.errors import TsflError


class HeError(TsflError, ValueError):
    """``code`` is a short machine-readable reason (``params``, ``key``, ``ciphertext``…)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
