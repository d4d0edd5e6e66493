"""SecAgg+ graph parameters from the threat model: the degree k and the threshold t.

Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020, Sec. 3–4: the clients sit on a Harary graph H(n, k)
over a uniformly random permutation; each shares its two secrets t-out-of-k among its k
neighbours. Up to γn clients are corrupt (they collude with the server) and up to δn
drop out. A (k, t) is acceptable when three bad events are each negligible — union bounds
over the n clients, computed here *exactly* with integer binomials (no floating point in
the decision to accept a degree; a float pre-check with 2 bits of slack only skips the
degrees that clearly fail):

(1) *Connectivity* (security): the honest surviving clients stay connected — otherwise
    the server learns the sum of a component. Removing vertices disconnects H(n, k) only
    if two disjoint runs of k/2 consecutive positions are all bad (corrupt or dropped),
    so with B = C + D bad clients::

        Pr[disconnected] ≤ n(n − k − 1)/2 · (B)_k / (n)_k  ≤ 2^−(σ+1)          (1)

    ((x)_k the falling factorial: the chance k given positions all hold bad clients.)

(2) *Privacy against an active server* (security): an honest u's neighbours hold t-of-k
    shares of its self-mask seed b_u and its mask key s_u; each honest neighbour reveals a
    share of at most one of them, the X corrupt ones both. A server that splits the
    unmask request gets both secrets iff 2t ≤ k + X (Bonawitz et al. 2017, Sec. 6,
    active model: t > (n + n_C)/2, here per neighbourhood). X ~ Hyp(n − 1, C, k), so
    with a the smallest integer such that::

        n · Pr[X > a] ≤ 2^−(σ+1),        t = ⌊(k + a)/2⌋ + 1   (so 2t − k > a)   (2)

    This also gives t > k/2: a threshold of half a neighbourhood or less is never
    derived (and the job configuration refuses one).

(3) *Correctness*: every client keeps at least t surviving neighbours, so each secret
    the server needs can be rebuilt. The dropped neighbours Z ~ Hyp(n − 1, D, k)::

        n · Pr[Z > k − t] ≤ 2^−ρ                                               (3)

k is the smallest even degree (the cost is linear in k) meeting (1)–(3); when none below
n − 1 does, the complete graph (k = n − 1, the original SecAgg of Bonawitz et al.), where
(1) cannot fail, X = C and Z = D. The complete graph is checked first: when it fails
(roughly γ + 2δ ≥ 1) no sparser graph passes either, and the model is refused at once.
C = ⌈γn⌉ and D = ⌈δn⌉ (rounded against us). The structure of the search follows
Google's reference finder (FCP,
``secagg/server/graph_parameter_finder.cc``), with exact tails and the active-server
threshold (2). σ = 40 and ρ = σ by default.

Every party runs :func:`derive` — the coordinator to set the round up, each device to
check it: a device refuses a round whose (k, t) departs from what it derives.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from tsfl.errors import TsflError

SECURITY_BITS = 40
#: the largest cohort the exact search is run for (integers of a few 10k bits)
MAX_CLIENTS = 100_000


class ParameterError(TsflError, ValueError):
    """No (k, t) meets the bounds for this threat model (or the model is malformed)."""


@dataclass(frozen=True)
class GraphParams:
    """A round's graph: ``neighbours`` (k) and ``threshold`` (t) for ``clients`` (n), and
    the log2 of the three bounds it meets."""

    clients: int
    neighbours: int
    threshold: int
    log2_disconnected: float  # (1)
    log2_split: float  # (2)
    log2_incorrect: float  # (3)

    @property
    def complete(self) -> bool:
        return self.neighbours == self.clients - 1


def _log2_exact(num: int, den: int) -> float:
    """log2(num / den) for non-negative big integers (−inf for 0)."""
    if num == 0:
        return -math.inf
    shift = max(num.bit_length(), den.bit_length()) - 64
    if shift > 0:
        num_f, den_f = num >> shift, den >> shift
        if num_f == 0:  # far below den: bit lengths suffice
            return float(num.bit_length() - den.bit_length())
        return math.log2(num_f) - math.log2(den_f)
    return math.log2(num) - math.log2(den)


def _tails(population: int, marked: int, draws: int) -> list[int]:
    """``tails[a]`` = Σ_{i ≥ a} C(marked, i)·C(population − marked, draws − i): the
    numerator of Pr[Hyp(population, marked, draws) ≥ a] over C(population, draws), for
    a = 0 … draws + 1."""
    terms = [0] * (draws + 2)
    for i in range(max(0, draws - (population - marked)), min(marked, draws) + 1):
        terms[i] = math.comb(marked, i) * math.comb(population - marked, draws - i)
    for i in range(draws, -1, -1):
        terms[i] += terms[i + 1]
    return terms


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def _log_tails(population: int, marked: int, draws: int) -> list[float]:
    """ln Pr[Hyp(population, marked, draws) ≥ a] for a = 0 … draws + 1 (floats)."""
    lo, hi = max(0, draws - (population - marked)), min(marked, draws)
    base = _log_comb(population, draws)
    out = [-math.inf] * (draws + 2)
    acc = -math.inf
    for i in range(hi, lo - 1, -1):
        term = _log_comb(marked, i) + _log_comb(population - marked, draws - i) - base
        acc = max(acc, term) + math.log1p(math.exp(-abs(acc - term)))
        out[i] = acc
    for i in range(lo - 1, -1, -1):
        out[i] = acc
    return out


def _plausible(n: int, k: int, corrupt: int, dropped: int, sigma: int, rho: int,
               min_fraction: float | None) -> bool:
    """A float pre-check of :func:`_check` with 2 bits of slack in our favour: False
    only for a degree the exact check would refuse too (it skips the big integers for
    the many degrees far from the answer)."""
    slack, ln2, ln_n = 2 * math.log(2), math.log(2), math.log(n)
    bad = corrupt + dropped
    if k < n - 1 and bad >= k:
        log_disc = (ln_n + math.log(n - k - 1) - ln2 + math.lgamma(bad + 1)
                    - math.lgamma(bad - k + 1) - math.lgamma(n + 1) + math.lgamma(n - k + 1))
        if log_disc > -(sigma + 1) * ln2 + slack:
            return False
    lost = _log_tails(n - 1, dropped, k)
    t_max = k
    while t_max > 0 and ln_n + lost[k - t_max + 1] > -rho * ln2 + slack:
        t_max -= 1
    held = _log_tails(n - 1, corrupt, k)
    a = 0
    while ln_n + held[a + 1] > -(sigma + 1) * ln2 + slack:
        a += 1
    t = (k + a) // 2 + 1
    if min_fraction is not None:
        t = max(t, math.floor(min_fraction * k) + 1)
    return t <= t_max


def _check(n: int, k: int, corrupt: int, dropped: int, sigma: int, rho: int,
           min_fraction: float | None) -> GraphParams | None:
    if not _plausible(n, k, corrupt, dropped, sigma, rho, min_fraction):
        return None
    # (1) connectivity of the honest survivors
    bad = corrupt + dropped
    if k == n - 1 or bad < k:
        disc_num, disc_den = 0, 1
    else:
        disc_num = n * (n - k - 1) * math.perm(bad, k)
        disc_den = 2 * math.perm(n, k)
        if disc_num << (sigma + 1) > disc_den:
            return None
    total = math.comb(n - 1, k)
    # (3) first, as it is the cheaper refusal: the most dropped neighbours w.h.p. bound t
    lost = _tails(n - 1, dropped, k)
    t_max = k  # the largest t with n·Pr[Z > k − t] ≤ 2^−ρ
    while t_max > 0 and (n * lost[k - t_max + 1]) << rho > total:
        t_max -= 1
    # (2) the fewest corrupt neighbours a that bounds X w.h.p., then t
    held = _tails(n - 1, corrupt, k)
    a = 0
    while (n * held[a + 1]) << (sigma + 1) > total:
        a += 1
    t = (k + a) // 2 + 1
    if min_fraction is not None:
        t = max(t, math.floor(min_fraction * k) + 1)
    if t > t_max:
        return None
    return GraphParams(n, k, t, _log2_exact(disc_num, disc_den),
                       _log2_exact(n * held[2 * t - k], total),
                       _log2_exact(n * lost[k - t + 1], total))


@functools.lru_cache(maxsize=256)
def derive(n: int, corruption: float, dropout: float, security_bits: int = SECURITY_BITS,
           correctness_bits: int | None = None, min_fraction: float | None = None
           ) -> GraphParams:
    """The smallest even degree k (else the complete graph) and its threshold t meeting
    (1)–(3) for ``n`` clients, γ = ``corruption``, δ = ``dropout``, σ =
    ``security_bits``, ρ = ``correctness_bits`` (default σ); ``min_fraction`` raises t to
    more than that fraction of k (≥ 0.5)."""
    if not 3 <= n <= MAX_CLIENTS:
        raise ParameterError(f"SecAgg+ needs 3..{MAX_CLIENTS} clients, not {n}")
    if not (0 <= corruption < 1 and 0 <= dropout < 1):
        raise ParameterError("corruption and dropout are fractions in [0, 1)")
    if not 1 <= security_bits <= 256:
        raise ParameterError("security_bits must be in 1..256")
    if min_fraction is not None and not 0.5 <= min_fraction < 1:
        raise ParameterError(f"a threshold fraction of {min_fraction} lets a server that "
                             "splits the unmask request rebuild both secrets of a client "
                             "(t ≤ k/2); use at least 0.5")
    rho = security_bits if correctness_bits is None else correctness_bits
    corrupt = math.ceil(corruption * n - 1e-9)
    dropped = math.ceil(dropout * n - 1e-9)
    # the complete graph first: where it fails (γ + 2δ ≳ 1) every sparser one does too,
    # and a device told absurd parameters learns it without scanning every degree
    complete = _check(n, n - 1, corrupt, dropped, security_bits, rho, min_fraction)
    if complete is not None:
        for k in range(2, n - 1, 2):
            found = _check(n, k, corrupt, dropped, security_bits, rho, min_fraction)
            if found is not None:
                return found
        return complete
    raise ParameterError(
        f"no SecAgg+ graph for n = {n} with γ = {corruption}, δ = {dropout} at "
        f"{security_bits}-bit security: even the complete graph leaves too few honest "
        "survivors; lower crypto.secagg.corruption or dropout, or select more clients")


def table(sizes: tuple[int, ...] = (100, 1000, 10_000),
          models: tuple[tuple[float, float], ...] = ((0.0, 0.1), (0.05, 0.1), (0.1, 0.1),
                                                     (0.05, 0.2), (0.1, 0.2), (0.05, 0.3)),
          security_bits: int = SECURITY_BITS) -> list[dict[str, float | int | str]]:
    """(k, t) over cohort sizes and threat models, for the documentation."""
    rows: list[dict[str, float | int | str]] = []
    for n in sizes:
        for gamma, delta in models:
            try:
                p = derive(n, gamma, delta, security_bits)
            except ParameterError:
                rows.append({"n": n, "γ": gamma, "δ": delta, "k": "–", "t": "–",
                             "k/n": "–"})
                continue
            rows.append({"n": n, "γ": gamma, "δ": delta, "k": p.neighbours,
                         "t": p.threshold, "k/n": round(p.neighbours / n, 3)})
    return rows


def markdown_table(rows: list[dict[str, float | int | str]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)
