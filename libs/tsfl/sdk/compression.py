"""A device's uplink compression: the server's codec settings, applied with feedback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tsfl.compress import SKIP, CodecChain, CodecError, CodecSettings, Encoded, ErrorFeedback
from tsfl.compress.chain import encode_vector


@dataclass(frozen=True)
class UplinkConfig:
    chain: CodecChain
    settings: CodecSettings
    error_feedback: bool = True
    skip_below: float = 0.0

    @classmethod
    def from_task(cls, raw: Any) -> UplinkConfig:
        """Parse the task's ``compression`` entry (it came over the network: checked)."""
        if not isinstance(raw, dict):
            raise CodecError("codec", "task compression settings must be a map")
        try:
            return cls(CodecChain.parse(raw.get("chain") or ["f32"]),
                       CodecSettings(ratio=float(raw.get("ratio", 0.01)),
                                     block=int(raw.get("block", 256)),
                                     levels=int(raw.get("levels", 16))),
                       bool(raw.get("error_feedback", True)),
                       float(raw.get("skip_below", 0.0)))
        except CodecError:
            raise
        except (TypeError, ValueError) as exc:
            raise CodecError("codec", f"bad task compression settings: {exc}") from None


class UplinkEncoder:
    """Encodes one device's updates; keeps its error-feedback residual between rounds."""

    def __init__(self) -> None:
        self.feedback = ErrorFeedback()

    def encode(self, delta: np.ndarray, model: np.ndarray, config: UplinkConfig,
               seed: int | None) -> Encoded | None:
        """The encoded update (None: send plain float32)."""
        rng = np.random.default_rng(None if seed is None else [int(seed), 0xC0DEC])
        if config.skip_below > 0 and self._negligible(delta, model, config.skip_below):
            if config.error_feedback:
                self.feedback.encode(delta, SKIP, config.settings, rng)  # keeps all of it
            return encode_vector(delta, SKIP, config.settings, rng)
        pending = self.feedback.residual is not None and config.error_feedback
        if config.chain.is_raw and not pending:
            return None
        if config.error_feedback and (config.chain.lossy or pending):
            return self.feedback.encode(delta, config.chain, config.settings, rng)
        return encode_vector(delta, config.chain, config.settings, rng)

    def _negligible(self, delta: np.ndarray, model: np.ndarray, threshold: float) -> bool:
        pending = delta if self.feedback.residual is None else delta + self.feedback.residual
        scale = float(np.linalg.norm(model)) or 1.0
        return float(np.linalg.norm(pending)) / scale < threshold
