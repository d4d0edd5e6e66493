"""Split training (tsfl.vertical.split / trainer / protection / messages): accuracy against
centralised training, the activation and gradient messages' refusals, and the attacks each
protection answers (label inference from gradients, feature reconstruction from activations)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from tsfl.privacy.accounting import PrivacyAccountant, RoundEvent
from tsfl.privacy.noise import SeededNoise
from tsfl.vertical import messages as m
from tsfl.vertical.protection import keep_probability, randomized_response
from tsfl.vertical.trainer import PartyColumns, SplitSetup, train_split

N_TRAIN = 455


@pytest.fixture(scope="module")
def data():
    x, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    x = StandardScaler().fit(x[:N_TRAIN]).transform(x).astype(np.float32)
    parts = [PartyColumns(f"p{i}", x[:N_TRAIN, 10 * i:10 * (i + 1)],
                          x[N_TRAIN:, 10 * i:10 * (i + 1)]) for i in range(3)]
    return x, y, parts


def _train(data, **kw):
    _, y, parts = data
    keep = kw.pop("keep_gradients", False)
    relay = kw.pop("relay", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_split(SplitSetup(noise="seeded", **kw), parts, y[:N_TRAIN],
                           y[N_TRAIN:], 2, keep_gradients=keep, relay=relay)


def test_vertical_logreg_matches_centralised_logistic_regression(data):
    x, y, _ = data
    res = _train(data, model="logreg", epochs=30, lr=0.01, optimizer="adam")
    central = LogisticRegression(max_iter=2000).fit(x[:N_TRAIN], y[:N_TRAIN]).score(
        x[N_TRAIN:], y[N_TRAIN:])
    assert res.metrics[-1]["test_accuracy"] >= central - 0.02
    assert [r["round"] for r in res.metrics] == list(range(1, 31))
    # per epoch: 3 parties × 455 rows × 2 logits × 4 bytes, plus headers and test rows
    assert res.metrics[0]["bytes_up"] > 3 * (N_TRAIN + 114) * 2 * 4
    assert res.metrics[0]["bytes_down"] > 3 * N_TRAIN * 2 * 4


def test_split_nn_learns(data):
    res = _train(data, model="split_nn", epochs=10)
    assert res.metrics[-1]["test_accuracy"] > 0.9


def _sign_attack(res, y):
    """Vertical LR: ∂L/∂e_k = (softmax − onehot(y))/B, so the sign of column 1 is −y."""
    accs = [((g[:, 1] < 0).astype(int) == y[rows]).mean() for rows, g in res.gradients["p0"]]
    return float(np.mean(accs))


def _direction_attack(res, y):
    """Split NN: gradients of one class point one way (Li et al., ICLR 2022, cosine
    attack); split each batch along its first principal direction (up to a flip)."""
    accs = []
    for rows, g in res.gradients["p0"]:
        guess = (g @ np.linalg.svd(g, full_matrices=False)[2][0] > 0).astype(int)
        acc = float((guess == y[rows]).mean())
        accs.append(max(acc, 1 - acc))
    return float(np.mean(accs))


@pytest.mark.parametrize("model,attack", [("logreg", _sign_attack),
                                          ("split_nn", _direction_attack)])
def test_label_inference_from_gradients_without_and_with_label_dp(data, model, attack):
    _, y, _ = data
    plain = _train(data, model=model, epochs=3, keep_gradients=True)
    assert attack(plain, y) > 0.97  # a feature party reads the labels off the gradients
    eps = 0.5
    protected = _train(data, model=model, epochs=3, keep_gradients=True,
                       label_dp_epsilon=eps)
    # the gradients are post-processing of ỹ: no attack beats P(ỹ = y) by more than noise
    assert attack(protected, y) < keep_probability(eps, 2) + 0.06


def test_randomized_response_keeps_labels_at_the_stated_rate():
    y = np.random.default_rng(1).integers(0, 10, 200_000)
    noisy = randomized_response(y, 10, 2.0, SeededNoise(3))
    assert abs((noisy == y).mean() - keep_probability(2.0, 10)) < 0.005
    flipped = noisy[noisy != y] - y[noisy != y]
    assert np.isin(flipped % 10, np.arange(1, 10)).all()
    assert np.bincount((flipped % 10), minlength=10)[1:].min() > 0.9 * len(flipped) / 9 * 0.9


def test_feature_reconstruction_from_activations_without_and_with_cut_layer_dp(data):
    """The label party (knowing half the test rows' features) fits a linear decoder from
    a feature party's activations to its features and tries it on the other half."""
    x, _, _ = data
    r2 = {}
    for dp in (None, (1.0, 1.0, 1e-5)):
        seen: list[bytes] = []

        def relay(src, dst, kind, msg, seen=seen):
            if kind == "activations" and src == "p0":
                seen.append(msg)
            return msg

        res = _train(data, model="split_nn", epochs=5, cut=8, cut_dp=dp, relay=relay)
        acts = np.frombuffer(seen[-1], "<f4", offset=m.HEADER.size).reshape(-1, 8)
        cols = x[N_TRAIN:, :10]
        h = len(acts) // 2
        r2[dp is None] = np.mean([Ridge(1.0).fit(acts[:h], cols[:h, j]).score(
            acts[h:], cols[h:, j]) for j in range(10)])
        if dp is not None:
            acct = PrivacyAccountant(1e-5)
            acct.compose(RoundEvent("gaussian", sampling="none", noise_multiplier=1.0), 5)
            assert res.epsilon == pytest.approx(acct.epsilons().epsilon)
            assert [r["epsilon"] for r in res.metrics] == sorted(
                r["epsilon"] for r in res.metrics)
    assert r2[True] > 0.4 and r2[False] < 0.1


def _expect(**kw):
    base = dict(kind=m.ACTIVATIONS, session=b"s" * 16, party=1, epoch=2, batch=3, rows=4,
                cols=2)
    return m.Expect(**{**base, **kw})


def test_activation_and_gradient_messages_round_trip():
    v = np.arange(8, dtype=np.float32).reshape(4, 2)
    msg = m.encode(m.ACTIVATIONS, b"s" * 16, 1, 2, 3, v)
    assert np.array_equal(m.decode(msg, _expect()), v)


@pytest.mark.parametrize("case", ["truncated", "magic", "kind", "session", "party",
                                  "replayed_batch", "shape", "length", "nan", "huge",
                                  "not_bytes"])
def test_malformed_split_messages_are_refused(case):
    v = np.ones((4, 2), np.float32)
    good = m.encode(m.ACTIVATIONS, b"s" * 16, 1, 2, 3, v)
    bad_v = v.copy()
    bad_v[0, 0] = np.nan if case == "nan" else 1e9
    msg, exp = {
        "truncated": (good[:10], _expect()),
        "magic": (b"XXXX" + good[4:], _expect()),
        "kind": (good, _expect(kind=m.GRADIENTS)),
        "session": (good, _expect(session=b"t" * 16)),
        "party": (good, _expect(party=2)),
        "replayed_batch": (good, _expect(batch=4)),
        "shape": (good, _expect(rows=5)),
        "length": (good + b"\0\0\0\0", _expect()),
        "nan": (m.encode(m.ACTIVATIONS, b"s" * 16, 1, 2, 3, bad_v), _expect()),
        "huge": (m.encode(m.ACTIVATIONS, b"s" * 16, 1, 2, 3, bad_v), _expect()),
        "not_bytes": ("text", _expect()),
    }[case]
    with pytest.raises(m.MessageError):
        m.decode(msg, exp)  # type: ignore[arg-type]


def test_a_tampering_relay_stops_training():
    rng = np.random.default_rng(0)
    parts = [PartyColumns("a", rng.normal(size=(40, 3)).astype(np.float32),
                          rng.normal(size=(10, 3)).astype(np.float32))]

    def relay(src, dst, kind, msg):
        return msg[:-4] if kind == "gradients" else msg

    with pytest.raises(m.MessageError):
        train_split(SplitSetup(epochs=1, noise="seeded"), parts, rng.integers(0, 2, 40),
                    rng.integers(0, 2, 10), 2, relay=relay)
