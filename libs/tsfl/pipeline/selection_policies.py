"""Selection strategies behind one interface (:class:`SelectionPolicy`).

A policy picks ``k`` of the ``available`` devices (ordered by id) for a round, from a
per-round seeded generator and what the server knows of the devices (a
:class:`DeviceBook`: expected task time, availability, last training loss, declared label
histogram). ``uniform`` is :class:`~tsfl.pipeline.selection.UniformSelector`'s draw,
unchanged. With DP the spec refuses every other policy (and over-selection): DP needs a
random, secret sample (:func:`tsfl.config.rules.check_selection`).

Writing your own: subclass :class:`SelectionPolicy`, implement :meth:`~SelectionPolicy.pick`
and register it in :data:`POLICIES`::

    class Newest(SelectionPolicy):
        kind = "newest"
        def pick(self, round_number, available, k, book, rng):
            return sorted(available, key=lambda c: book.last_round.get(c, -1))[:k]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from tsfl.config.selection import SelectionSpec
from tsfl.pipeline.selection import UniformSelector
from tsfl.plugins import SELECTION_GROUP, load_plugin


@dataclass
class DeviceBook:
    """What the server knows of each device. Simulation fills it from the virtual clock
    and the devices' reports; every entry is optional (a policy copes without it)."""

    expected_s: Callable[[str], float | None] = lambda cid: None
    online: Callable[[str], bool] = lambda cid: True
    label_histogram: Callable[[str], np.ndarray | None] = lambda cid: None
    utility: dict[str, float] = field(default_factory=dict)  # Oort's statistical utility
    last_round: dict[str, int] = field(default_factory=dict)  # last round it trained in

    def report(self, cid: str, round_number: int, examples: int, train_loss: float | None
               ) -> None:
        """A device's training result: Oort's statistical utility
        ``U_i = |B_i| · sqrt(Σ_{k∈B_i} loss(k)² / |B_i|)`` (Lai et al. 2021, eq. 1),
        estimated from the mean loss it reports (``|B_i| · L̄_i``, a lower bound by
        Jensen's inequality)."""
        self.last_round[cid] = round_number
        if train_loss is not None and math.isfinite(train_loss) and examples > 0:
            self.utility[cid] = float(examples) * abs(float(train_loss))


class SelectionPolicy(ABC):
    """One way to choose a round's cohort."""

    kind: ClassVar[str]

    def __init__(self, spec: SelectionSpec, seed: int, deadline_s: float):
        self.spec, self.seed, self.deadline_s = spec, seed, deadline_s

    def cohort_size(self, k: int, available: int) -> int:
        """``⌈(1 + o)·k⌉`` devices asked (over-selection), at most all available."""
        return min(available, math.ceil(k * (1.0 + self.spec.over_selection) - 1e-9))

    def select(self, round_number: int, available: Sequence[str], k: int,
               book: DeviceBook) -> list[str]:
        """The cohort: over-selected, then :meth:`pick` ed from a per-round generator."""
        size = self.cohort_size(k, len(available))
        rng = np.random.default_rng([self.seed, round_number, 0x5E1EC7, 0x9011C7])
        cohort = self.pick(round_number, list(available), size, book, rng)
        if len(cohort) != size or len(set(cohort)) != size:
            raise AssertionError(f"{self.kind} picked {len(cohort)} of {size} (or repeated)")
        return cohort

    @abstractmethod
    def pick(self, round_number: int, available: list[str], k: int, book: DeviceBook,
             rng: np.random.Generator) -> list[str]:
        """Exactly ``k`` distinct devices of ``available``."""


class Uniform(SelectionPolicy):
    """k of n uniformly (today's selector; with no over-selection, the very same draw)."""

    kind = "uniform"

    def select(self, round_number: int, available: Sequence[str], k: int,
               book: DeviceBook) -> list[str]:
        return UniformSelector(self.seed).select(round_number, available,
                                                 self.cohort_size(k, len(available)))

    def pick(self, round_number: int, available: list[str], k: int, book: DeviceBook,
             rng: np.random.Generator) -> list[str]:  # pragma: no cover - select overrides
        raise NotImplementedError


def _fill(chosen: list[str], pool: Sequence[str], k: int, key: Callable[[str], float]
          ) -> list[str]:
    """Top ``chosen`` up to ``k`` with the lowest-``key`` devices of ``pool``."""
    taken = set(chosen)
    rest = sorted((c for c in pool if c not in taken), key=key)
    return chosen + rest[:k - len(chosen)]


