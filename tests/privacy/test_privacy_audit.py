"""The empirical privacy audit (``tsfl audit privacy``), written as attacks.

The statistics (:mod:`tsfl.privacy.audit`) are checked against an independent brute-force
binomial-tail search and against simulated ε-DP randomized response; the runtime
(:mod:`tsfl.runtime.canaries`) is checked by breaking the privacy of a real run — central
noise switched off while the ledger still charges it, local noise the server can
regenerate — and seeing the bound climb above the accounted ε, while the real pipeline's
bound stays below it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math

import numpy as np
import pytest

from tsfl.cli.main import build_parser, main
from tsfl.config import parse_job
from tsfl.privacy import audit as stats
from tsfl.privacy.mechanisms import GaussianMechanism, Mechanism, build_mechanism
from tsfl.privacy.noise import SeededNoise
from tsfl.runtime.canaries import (
    AuditError,
    CanarySet,
    audited_spec,
    check_auditable,
    run_privacy_audit,
)

# -- the statistics ---------------------------------------------------------------------------


def _brute_p(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 3's right-hand side, term by term, max over every i in 1..m."""
    p = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, k) * p**k * (1 - p) ** (r - k) for k in range(r + 1)]
    tails = [sum(pmf[x:]) for x in range(r + 1)]  # tails[x] = P[W' ≥ x]

    def f(x: int) -> float:
        return 1.0 if x <= 0 else tails[x]

    fv = f(v)
    alpha = max((f(v - i) - fv) / i for i in range(1, m + 1))
    return min(1.0, fv + 2 * m * delta * alpha)


def _brute_bound(m: int, r: int, v: int, delta: float, beta: float = 0.05,
                 step: float = 1e-3) -> float:
    """The first ε on a fine grid where the hypothesis is no longer rejected."""
    eps = 0.0
    while _brute_p(m, r, v, eps, delta) <= beta:
        eps += step
    return max(0.0, eps - step) if eps > 0 else 0.0


@pytest.mark.parametrize(("m", "r", "v", "delta"), [
    (100, 40, 30, 0.0), (100, 40, 30, 1e-5), (200, 100, 80, 1e-5), (60, 20, 20, 0.0),
    (60, 20, 20, 1e-3), (1000, 100, 60, 1e-5)])
def test_bound_matches_a_brute_force_binomial_tail_search(m, r, v, delta):
    ours = stats.epsilon_lower_bound(m, r, v, delta)
    assert ours == pytest.approx(_brute_bound(m, r, v, delta), abs=2e-3)
    assert stats.p_value(m, r, v, 0.7, delta) == pytest.approx(_brute_p(m, r, v, 0.7, delta),
                                                               rel=1e-9, abs=1e-15)


def test_pure_dp_bound_is_the_clopper_pearson_lower_limit():
    # δ = 0: P[Bin(r, p) ≥ v] ≤ β  ⟺  p ≤ the one-sided Clopper–Pearson limit
    from scipy.stats import beta as beta_dist

    for r, v in ((50, 40), (200, 150), (20, 19)):
        p_lo = beta_dist.ppf(0.05, v, r - v + 1)
        expected = max(0.0, math.log(p_lo / (1 - p_lo)))
        assert stats.epsilon_lower_bound(r, r, v) == pytest.approx(expected, abs=1e-5)


def test_bound_is_monotone_in_correct_guesses():
    for delta in (0.0, 1e-5):
        bounds = [stats.epsilon_lower_bound(1000, 200, v, delta) for v in range(90, 201)]
        assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bounds))
        assert bounds[0] == 0.0 and bounds[-1] > 3.0
    assert stats.epsilon_lower_bound(100, 100, 100, 1e-5) > stats.epsilon_lower_bound(
        100, 100, 99, 1e-5)


def test_coin_flip_guesses_bound_nothing():
    rng = np.random.default_rng(7)
    assert stats.epsilon_lower_bound(1000, 500, 250, 1e-5) == 0.0
    bounds = [stats.audit(rng.standard_normal(1000), rng.random(1000) < 0.5, 1e-5).epsilon
              for _ in range(20)]
    assert max(bounds) < 0.3
    assert sum(b == 0.0 for b in bounds) >= 15


