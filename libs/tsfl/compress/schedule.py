"""Adaptive codec strength: each device's link estimate decides how hard it compresses.

A link is ``seconds = latency + bytes / bandwidth``; the estimate is a least-squares fit
of that line over the device's recent transfers (exponentially weighted, so it follows a
device that moves from Wi-Fi to cellular). The ladder runs from plain float32 to ever
sparser top-k + 8-bit; a device gets the first rung whose upload fits its time budget,
and never one sparser than the job's accuracy budget (``min_ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tsfl.compress.chain import CodecChain
from tsfl.compress.quantize import UNIFORM_BITS, num_blocks
from tsfl.compress.sparsify import keep_count

#: (sparsifier, values, ratio) from the gentlest to the strongest
LADDER: tuple[tuple[str | None, str, float], ...] = (
    (None, "f32", 1.0), (None, "q8", 1.0), ("topk", "q8", 0.1), ("topk", "q8", 0.03),
    ("topk", "q8", 0.01), ("topk", "q8", 0.003), ("topk", "q8", 0.001))
DEFAULT_LATENCY_S = 0.05


@dataclass(frozen=True)
class Rung:
    chain: CodecChain
    ratio: float

    def expected_bytes(self, n: int, block: int = 256) -> int:
        """Payload size before any lossless stage (an upper bound of what is sent)."""
        m = keep_count(n, self.ratio) if self.chain.sparsifier else n
        index = min(2 * m, (n + 7) // 8) if self.chain.sparsifier == "topk" else 0
        if self.chain.values == "f32":
            return index + 4 * m
        bits = UNIFORM_BITS.get(self.chain.values, 8)
        return index + num_blocks(m, block) * (block * bits // 8 + 8)


def ladder(min_ratio: float, lossless: str | None = None) -> list[Rung]:
    return [Rung(CodecChain(s, v, lossless), r) for s, v, r in LADDER if r >= min_ratio]


class LinkEstimate:
    """Latency and bandwidth of one device's link from its timed transfers."""

    def __init__(self, decay: float = 0.8):
        self.decay = decay
        self.w = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.transfers = 0

    def observe(self, nbytes: int, seconds: float) -> None:
        if nbytes <= 0 or not seconds > 0:
            return
        d = self.decay
        x, y = float(nbytes), float(seconds)
        self.w = d * self.w + 1
        self.sx, self.sy = d * self.sx + x, d * self.sy + y
        self.sxx, self.sxy = d * self.sxx + x * x, d * self.sxy + x * y
        self.transfers += 1

    def fit(self) -> tuple[float, float]:
        """(latency s, bandwidth bytes/s)."""
        mx, my = self.sx / self.w, self.sy / self.w
        var = self.sxx / self.w - mx * mx
        if var > 1e-9 * mx * mx:
            slope = (self.sxy / self.w - mx * my) / var
            latency = my - slope * mx
            if slope > 0 and latency >= 0:
                return latency, 1.0 / slope
        latency = min(DEFAULT_LATENCY_S, 0.5 * my)
        return latency, mx / max(my - latency, 1e-9)

    def seconds_for(self, nbytes: int) -> float:
        latency, bandwidth = self.fit()
        return latency + nbytes / bandwidth


def choose_rung(estimate: LinkEstimate | None, n: int, budget_s: float,
                rungs: list[Rung], block: int = 256) -> Rung | None:
    """The gentlest rung whose upload fits ``budget_s`` (the strongest if none fits);
    None for a device never seen transferring (the job's configured chain applies)."""
    if estimate is None or estimate.transfers == 0 or not rungs:
        return None
    for rung in rungs:
        if estimate.seconds_for(rung.expected_bytes(n, block)) <= budget_s:
            return rung
    return rungs[-1]
