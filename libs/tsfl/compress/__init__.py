"""Update compression: sparsifiers, quantizers, lossless stages, error feedback.

Pure numpy; the wire layer declares chains and parameters, the SDK keeps the residuals.
"""

from tsfl.compress.chain import (
    KNOWN_CODECS,
    PLAIN,
    SKIP,
    CodecChain,
    CodecSettings,
    Encoded,
    decode_vector,
    encode_vector,
)
from tsfl.compress.errors import CodecError
from tsfl.compress.feedback import ErrorFeedback

__all__ = ["KNOWN_CODECS", "PLAIN", "SKIP", "CodecChain", "CodecError", "CodecSettings", "Encoded",
           "ErrorFeedback", "decode_vector", "encode_vector"]
