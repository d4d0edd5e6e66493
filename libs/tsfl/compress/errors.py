"""The one error type of the codecs."""

from __future__ import annotations

from tsfl.errors import TsflError


class CodecError(TsflError, ValueError):
    """An encoded payload (or codec setting) that cannot be accepted.

    ``code`` is stable and machine-readable; the wire layer reports it as is.
    """

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)