class SpeedAware(SelectionPolicy):
    """Availability- and speed-aware: devices online now and expected to finish within the
    round's deadline are drawn uniformly (so the cohort's data stays representative of
    the eligible population); too few, and the fastest others fill it. Over-selection
    then absorbs the stragglers (Bonawitz et al., SysML 2019, §2.1)."""

    kind = "speed"

    def pick(self, round_number: int, available: list[str], k: int, book: DeviceBook,
             rng: np.random.Generator) -> list[str]:
        def t(cid: str) -> float:
            e = book.expected_s(cid)
            return math.inf if e is None else e

        online = [c for c in available if book.online(c)]
        eligible = [c for c in online if t(c) <= self.deadline_s]
        if len(eligible) >= k:
            picks = rng.choice(len(eligible), size=k, replace=False)
            return [eligible[i] for i in picks]
        chosen = _fill(list(eligible), online, k, t)
        return _fill(chosen, available, k, t)


class Oort(SelectionPolicy):
    """Oort's guided participant selection (Lai et al., OSDI 2021, §4, Algorithm 1):
    ``Util(i) = U_i · (T / t_i)^{1(T < t_i)·α}`` plus a staleness bonus
    ``sqrt(0.1 · log R / L_i)`` (R the round, L_i the round i last trained in); the
    ``(1 − ε)·k`` exploited devices are sampled ∝ utility among those above
    ``0.95 ×`` the ``(1 − ε)k``-th utility, the ``ε·k`` explored ones are never-tried
    devices, fastest first (random among equals)."""

    kind = "oort"
    cutoff = 0.95

    def pick(self, round_number: int, available: list[str], k: int, book: DeviceBook,
             rng: np.random.Generator) -> list[str]:
        pref = self.spec.preferred_s or self.deadline_s
        alpha = self.spec.straggler_penalty
        online = [c for c in available if book.online(c)] or available
        explored = [c for c in online if c in book.utility]
        fresh = [c for c in online if c not in book.utility]
        n_exploit = min(len(explored), k - min(len(fresh),
                                               round(self.spec.exploration * k)))
        chosen: list[str] = []
        if n_exploit > 0:
            util = np.empty(len(explored))
            for j, c in enumerate(explored):
                u = book.utility[c]
                last = book.last_round.get(c, round_number - 1)
                u += math.sqrt(0.1 * math.log(max(round_number, 2)) / max(last, 1))
                t = book.expected_s(c)
                if t is not None and t > pref:
                    u *= (pref / t) ** alpha
                util[j] = u
            order = np.argsort(-util, kind="stable")
            bar = util[order[n_exploit - 1]] * self.cutoff
            pool = [j for j in order if util[j] >= bar]
            p = util[pool] / util[pool].sum() if util[pool].sum() > 0 else None
            picks = rng.choice(len(pool), size=n_exploit, replace=False, p=p)
            chosen = [explored[pool[i]] for i in picks]
        if len(chosen) < k:
            noise = {c: float(rng.random()) for c in fresh}

            def speed(cid: str) -> tuple[float, float]:
                t = book.expected_s(cid)
                return (math.inf if t is None else t, noise.get(cid, 0.0))

            chosen = _fill(chosen, fresh, k, lambda c: speed(c)[0] + 1e-9 * speed(c)[1])
        if len(chosen) < k:  # every online device is in; take offline ones too
            chosen = _fill(chosen, available, k, lambda c: float(rng.random()))
        return chosen


class Stratified(SelectionPolicy):
    """Stratified sampling over declared label histograms: devices are grouped by their
    dominant label (no histogram: a stratum of its own), the cohort is allotted to strata
    in proportion to their sizes (largest remainders), and drawn uniformly within each —
    a lower-variance estimate of the population's mean update than a simple random
    sample (Cochran, *Sampling Techniques*, §5.3, proportional allocation)."""

    kind = "stratified"

    def pick(self, round_number: int, available: list[str], k: int, book: DeviceBook,
             rng: np.random.Generator) -> list[str]:
        strata: dict[int, list[str]] = {}
        for c in available:
            h = book.label_histogram(c)
            label = -1 if h is None or not np.any(h > 0) else int(np.argmax(h))
            strata.setdefault(label, []).append(c)
        labels = sorted(strata)
        share = np.array([len(strata[s]) for s in labels], dtype=np.float64) * k / len(
            available)
        alloc = np.floor(share).astype(int)
        for j in np.argsort(-(share - alloc), kind="stable")[:k - int(alloc.sum())]:
            alloc[j] += 1
        chosen: list[str] = []
        for s, m in zip(labels, alloc, strict=True):
            members = strata[s]
            chosen += [members[i] for i in rng.choice(len(members), size=int(m),
                                                      replace=False)]
        return chosen


POLICIES: dict[str, type[SelectionPolicy]] = {
    cls.kind: cls for cls in (Uniform, SpeedAware, Oort, Stratified)}


def build_policy(spec: SelectionSpec, seed: int, deadline_s: float) -> SelectionPolicy:
    """The policy ``spec.kind``: a built-in one, else one installed in the
    ``tsfl.selection`` entry-point group (:mod:`tsfl.plugins`)."""
    cls = POLICIES.get(spec.kind) or load_plugin(SELECTION_GROUP, spec.kind, SelectionPolicy)
    return cls(spec, seed, deadline_s)
