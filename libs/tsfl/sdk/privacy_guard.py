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

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from tsfl.errors import ErrorKind, TsflError
from tsfl.privacy.accounting import PrivacyAccountant, RoundEvent
from tsfl.privacy.noise import NoiseSource, SecureNoise, SeededNoise

#: local DP: any two of a device's clipped updates differ by at most the ball's diameter
LOCAL_SENSITIVITY_FACTOR = 2.0
_NORMS = {"gaussian": "l2", "laplace": "l1", "staircase": "linf"}


class TaskRefused(TsflError):
    """The device will not run a task: its privacy settings are below the owner's floor,
    malformed, or would spend past the device's budget."""

    kind = ErrorKind.DENIED

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PrivacyFloor:
    """What the device owner accepts, whatever the server asks (None: no bound).

    ``require_local_dp``: refuse any task that does not ask for local DP (a server could
    otherwise switch DP off by leaving it out of the task); ``None`` means "yes, as soon
    as any bound is set". ``mechanisms``: the local-DP mechanisms the device runs (the
    float-based staircase only if the owner opts in). ``delta``: the δ the device accounts
    at (it never takes a larger one from a task). ``max_total_epsilon``: a cap across all
    jobs on the same data (basic composition of the per-job ε)."""

    min_noise_multiplier: float | None = None
    max_clip_norm: float | None = None  # in L2, whatever the mechanism's norm
    max_epsilon: float | None = None  # per job, for the device's local-DP or DP-SGD ε
    max_total_epsilon: float | None = None  # across jobs
    delta: float = 1e-5
    mechanisms: tuple[str, ...] = ("gaussian", "laplace")
    require_local_dp: bool | None = None

    def __post_init__(self) -> None:
        for name in ("min_noise_multiplier", "max_clip_norm", "max_epsilon",
                     "max_total_epsilon"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"PrivacyFloor.{name} must be a finite number > 0")
        if not 0 < self.delta < 1:
            raise ValueError("PrivacyFloor.delta must be in (0, 1)")
        unknown = set(self.mechanisms) - set(_NORMS)
        if unknown:
            raise ValueError(f"PrivacyFloor.mechanisms: unknown {sorted(unknown)}")

    @property
    def local_dp_required(self) -> bool:
        if self.require_local_dp is not None:
            return self.require_local_dp
        return any(v is not None for v in (self.min_noise_multiplier, self.max_clip_norm,
                                           self.max_epsilon, self.max_total_epsilon))


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

    ``ledger_path``: a JSON file where the device keeps every charge it made (per job),
    so a restarted device — or one a server makes restart — does not start from zero.
    ``simulation_seed`` makes the device's DP randomness reproducible — for simulation
    only (``tsfl run`` with ``noise: seeded``); such a device is not private.
    """

    floor: PrivacyFloor = field(default_factory=PrivacyFloor)
    simulation_seed: int | None = None
    ledger_path: Path | None = None
    _sources: dict[str, NoiseSource] = field(default_factory=dict, repr=False)
    _charges: dict[str, list[list[Any]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.ledger_path is not None:
            self.ledger_path = Path(self.ledger_path)
            if self.ledger_path.exists():
                self._charges = _load_ledger(self.ledger_path)

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

    # -- local DP --------------------------------------------------------------------------
    def check_task(self, job_id: str, config: dict[str, Any], dims: int,
                   trains_with_dp_sgd: bool = False) -> LocalDpSettings | None:
        """The task's local-DP settings, checked against the floor and the ledger (None
        when the task asks for none and the floor allows that); raises :class:`TaskRefused`."""
        if "local_dp" not in config:
            if self.floor.local_dp_required and not trains_with_dp_sgd:
                raise TaskRefused("privacy_floor", "the task asks for no local DP, and this "
                                  "device takes part only under local DP")
            return None
        return self.check_local_dp(job_id, config["local_dp"], dims)

    def check_local_dp(self, job_id: str, cfg: Any, dims: int) -> LocalDpSettings:
        """Parse a task's local-DP settings and hold them against the floor and the
        ledger; raises :class:`TaskRefused`."""
        s = parse_local_dp(cfg)
        f = self.floor
        if s.mechanism not in f.mechanisms:
            raise TaskRefused("privacy_floor", f"mechanism {s.mechanism!r} is not one this "
                              f"device runs ({', '.join(f.mechanisms)})")
        if (f.min_noise_multiplier is not None and s.noise_multiplier is not None
                and s.noise_multiplier < f.min_noise_multiplier):
            raise TaskRefused("privacy_floor", f"noise multiplier {s.noise_multiplier:g} is "
                              f"below this device's floor {f.min_noise_multiplier:g}")
        # the clip bound in L2: an L∞ ball of radius C reaches C·√d, an L1 ball C
        l2_clip = s.clip_norm * (math.sqrt(dims) if s.norm == "linf" else 1.0)
        if f.max_clip_norm is not None and l2_clip > f.max_clip_norm:
            raise TaskRefused("privacy_floor", f"clip norm {s.clip_norm:g} ({s.norm}; "
                              f"{l2_clip:.4g} in L2) is above this device's cap "
                              f"{f.max_clip_norm:g}")
        delta = min(s.delta, f.delta)  # never account at a larger δ than the owner's
        try:
            after = self._epsilon(job_id, delta, s.event(dims))
            total = sum(self._epsilon(j, f.delta) for j in self._charges if j != job_id)
            total += self._epsilon(job_id, f.delta, s.event(dims))
        except (ValueError, ArithmeticError, IndexError) as exc:
            raise TaskRefused("bad_privacy", f"cannot account this task's privacy: "
                              f"{exc}") from None
        caps = [c for c in (f.max_epsilon, s.target_epsilon) if c is not None]
        if caps and after > min(caps):
            raise TaskRefused("budget", f"one more upload would spend ε={after:.4g} on "
                              f"this device, above its cap {min(caps):g}")
        if f.max_total_epsilon is not None and total > f.max_total_epsilon:
            raise TaskRefused("budget", f"one more upload would take this device's ε over "
                              f"all jobs to {total:.4g}, above its cap "
                              f"{f.max_total_epsilon:g}")
        return s

    def charge_local(self, job_id: str, s: LocalDpSettings, dims: int) -> None:
        """Record one noised upload (done before it leaves the device)."""
        ev = s.event(dims)
        self._charges.setdefault(job_id, []).append(
            [ev.mechanism, ev.noise_multiplier, ev.epsilon, ev.dims])
        if self.ledger_path is not None:
            _save_ledger(self.ledger_path, self._charges)

    def _epsilon(self, job_id: str, delta: float, extra: RoundEvent | None = None) -> float:
        acc = PrivacyAccountant(delta, 1e-3)
        for mechanism, z, eps, dims in self._charges.get(job_id, []):
            acc.compose(RoundEvent(mechanism, "none", 1.0, z, epsilon=eps, dims=dims))
        if extra is not None:
            acc.compose(extra)
        return acc.epsilons().epsilon if acc.rounds else 0.0

    def epsilon(self, job_id: str) -> float:
        """The local-DP ε this device has spent on ``job_id`` (at its owner's δ)."""
        return self._epsilon(job_id, self.floor.delta)

    def uploads(self, job_id: str) -> int:
        return len(self._charges.get(job_id, []))


def _load_ledger(path: Path) -> dict[str, list[list[Any]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"device privacy ledger {path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"device privacy ledger {path} is malformed")
    return {str(k): [list(c) for c in v] for k, v in data.items()}


def _save_ledger(path: Path, charges: dict[str, list[list[Any]]]) -> None:
    """Write the ledger atomically (a crash leaves the old or the new file, never half)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(charges))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
