"""Error feedback: what compression dropped is added to the next update.

e₀ = 0;  cₜ = C(Δₜ + eₜ);  eₜ₊₁ = Δₜ + eₜ − D(cₜ)   (Stich et al. 2018, "Sparsified SGD
with Memory", Alg. 1; Karimireddy et al. 2019, EF-SGD). Nothing a client computes is
lost, only delayed, which is why top-k with feedback converges where plain top-k drifts.
"""

from __future__ import annotations

import numpy as np

from tsfl.compress.chain import CodecChain, CodecSettings, Encoded, encode_vector


class ErrorFeedback:
    """One client's residual (per job)."""

    def __init__(self) -> None:
        self.residual: np.ndarray | None = None

    def encode(self, delta: np.ndarray, chain: CodecChain, settings: CodecSettings,
               rng: np.random.Generator) -> Encoded:
        corrected = np.asarray(delta, np.float32)
        if self.residual is not None and self.residual.shape == corrected.shape:
            corrected = corrected + self.residual
        else:
            corrected = corrected.copy()
        encoded = encode_vector(corrected, chain, settings, rng)
        if encoded.indices is None:
            corrected -= encoded.decoded
        else:
            corrected[encoded.indices] -= encoded.decoded
        self.residual = corrected
        return encoded
