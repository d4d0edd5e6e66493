"""The device owner's privacy: where DP randomness comes from, the floor every task must
meet, and the device's own ledger.

Adversary: the server operator (and whoever reads what devices upload). Under local DP
and record-level DP-SGD the server is not trusted, so nothing that decides a device's
privacy may come from it:

- **Randomness is the device's.** Noise and DP-SGD's Poisson batches are drawn from the
  operating system's CSPRNG (:class:`~tsfl.privacy.noise.SecureNoise`); a task's ``seed``
  or ``noise`` mode is ignored for DP. A seeded source exists for reproducible
  simulation only, is set by whoever builds the simulated device (never by a task), and
  reports itself as not private.
- **The floor is the owner's.** :class:`PrivacyFloor` — a minimum noise multiplier, a
  maximum clip norm and a maximum ε per job — is checked against every task; a task
  below it is refused (:class:`TaskRefused`), and the refusal is reported to the
  coordinator, which records it in the audit trail.
- **The ledger is the device's.** Each upload of a local-DP job is charged on the
  device before anything leaves it (no amplification: the server knows who uploaded);
  a task whose charge would pass the owner's cap or the job's own target is refused.
  The sensitivity is the device's too: the diameter 2C of the clipping ball, whatever
  the task says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import xxhash

from tsfl.privacy.accounting import PrivacyAccountant, RoundEvent
from tsfl.privacy.noise import NoiseSource, SecureNoise, SeededNoise

#: local DP: any two of a device's clipped updates differ by at most the ball's diameter
LOCAL_SENSITIVITY_FACTOR = 2.0
_NORMS = {"gaussian": "l2", "laplace": "l1", "staircase": "linf"}


class TaskRefused(Exception):
    """The device will not run a task: its privacy settings are below the owner's floor,
    malformed, or would spend past the device's budget."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PrivacyFloor:
    """What the device owner accepts, whatever the server asks (None: no bound)."""

    min_noise_multiplier: float | None = None
    max_clip_norm: float | None = None
    max_epsilon: float | None = None  # per job, for the device's local-DP or DP-SGD ε

    def __post_init__(self) -> None:
        for name in ("min_noise_multiplier", "max_clip_norm", "max_epsilon"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"PrivacyFloor.{name} must be a finite number > 0")


@dataclass(frozen=True)
class LocalDpSettings:
    """A local-DP task's settings once the device has checked them."""

    mechanism: str
    clip_norm: float
    noise_multiplier: float | None  # gaussian, laplace
    epsilon: float | None  # staircase: per-coordinate ε per upload
    delta: float
    target_epsilon: float | None  # the job's budget, as the task states it

    @property
    def norm(self) -> str:
        return _NORMS[self.mechanism]

    def event(self, dims: int) -> RoundEvent:
        """One upload, unamplified (the server knows who uploaded)."""
        return RoundEvent(self.mechanism, "none", 1.0, self.noise_multiplier,
                          epsilon=self.epsilon,
                          dims=dims if self.mechanism == "staircase" else 1)


def _positive(cfg: dict[str, Any], key: str, *, required: bool = True) -> float | None:
    value = cfg.get(key)
    if value is None and not required:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0):
        raise TaskRefused("bad_privacy", f"local_dp.{key} must be a finite number > 0, "
                                         f"got {value!r}")
    return float(value)


def parse_local_dp(cfg: Any) -> LocalDpSettings:
    """The task's ``local_dp`` mapping, checked; ``seed``, ``noise`` and any sensitivity
    the server sends are ignored (those are the device's)."""
    if not isinstance(cfg, dict):
        raise TaskRefused("bad_privacy", "local_dp must be a mapping")
    mechanism = cfg.get("mechanism")
    if mechanism not in _NORMS:
        raise TaskRefused("bad_privacy", f"unknown local_dp.mechanism {mechanism!r}")
    clip_norm = _positive(cfg, "clip_norm")
    assert clip_norm is not None
    staircase = mechanism == "staircase"
    delta = _positive(cfg, "delta", required=False) or 1e-5
    if delta >= 1:
        raise TaskRefused("bad_privacy", f"local_dp.delta must be in (0, 1), got {delta}")
    return LocalDpSettings(
        mechanism, clip_norm,
        None if staircase else _positive(cfg, "noise_multiplier"),
        _positive(cfg, "epsilon") if staircase else None,
        delta, _positive(cfg, "target_epsilon", required=False))


@dataclass
class DevicePrivacy:
    """One device's privacy state: its randomness, its owner's floor, its ledgers.

    ``simulation_seed`` makes the device's DP randomness reproducible — for simulation
    only (``tsfl run`` with ``noise: seeded``); such a device is not private.
    """

    floor: PrivacyFloor = field(default_factory=PrivacyFloor)
    simulation_seed: int | None = None
    _sources: dict[str, NoiseSource] = field(default_factory=dict, repr=False)
    _ledgers: dict[str, PrivacyAccountant] = field(default_factory=dict, repr=False)

    @property
    def secure(self) -> bool:
        return self.simulation_seed is None

    def source(self, job_id: str) -> NoiseSource:
        """The device's DP randomness for ``job_id`` (a CSPRNG unless simulating)."""
        src = self._sources.get(job_id)
        if src is None:
            if self.simulation_seed is None:
                src = SecureNoise()
            else:
                src = SeededNoise([self.simulation_seed,
                                   xxhash.xxh3_64_intdigest(job_id.encode()), 0xDE71CE])
            self._sources[job_id] = src
        return src

    def check_local_dp(self, job_id: str, cfg: Any, dims: int) -> LocalDpSettings:
        """Parse a task's local-DP settings and hold them against the floor and the
        ledger; raises :class:`TaskRefused`."""
        s = parse_local_dp(cfg)
        f = self.floor
        if (f.min_noise_multiplier is not None and s.noise_multiplier is not None
                and s.noise_multiplier < f.min_noise_multiplier):
            raise TaskRefused("privacy_floor", f"noise multiplier {s.noise_multiplier:g} is "
                              f"below this device's floor {f.min_noise_multiplier:g}")
        if f.max_clip_norm is not None and s.clip_norm > f.max_clip_norm:
            raise TaskRefused("privacy_floor", f"clip norm {s.clip_norm:g} is above this "
                              f"device's cap {f.max_clip_norm:g}")
        caps = [c for c in (f.max_epsilon, s.target_epsilon) if c is not None]
        if caps:
            after = self.epsilon_after(job_id, s, dims)
            if after > min(caps):
                raise TaskRefused("budget", f"one more upload would spend ε={after:.4g} on "
                                  f"this device, above its cap {min(caps):g}")
        return s

    def _ledger(self, job_id: str, delta: float) -> PrivacyAccountant:
        acc = self._ledgers.get(job_id)
        if acc is None:
            acc = self._ledgers[job_id] = PrivacyAccountant(delta, 1e-3)
        return acc

    def epsilon_after(self, job_id: str, s: LocalDpSettings, dims: int) -> float:
        return self._ledger(job_id, s.delta).epsilon_after(s.event(dims)).epsilon

    def charge_local(self, job_id: str, s: LocalDpSettings, dims: int) -> None:
        """Record one noised upload (done before it leaves the device)."""
        self._ledger(job_id, s.delta).compose(s.event(dims))

    def epsilon(self, job_id: str) -> float:
        """The local-DP ε this device has spent on ``job_id``."""
        acc = self._ledgers.get(job_id)
        return acc.epsilons().epsilon if acc is not None and acc.rounds else 0.0

    def uploads(self, job_id: str) -> int:
        acc = self._ledgers.get(job_id)
        return acc.rounds if acc is not None else 0