def test_simulated_randomized_response_is_never_over_audited():
    """200 audits of ε-DP randomized response (the worst case Theorem 3 is tight for):
    the 95% bound exceeds the true ε in at most 5% of them (+ sampling slack)."""
    rng = np.random.default_rng(2023)
    m = 1000
    for eps_true in (0.5, 2.0):
        truthful = 1 / (1 + math.exp(-eps_true))
        over_fixed = over_best = 0
        for _ in range(200):
            inc = rng.random(m) < 0.5
            out = np.where(rng.random(m) < truthful, inc, ~inc)  # the mechanism's release
            scores = out + 0.01 * rng.standard_normal(m)  # tie-break: any auditor is valid
            one = stats.audit(scores, inc, 0.0, choices=[(m // 2, m // 2)])
            over_fixed += one.epsilon > eps_true
            over_best += stats.audit(scores, inc, 1e-5).epsilon > eps_true
        assert over_fixed <= 0.05 * 200 + 6  # ~3 SDs of Binomial(200, 0.05)
        assert over_best <= 0.05 * 200 + 6


def test_audit_corrects_for_the_choices_it_tries():
    rng = np.random.default_rng(1)
    inc = rng.random(500) < 0.5
    scores = inc * 3.0 + rng.standard_normal(500)
    one = stats.audit(scores, inc, 1e-5, choices=[(50, 50)])
    many = stats.audit(scores, inc, 1e-5, choices=[(50, 50), (10, 0), (100, 100)])
    r, v = stats.count_correct(scores, inc, 50, 50)
    assert one.epsilon == stats.epsilon_lower_bound(500, r, v, 1e-5)
    at_50 = next(c for c in many.candidates if (c.k_pos, c.k_neg) == (50, 50))
    assert at_50.epsilon == stats.epsilon_lower_bound(500, r, v, 1e-5, 0.05 / 3)
    assert at_50.epsilon < one.epsilon and many.tests == 3
    two = stats.audit({"a": scores, "b": -scores}, inc, 1e-5, choices=[(50, 50)])
    assert two.tests == 2 and two.statistic == "a"
    assert two.epsilon == stats.epsilon_lower_bound(500, r, v, 1e-5, 0.025)


def test_guesses_and_thresholds():
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    inc = np.array([False, True, True, False, True, False])
    assert stats.count_correct(scores, inc, 2, 2) == (4, 4)
    assert stats.count_correct(scores, inc, 3, 3) == (6, 6)
    res = stats.audit(scores, inc, choices=[(2, 1)])
    assert (res.threshold_in, res.threshold_out, res.correct) == (0.7, 0.1, 3)
    with pytest.raises(ValueError):
        stats.count_correct(scores, inc, 4, 3)


# -- the canaries -----------------------------------------------------------------------------

HONEST = {"name": "audit", "seed": 5, "rounds": 8,
          "data": {"dataset": "digits", "partition": {"kind": "iid"}},
          "clients": {"count": 20, "per_round": 10},
          "model": {"kind": "mlp", "hidden": [64]},
          "training": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 16}}
CANARIES = 200


def _spec(**privacy):
    return parse_job({**HONEST, "privacy": {"clip_norm": 1.0, "delta": 1e-5,
                                            "noise": "seeded", **privacy}})


def test_the_audited_job_keeps_the_sampling_rate_and_the_accountant_sees_it():
    spec = _spec(mode="central", target_epsilon=1.0)
    audited = audited_spec(spec, 20, CANARIES)
    assert (audited.clients.count, audited.clients.per_round) == (220, 110)
    assert audited.clients.per_round / audited.clients.count == 10 / 20
    cs = CanarySet.draw(CANARIES, 3, 650, 1.0, "l2")
    assert 70 < cs.included.sum() < 130
    u = cs.direction(7)
    assert np.linalg.norm(u) == pytest.approx(1.0)
    assert np.linalg.norm(cs.delta(7)) == pytest.approx(1.0, rel=1e-6)
    assert np.array_equal(u, CanarySet.draw(CANARIES, 3, 650, 1.0, "l2").direction(7))
    l1 = CanarySet.draw(10, 3, 650, 2.0, "l1")
    assert np.abs(l1.delta(0)).sum() == pytest.approx(2.0, rel=1e-5)


def test_jobs_the_audit_does_not_cover_are_refused():
    with pytest.raises(AuditError, match="no DP guarantee"):
        check_auditable(parse_job(HONEST))
    with pytest.raises(AuditError, match="DP-SGD"):
        check_auditable(parse_job({**HONEST, "model": {"kind": "logreg"}, "training": {
            "dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}}))


def _audit(tmp_path, spec, **kwargs):
    return asyncio.run(run_privacy_audit(spec, tmp_path / "run", canaries=CANARIES,
                                         **kwargs))


def test_central_noise_off_at_release_is_caught(tmp_path, monkeypatch):
    """Attack (a): the release adds no noise while the ledger still charges for it."""
    for cls in (Mechanism, GaussianMechanism):  # the release: Σ clipped, as it is
        monkeypatch.setattr(cls, "add_noise",
                            lambda self, vector, source: vector.astype(np.float32))
    res = _audit(tmp_path, _spec(mode="central", target_epsilon=1.0))
    assert res.run.status == "COMPLETED"
    assert res.accounted_epsilon == pytest.approx(1.0, abs=0.01)
    assert res.result.epsilon > res.accounted_epsilon + 1.0, res.summary()["empirical"]


def test_central_dp_pipeline_bound_stays_below_the_accounted_epsilon(tmp_path):
    """Attack (b): the same adversary against the real release."""
    res = _audit(tmp_path, _spec(mode="central", target_epsilon=1.0))
    assert res.run.status == "COMPLETED"
    assert res.accounted_epsilon == pytest.approx(1.0, abs=0.01)
    assert res.result.epsilon <= res.accounted_epsilon
    summary = res.summary()
    assert summary["canaries"]["population"] == 20 + CANARIES
    assert summary["accounted"]["sampling_rate"] == pytest.approx(0.5)
    assert set(res.scores) == {"sum", "llr"} and res.result.tests == 24


def _broken_devices(mechanism: dict[str, object]):
    """Local-DP devices whose noise the server can regenerate (a known seed per device),
    and the server that regenerates and subtracts it: the same mechanism, fed the same
    seeded stream, noising a zero vector."""
    from tsfl.sdk.privacy_guard import DevicePrivacy

    class KnownSeed(DevicePrivacy):
        def __init__(self, index: int):
            super().__init__()
            self.index = index

        def source(self, job_id: str):
            return self._sources.setdefault(job_id, SeededNoise([0xBAD, self.index]))

    streams: dict[str, SeededNoise] = {}

    def adversary(client_id: str, round_number: int, delta: np.ndarray) -> np.ndarray:
        index = int(client_id.rsplit("-", 1)[1])
        src = streams.setdefault(client_id, SeededNoise([0xBAD, index]))
        mech = build_mechanism("gaussian", **mechanism)
        return delta - mech.add_noise(np.zeros(delta.shape[0], np.float32), src)

    return KnownSeed, adversary


def test_local_dp_noise_the_server_can_regenerate_is_caught(tmp_path):
    """Attack (c): devices seed their noise with something the server knows."""
    from tsfl.privacy.plan import resolve_privacy

    spec = _spec(mode="local", target_epsilon=1.0)
    resolved = resolve_privacy(audited_spec(spec, 20, CANARIES), 64 * 64 + 64 + 64 * 10 + 10)
    device, adversary = _broken_devices({
        "noise_multiplier": resolved.privacy.noise_multiplier,
        "sensitivity": 2.0 * resolved.privacy.clip_norm})  # the device's: the ball's diameter
    res = _audit(tmp_path, spec, device_privacy=device, adversary=adversary)
    assert res.run.status == "COMPLETED"
    assert 0 < res.accounted_epsilon <= 1.0
    assert res.uploads is not None and res.uploads.sum() > 0
    assert res.result.epsilon > res.accounted_epsilon + 1.0, res.summary()["empirical"]


def test_local_dp_bound_stays_below_the_accounted_epsilon(tmp_path):
    res = _audit(tmp_path, _spec(mode="local", target_epsilon=1.0))
    assert res.run.status == "COMPLETED"
    assert 0 < res.accounted_epsilon <= 1.0
    assert res.result.epsilon <= res.accounted_epsilon
    # the server saw every canary's uploads, included or not, alike
    assert res.uploads is not None
    inc = res.canaries.included
    assert abs(res.uploads[inc].mean() - res.uploads[~inc].mean()) < 1.0


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_audit_privacy_writes_its_outputs(tmp_path, capsys):
    import yaml

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**HONEST, "rounds": 3, "model": {"kind": "logreg"},
                                   "privacy": {"mode": "central", "clip_norm": 1.0,
                                               "target_epsilon": 2.0, "noise": "seeded"}}))
    out = tmp_path / "out"
    assert main(["audit", "privacy", str(job), "--canaries", "40", "--out", str(out),
                 "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "accounted ε = 2.000" in line and "empirical lower bound ε ≥" in line
    assert "40 canaries" in line
    data = json.loads((out / "privacy_audit.json").read_text())
    assert data["canaries"]["count"] == 40
    assert data["accounted"]["epsilon"] == pytest.approx(2.0, abs=0.01)
    assert 0 <= data["empirical"]["epsilon_lower_bound"] <= data["accounted"]["epsilon"]
    assert len(data["per_canary"]["score_sum"]) == 40
    assert (out / "privacy_audit.png").stat().st_size > 10_000


def test_cli_audit_of_a_job_id_still_parses_and_dp_sgd_is_refused(tmp_path, capsys):
    from tsfl.cli.jobs import cmd_audit

    args = build_parser().parse_args(["audit", "some-job-0123456789"])
    assert args.func is cmd_audit and args.job == "some-job-0123456789"
    import yaml

    job = tmp_path / "sgd.yaml"
    job.write_text(yaml.safe_dump({**HONEST, "model": {"kind": "logreg"}, "training": {
        "dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}}))
    assert main(["audit", "privacy", str(job), "--quiet"]) == 2
    assert "DP-SGD" in capsys.readouterr().err
