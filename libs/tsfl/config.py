"""The job specification: a YAML file validated by pydantic.

Every problem is reported as one line naming the field, e.g.::

    training.lr: Input should be greater than 0
    strategy.nme: unknown key
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tsfl.errors import TsflError
from tsfl.spec_yaml import MAX_SPEC_BYTES, SpecYamlError, load_spec_text

#: bounds checked before anything is built or stored (a spec is untrusted input)
MAX_CLIENTS = 1_000_000
MAX_ROUNDS = 1_000_000
MAX_SPEC_FILE_BYTES = MAX_SPEC_BYTES

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartitionSpec(Spec):
    """How the training set is split across clients (ignored for ``synthetic``)."""

    kind: Literal["iid", "dirichlet", "shards"] = "dirichlet"
    alpha: PositiveFloat = Field(0.5, description="Dirichlet concentration (label skew).")
    shards_per_client: PositiveInt = 2
    min_examples: Annotated[int, Field(ge=1)] = 2


class SyntheticSpec(Spec):
    """Li et al. (FedProx, MLSys 2020) Synthetic(α, β) generator."""

    alpha: Annotated[float, Field(ge=0)] = 1.0
    beta: Annotated[float, Field(ge=0)] = 1.0
    dim: Annotated[int, Field(gt=0, le=100_000)] = 60
    classes: Annotated[int, Field(ge=2, le=10_000)] = 10
    iid: bool = False
    mean_samples: PositiveFloat = Field(4.0, description="log-normal mean of samples/client")
    sigma_samples: Annotated[float, Field(ge=0)] = 2.0
    min_samples: Annotated[int, Field(gt=0, le=1_000_000)] = 50
    max_samples: Annotated[int, Field(gt=0, le=1_000_000)] = 2000


class DataSpec(Spec):
    dataset: Literal["digits", "breast_cancer", "synthetic", "npz", "csv"] = "digits"
    path: str | None = Field(None, description="file for npz/csv datasets")
    label_column: str | None = Field(None, description="csv label column (default: last)")
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: Annotated[int, Field(ge=0)] = 0
    partition: PartitionSpec = PartitionSpec()
    synthetic: SyntheticSpec = SyntheticSpec()

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.dataset in ("npz", "csv") and not self.path:
            raise ValueError(f"dataset {self.dataset!r} needs data.path")
        if self.dataset not in ("npz", "csv") and self.path:
            raise ValueError(f"data.path is only for npz/csv, not {self.dataset!r}")
        if self.label_column is not None and self.dataset != "csv":
            raise ValueError("data.label_column is only for csv datasets")
        return self


class ClientsSpec(Spec):
    count: Annotated[int, Field(gt=0, le=MAX_CLIENTS)] = 100
    per_round: Annotated[int, Field(gt=0, le=MAX_CLIENTS)] = 10

    @model_validator(mode="after")
    def _check(self) -> ClientsSpec:
        if self.per_round > self.count:
            raise ValueError(f"per_round ({self.per_round}) exceeds count ({self.count})")
        return self


class ModelSpec(Spec):
    kind: Literal["mlp", "cnn", "logreg", "custom"] = "mlp"
    hidden: Annotated[list[Annotated[int, Field(gt=0, le=65_536)]], Field(max_length=64)] = (
        Field(default_factory=lambda: [64, 64]))
    builder: str | None = Field(None, description="kind=custom: a model builder the operator "
                                "installed (entry point group tsfl.models; `tsfl models`)")
    factory: str | None = Field(None, description="kind=custom, tsfl run only: "
                                "'package.module:function' (an import: never on a server)")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.kind == "custom":
            if (self.builder is None) == (self.factory is None):
                raise ValueError("model.kind=custom needs model.builder (an installed model "
                                 "builder: `tsfl models`) or, for tsfl run only, "
                                 "model.factory as 'package.module:func'")
            if self.factory is not None and ":" not in self.factory:
                raise ValueError("model.factory must look like 'package.module:func'")
        elif self.factory or self.builder:
            raise ValueError("model.builder and model.factory are only for model.kind=custom")
        return self


class DpSgdSpec(Spec):
    """Record-level DP-SGD in each client's local training (Abadi et al., CCS 2016)."""

    noise_multiplier: PositiveFloat = Field(description="noise std / max_grad_norm")
    max_grad_norm: PositiveFloat = Field(description="per-record gradient L2 bound")
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    noise: Literal["seeded", "secure"] = Field(
        "secure", description="secure: each device's CSPRNG draws its noise and batches; "
                              "seeded: reproducible simulation, not private (tsfl run only)")


class TrainingSpec(Spec):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 16
    dp_sgd: DpSgdSpec | None = Field(None, description="record-level DP-SGD on every client")


_STRATEGY_OPTIONS: dict[str, set[str]] = {
    "fedavg": {"server_lr"},
    "fedprox": {"server_lr", "mu"},
    "fedavgm": {"server_lr", "momentum"},
    "fedadam": {"server_lr", "beta1", "beta2", "tau", "bias_correction"},
    "fedyogi": {"server_lr", "beta1", "beta2", "tau", "bias_correction"},
    "fedadagrad": {"server_lr", "beta1", "tau", "bias_correction"},
}


class StrategySpec(Spec):
    name: Literal["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad"] = "fedavg"
    server_lr: PositiveFloat | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None
    mu: Annotated[float, Field(ge=0)] | None = None
    beta1: Annotated[float, Field(ge=0, lt=1)] | None = None
    beta2: Annotated[float, Field(ge=0, lt=1)] | None = None
    tau: PositiveFloat | None = None
    bias_correction: bool | None = None


    @model_validator(mode="after")
    def _check(self) -> StrategySpec:
        given = {k for k in type(self).model_fields if k != "name" and getattr(self, k) is not None}
        wrong = sorted(given - _STRATEGY_OPTIONS[self.name])
        if wrong:
            raise ValueError(f"option(s) {', '.join(wrong)} do not apply to strategy {self.name!r}")
        return self

    def params(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in type(self).model_fields
            if k != "name" and getattr(self, k) is not None
        }


class RoundSpec(Spec):
    quorum: Fraction = Field(1.0, description="fraction of the cohort that closes a round early")
    min_updates: PositiveInt = 1
    deadline_s: PositiveFloat = 600.0
    max_update_norm: PositiveFloat | None = Field(
        None, description="refuse updates with a larger L2 norm (default: norm_bound_factor "
                          "× the previous round's median, and never above 1e4·√parameters)")
    norm_bound_factor: Annotated[float, Field(gt=1)] = 100.0


class EvaluationSpec(Spec):
    every: PositiveInt = 1
    batch_size: PositiveInt = 1024
    server: bool = Field(True, description=(
        "distributed deployment: the coordinator evaluates each released model on the "
        "dataset's held-out split (built-in datasets, or files in its data directory)"))


class AdaptiveClippingSpec(Spec):
    """Andrew et al. (2021) quantile-tracking clip norm; ``clip_norm`` is its start."""

    target_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.5
    learning_rate: PositiveFloat = 0.2
    count_stddev: PositiveFloat | None = Field(
        None, description="σ_b of the noised clipped count (default: expected cohort / 20)")


class PrivacySpec(Spec):
    """Differential privacy. ``mode: central`` clips on the server and noises the
    aggregate; ``local`` clips and noises on each device before upload."""

    mode: Literal["none", "central", "local"] = "none"
    mechanism: Literal["gaussian", "laplace", "staircase"] = "gaussian"
    clip_norm: PositiveFloat | None = Field(None, description="L2 (gaussian), L1 (laplace) "
                                            "or per-coordinate (staircase) bound")
    adaptive_clipping: AdaptiveClippingSpec | None = None
    noise_multiplier: PositiveFloat | None = Field(
        None, description="noise std (or Laplace scale) / sensitivity; calibrated from "
                          "target_epsilon over all rounds when omitted")
    epsilon_per_round: PositiveFloat | None = Field(
        None, description="the staircase's per-coordinate ε for each round")
    target_epsilon: PositiveFloat | None = Field(None, description="the budget; the job "
                                                 "stops with BUDGET_EXHAUSTED before exceeding it")
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    sampling: Literal["poisson", "fixed"] = "poisson"
    noise: Literal["seeded", "secure"] = Field(
        "secure", description="secure: a CSPRNG (noise, cohorts, device sampling); seeded: "
                              "reproducible simulation, not private (tsfl run only)")
    accounting_interval: Annotated[float, Field(ge=1e-6, le=1e-2)] = Field(
        1e-3, description="the PLD accountant's loss discretization: a pessimistic grid "
                          "(ε is an upper bound); 1e-4 is dp-accounting's default, ~20× "
                          "slower per round for a difference below 1e-4 relative")

    @model_validator(mode="before")
    @classmethod
    def _ranges(cls, data: Any) -> Any:
        # Say what a privacy reviewer would, not pydantic's generic bound messages.
        if isinstance(data, dict):
            d, e = data.get("delta"), data.get("target_epsilon")
            if isinstance(d, int | float) and not 0 < d < 1:
                raise ValueError(f"delta must be in (0, 1), got {d}: a δ ≥ 1 "
                                 "promises nothing")
            if isinstance(e, int | float) and e <= 0:
                raise ValueError(f"target_epsilon must be > 0, got {e}")
        return data

    @model_validator(mode="after")
    def _check(self) -> PrivacySpec:
        if self.mode == "none":
            given = [k for k in ("clip_norm", "noise_multiplier", "target_epsilon",
                                 "adaptive_clipping", "epsilon_per_round")
                     if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{given[0]} is set but mode is 'none'")
            return self
        if self.clip_norm is None:
            raise ValueError("noise without clipping bounds nothing: clip_norm is "
                             f"required with mode {self.mode!r}")
        if self.mechanism == "staircase":
            if self.epsilon_per_round is None:
                raise ValueError("the staircase mechanism needs epsilon_per_round")
            if self.noise_multiplier is not None:
                raise ValueError("noise_multiplier does not apply to the staircase "
                                 "(it is set by epsilon_per_round)")
        else:
            if self.epsilon_per_round is not None:
                raise ValueError("epsilon_per_round is only for the staircase")
            if self.noise_multiplier is None and self.target_epsilon is None:
                raise ValueError("DP needs noise_multiplier or target_epsilon (to "
                                 "calibrate the noise)")
        if self.adaptive_clipping is not None and (self.mode != "central"
                                                   or self.mechanism != "gaussian"):
            raise ValueError("adaptive clipping is for central DP with the gaussian "
                                 "mechanism")
        if self.mode == "central" and self.sampling == "fixed" and self.mechanism != "gaussian":
            raise ValueError(f"fixed-size sampling is accounted for the gaussian mechanism "
                             f"only (RDP, replace-one); use sampling: poisson with "
                             f"{self.mechanism}")
        return self


class NetworkSpec(Spec):
    """Simulated device links: per-device bandwidth ~ log-normal, a fixed latency."""

    bandwidth_mbps: PositiveFloat = Field(8.0, description="median uplink bandwidth, Mbit/s")
    bandwidth_sigma: Annotated[float, Field(ge=0, le=3)] = Field(
        1.0, description="log-normal sigma of the per-device bandwidth")
    latency_ms: Annotated[float, Field(ge=0)] = 50.0


class SimulationSpec(Spec):
    torch_threads: Annotated[int, Field(gt=0, le=256)] = 1
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="fraction of each round's cohort that vanishes mid-round (seeded; "
                         "with secagg at a random protocol stage)")
    network: NetworkSpec | None = Field(None, description=(
        "simulate link speeds: transfers are timed as bytes / bandwidth + latency (no "
        "sleeping), which feeds the per-device bandwidth estimates of adaptive compression"))
    batched: Literal["auto", "off"] = Field("auto", exclude=True, description=(
        "auto: train each round's cohort in one vectorised call where the model and "
        "training allow it (same results as one client at a time); off: one at a time. "
        "Not part of the job's identity (its hash and id): it changes no result"))


class UplinkSpec(Spec):
    """The codec chain devices encode their updates with: [sparsifier] values [lossless]."""

    chain: list[str] = Field(default_factory=lambda: ["f32"], description=(
        "e.g. [topk, q8, zstd]; sparsifiers topk|randk, values f32|q8|q4|q2|qsgd, "
        "lossless zstd|lz4"))
    ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        0.01, description="topk/randk: fraction of coordinates sent")
    block: Annotated[int, Field(ge=8, le=1 << 20, multiple_of=8)] = Field(
        256, description="values per quantization block (one scale each)")
    levels: Annotated[int, Field(ge=1, le=127)] = Field(16, description="QSGD levels s")
    error_feedback: bool = Field(True, description=(
        "devices keep what compression dropped and add it to their next update"))

    @model_validator(mode="after")
    def _check(self) -> UplinkSpec:
        from tsfl.compress import CodecChain, CodecError

        try:
            CodecChain.parse(self.chain)
        except CodecError as exc:
            raise ValueError(str(exc)) from None
        return self


class AdaptiveCompressionSpec(Spec):
    """Per-device codec strength from its measured bandwidth, to meet the round deadline."""

    deadline_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="an upload should fit in this share of round.deadline_s")
    min_ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        0.01, description="the accuracy budget: never keep fewer coordinates than this")


class CompressionSpec(Spec):
    uplink: UplinkSpec = UplinkSpec()
    downlink: Literal["full", "delta"] = Field("full", description=(
        "delta: a device that holds an earlier model gets new XOR old, shuffled + zstd "
        "(lossless)"))
    skip_below: Annotated[float, Field(ge=0)] = Field(0.0, description=(
        "a device whose ‖update + residual‖ / ‖model‖ is below this skips its upload and "
        "says so"))
    adaptive: AdaptiveCompressionSpec | None = None


RobustRule = Literal["none", "krum", "multikrum", "bulyan", "median", "trimmed_mean",
                     "norm_bounding", "fltrust", "wfagg"]
AttackKind = Literal["none", "sign_flip", "scaling", "gaussian", "alie", "ipm", "label_flip",
                     "backdoor"]
ROBUST_AGGREGATORS: tuple[str, ...] = get_args(RobustRule)
ATTACKS: tuple[str, ...] = get_args(AttackKind)


class RobustSpec(Spec):
    """Byzantine-robust aggregation (the byzantine stage's rule) and anomaly alerts."""

    aggregator: RobustRule = "none"
    num_malicious: Annotated[int, Field(ge=0)] = Field(
        0, description="f: the Byzantine clients a round is assumed to hold")
    to_keep: PositiveInt | None = Field(None, description="multikrum: updates kept (n − f)")
    beta: Annotated[float, Field(ge=0, lt=0.5)] = Field(0.1, description="trimmed_mean cut")
    max_norm: PositiveFloat | None = Field(None, description="norm_bounding: L2 bound")
    root_examples: PositiveInt = Field(100, description="fltrust: the server's root dataset")
    wfagg: dict[str, float] = Field(default_factory=dict, description=(
        "WFAgg options: threshold, band_k, band_ratio, ema, min_history, smoothing"))
    alert_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.1, description="alert when more than this fraction of a round is flagged")
    reputation_threshold: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.3, description="refuse clients whose reputation (EMA of their acceptance) is "
                         "below; 0 disables")
    reputation_ema: Annotated[float, Field(gt=0, le=1)] = 0.4
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        0.0, description="refuse updates whose cosine to the round's median is below "
                         "(null disables)")
    max_norm_ratio: Annotated[float, Field(gt=1)] | None = Field(
        3.0, description="refuse updates larger than this × the round's median norm "
                         "(null disables)")

    @model_validator(mode="after")
    def _check(self) -> RobustSpec:
        if self.aggregator == "norm_bounding" and self.max_norm is None:
            raise ValueError("norm_bounding needs max_norm")
        unknown = set(self.wfagg) - {"threshold", "band_k", "band_ratio", "ema",
                                     "min_history", "smoothing"}
        if unknown:
            raise ValueError(f"unknown wfagg option(s): {sorted(unknown)}")
        return self


class AttackSpec(Spec):
    """Simulated Byzantine clients (simulation only: real devices are who they are)."""

    kind: AttackKind = "none"
    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    collude: bool = Field(True, description="attackers share their honest updates (ALIE, "
                                            "IPM estimate the benign statistics from them)")
    scale: PositiveFloat = Field(10.0, description="scaling: factor; gaussian: noise std")
    epsilon: PositiveFloat = Field(0.5, description="IPM: −ε × the benign mean")
    z: PositiveFloat | None = Field(None, description="ALIE: std multiplier (default from n, f)")
    target_label: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check(self) -> AttackSpec:
        if (self.kind == "none") != (self.fraction == 0):
            raise ValueError("attacks.kind and attacks.fraction go together: a kind needs "
                             "a fraction > 0 and a fraction needs a kind")
        return self


class HeSpec(Spec):
    """HE (``crypto.mode: he``): what must stay precise, which coordinates to hide, and
    who can decrypt.

    Devices send ``(n_k / weight_unit) · θ_k`` for the encrypted coordinates (θ_k: the
    locally trained model, n_k: its examples), signed with their identity key; the he
    service only adds ciphertexts; the silos decrypt the sum and divide by
    Σ n_k / weight_unit — together (``keying: threshold``: t of them, through the server,
    which learns nothing) or each alone (``keying: shared``: one key all silos hold).
    """

    keying: Literal["threshold", "shared"] = Field(
        "threshold", description="threshold: a collective key, t-of-n silos open each sum; "
                                 "shared: one CKKS key every silo holds (trusted silos)")
    threshold: Annotated[int, Field(ge=2)] | None = Field(
        None, description="threshold keying: silos needed to open a sum (default: a "
                          "majority of clients.count, every client being a silo)")
    flooding: Literal["fixed", "statistical"] = Field(
        "fixed", description="threshold keying: flooding noise of a partial decryption "
                             "(fixed: 2^20, 4x float32; statistical: 2^-40, more primes)")
    authority: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] | None = Field(
        None, description="identity authorities (Ed25519 public keys, hex) whose "
                          "certificates sign sections; tsfl run makes one per run")
    stage_timeout_s: PositiveFloat = Field(
        60.0, description="threshold keying: a key-ceremony step, a round's commitments "
                          "and an opening step wait this long for silos")

    precision: Annotated[float, Field(gt=0, le=0.1)] = Field(
        1e-6, description="the largest absolute decryption error of the round's sum")
    value_bound: PositiveFloat = Field(
        1e4, description="|Σ_k (n_k / weight_unit) · θ_k| per coordinate stays below this")
    weight_unit: PositiveFloat = Field(
        100.0, description="examples that count as weight 1 (keeps the sum in range)")
    security: Literal[128, 192, 256] = 128
    poly_degree: Literal[2048, 4096, 8192, 16384, 32768] | None = Field(
        None, description="CKKS ring dimension N (default 8192, or the smallest secure)")
    layers: list[str] | None = Field(None, description="encrypt only these tensors")
    regex: str | None = Field(None, description="encrypt tensors whose name matches")
    fraction: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="encrypt this fraction of the coordinates, most sensitive first "
                          "(output layer, then input layer)")
    key_id: str | None = Field(
        None, description="the key set (tsfl keys init); tsfl run makes one per job")

    @property
    def selective(self) -> bool:
        return bool(self.layers) or self.regex is not None or self.fraction is not None


class SecAggSpec(Spec):
    """SecAgg+ (``crypto.mode: secagg``): devices send ``(n_k / weight_unit) · Δ_k``
    clipped to ±clip, quantized to ``quant_bits`` and masked, their example count and
    metrics inside the masked vector; the server learns the sums. The graph degree k and
    the threshold t follow from the threat model (corruption γ, dropout δ, security σ;
    Bell et al. 2020, :mod:`tsfl.secagg.params`), and every device checks them."""

    clip: PositiveFloat = Field(1.0, description="each weighted coordinate is clipped here")
    quant_bits: Annotated[int, Field(ge=4, le=32)] = Field(
        20, description="levels per coordinate: 2^quant_bits − 1 (stochastic rounding)")
    weight_unit: PositiveFloat = Field(100.0, description="examples that count as weight 1")
    corruption: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.05, description="γ: the fraction of a cohort that may collude with the server "
                          "(devices refuse less than their own floor, 0.05 by default)")
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.1, description="δ: the fraction of a cohort that may drop out; a round keeping "
                         "fewer than ⌈(1 − δ)n⌉ clients aborts")
    security_bits: Annotated[int, Field(ge=20, le=128)] = Field(
        40, description="σ: each bad event of the graph (a neighbourhood the server can "
                        "open, a disconnected graph, too few survivors) has probability "
                        "≤ 2^−σ")
    threshold_fraction: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None, description="raise the Shamir threshold above this fraction of a "
                          "neighbourhood (≥ 0.5; the threshold derived from γ, δ, σ is the "
                          "floor)")
    key_agreement: Literal["x25519", "x25519+mlkem768"] = Field(
        "x25519", description="share encryption: X25519, or hybrid X25519 + ML-KEM-768 "
                              "(post-quantum)")
    metrics: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                       Field(max_length=16)] = Field(
        ["train_loss"], description="device metrics summed inside the masked vector "
                                    "(example-weighted); others are not sent")
    metric_clip: PositiveFloat = Field(1000.0, description="each metric is clipped to ±this")
    stage_timeout_s: PositiveFloat = Field(
        30.0, description="a stage ends when every expected device spoke or after this")


class CryptoSpec(Spec):
    """Cryptographic aggregation: the server side sees only an encrypted (``he``, CKKS)
    or masked (``secagg``, SecAgg+) sum, never an update."""

    mode: Literal["none", "he", "secagg"] = "none"
    he: HeSpec = HeSpec()
    secagg: SecAggSpec = SecAggSpec()


class JobSpec(Spec):
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    rounds: Annotated[int, Field(gt=0, le=MAX_ROUNDS)] = 50
    target_accuracy: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="stop early once central test accuracy reaches this"
    )
    data: DataSpec = DataSpec()
    clients: ClientsSpec = ClientsSpec()
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    strategy: StrategySpec = StrategySpec()
    round: RoundSpec = RoundSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    simulation: SimulationSpec = SimulationSpec()
    privacy: PrivacySpec = PrivacySpec()
    robust: RobustSpec = RobustSpec()
    attacks: AttackSpec = AttackSpec()
    crypto: CryptoSpec = CryptoSpec()
    compression: CompressionSpec = CompressionSpec()

    @property
    def seeded_privacy(self) -> list[str]:
        """The spec keys that ask for reproducible, server-predictable DP randomness
        (``noise: seeded``): simulation only — the distributed coordinator refuses them."""
        keys = []
        if self.privacy.mode != "none" and self.privacy.noise == "seeded":
            keys.append("privacy.noise")
        if self.training.dp_sgd is not None and self.training.dp_sgd.noise == "seeded":
            keys.append("training.dp_sgd.noise")
        return keys

    @property
    def private(self) -> bool:
        """Whether the job claims differential privacy (central, local or DP-SGD)."""
        return self.privacy.mode != "none" or self.training.dp_sgd is not None

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        c = self.crypto.mode
        if c != "none":
            hidden = ("the he service adds ciphertexts" if c == "he"
                      else "the server unmasks only the cohort's sum")
            if self.robust.aggregator != "none":
                raise ValueError(
                    f"robust.aggregator {self.robust.aggregator!r} with crypto.mode {c!r}: a "
                    f"robust rule judges each update, and {hidden}, so no update is ever in "
                    "the clear; drop the robust rule, or use crypto.mode none")
            if self.privacy.mode == "central":
                raise ValueError(
                    f"privacy.mode central with crypto.mode {c!r}: the server cannot clip "
                    f"updates it cannot read ({hidden}); clip on the device instead "
                    "(privacy.mode local)")
            self._check_server_side(c)
            if c == "he":
                self._check_he()
            else:
                self._check_secagg()
        r, n = self.robust, self.clients.per_round
        if r.aggregator != "none" and 2 * r.num_malicious >= n:
            raise ValueError(f"robust.num_malicious ({r.num_malicious}) must be below half "
                             f"of clients.per_round ({n})")
        if r.aggregator == "bulyan" and n < 4 * r.num_malicious + 3:
            raise ValueError(f"bulyan needs clients.per_round ≥ 4·num_malicious + 3 "
                             f"({4 * r.num_malicious + 3}), got {n}")
        if r.aggregator == "norm_bounding" and self.privacy.mode == "central":
            crossing = [k for k, off in (("min_cosine", None), ("max_norm_ratio", None),
                                         ("reputation_threshold", 0.0))
                        if getattr(r, k) != off]
            if crossing:
                raise ValueError(
                    f"robust.{', robust.'.join(crossing)} with central DP: these filters "
                    "judge an update against the round's others (or its past), so one "
                    "client's presence can refuse several and the released sum moves by "
                    "more than the clip norm the ledger charges; set min_cosine: null, "
                    "max_norm_ratio: null, reputation_threshold: 0 (norm_bounding alone is "
                    "per-update)")
        if (r.aggregator not in ("none", "norm_bounding")
                and self.privacy.mode == "central"):
            raise ValueError(
                f"robust.aggregator {r.aggregator!r} with central DP: selecting or reweighting "
                "updates changes the sensitivity the privacy ledger charges for; use "
                "norm_bounding (or the clip norm alone) with central DP, or local DP "
                "(devices clip and noise) with a robust aggregator")
        if self.model.kind == "cnn" and self.data.dataset != "digits":
            raise ValueError(
                f"model.kind=cnn needs image data (digits), not {self.data.dataset!r}"
            )
        if self.round.min_updates > self.clients.per_round:
            raise ValueError(
                f"round.min_updates ({self.round.min_updates}) exceeds "
                f"clients.per_round ({self.clients.per_round})"
            )
        return self

    def _check_secagg(self) -> None:
        from tsfl.secagg.params import derive
        from tsfl.secagg.ring import RingSpec

        s, n = self.crypto.secagg, self.clients.per_round
        if n < 3:
            raise ValueError("crypto.mode 'secagg' needs clients.per_round ≥ 3: with "
                             "fewer, the sum of the others reveals each update")
        if s.threshold_fraction is not None and s.threshold_fraction < 0.5:
            raise ValueError(
                f"crypto.secagg.threshold_fraction {s.threshold_fraction} makes the Shamir "
                "threshold t ≤ k/2: a server that splits the unmask request (some neighbours "
                "asked for b_u, the others for s_u) rebuilds both secrets of a client and "
                "its input; use at least 0.5, or leave it unset (t is derived from "
                "corruption, dropout and security_bits)")
        if self.simulation.dropout > s.dropout:
            raise ValueError(
                f"simulation.dropout {self.simulation.dropout} exceeds "
                f"crypto.secagg.dropout {s.dropout}: devices abort a round that keeps "
                "fewer than ⌈(1 − δ)n⌉ clients; raise crypto.secagg.dropout")
        try:
            RingSpec(s.clip, s.quant_bits, n)
            derive(n, s.corruption, s.dropout, s.security_bits, None, s.threshold_fraction)
        except ValueError as exc:
            raise ValueError(f"crypto.secagg: {exc}") from None

    def _check_server_side(self, mode: str) -> None:
        if mode == "secagg":
            if self.compression.uplink.chain != ["f32"] or self.compression.skip_below:
                raise ValueError("compression.uplink with crypto.mode 'secagg': masked "
                                 "updates are ring elements that do not compress; use "
                                 "chain [f32]")
            return
        name = self.strategy.name
        if name not in ("fedavg", "fedprox") or (self.strategy.server_lr or 1.0) != 1.0:
            raise ValueError(
                f"strategy {name!r}"
                + (f" with server_lr {self.strategy.server_lr}" if name in ("fedavg",
                                                                             "fedprox") else "")
                + " with crypto.mode 'he': a server optimizer steps on the model, which the "
                "server only holds encrypted; use fedavg (or fedprox) with server_lr 1")

    def _check_he(self) -> None:
        from tsfl.he import HeError, choose_params

        if self.compression.downlink == "delta":
            raise ValueError("compression.downlink 'delta' with crypto.mode 'he': the "
                             "encrypted part of the model changes entirely each round; use "
                             "downlink full")
        h = self.crypto.he
        try:
            if h.keying == "shared":
                choose_params(h.precision, h.value_bound, self.clients.per_round,
                              security=h.security, poly_degree=h.poly_degree)
                return
            from tsfl.he.job import threshold_params

            if h.threshold is not None and h.threshold > self.clients.count:
                raise HeError("params", f"threshold {h.threshold} exceeds the "
                                        f"{self.clients.count} silos (clients.count)")
            threshold_params(self)
        except HeError as exc:
            raise ValueError(f"crypto.he: {exc}") from None

    def sha256(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class ConfigError(TsflError):
    """A job spec is invalid; ``problems`` holds one readable line per issue."""

    def __init__(self, problems: list[str], source: str = "job spec"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


def parse_job(data: Any, source: str = "job spec",
              overrides: dict[str, Any] | None = None) -> JobSpec:
    """Validate a mapping (already parsed YAML) into a :class:`JobSpec`."""
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], source)
    if overrides:
        data = {**data, **overrides}
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc), source) from None


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a YAML job spec file (or a bundled example, by name)."""
    try:
        path = find_job_file(path)
    except FileNotFoundError as exc:
        raise ConfigError([str(exc)], str(path)) from None
    try:
        if path.stat().st_size > MAX_SPEC_FILE_BYTES:
            raise ConfigError([f"the file is larger than {MAX_SPEC_FILE_BYTES} bytes: not a "
                               "job spec"], str(path))
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["the file is not UTF-8 text"], str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read file: {exc.strerror or exc}"], str(path)) from None
    return parse_job(parse_spec_text(text, str(path)), str(path), overrides)


def parse_spec_text(text: str | bytes, source: str | None = None) -> Any:
    """The YAML of a spec, read within :mod:`tsfl.spec_yaml`'s bounds (size, aliases,
    depth); :class:`ConfigError` otherwise."""
    try:
        return load_spec_text(text)
    except SpecYamlError as exc:
        raise ConfigError([str(exc)], source) from None


def bundled_example(name: str = "digits-fedavg") -> Path:
    return Path(__file__).parent / "examples" / f"{name}.yaml"


def bundled_examples() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "examples").glob("*.yaml"))


def find_job_file(name: str | Path) -> Path:
    """A job spec by path, or a bundled example by bare name (``digits-dp``, from any
    directory); FileNotFoundError naming the examples for an unknown bare name."""
    path = Path(name)
    text = str(name)
    if path.is_file() or "/" in text or "\\" in text or path.suffix in (".yaml", ".yml"):
        return path  # a path: reading it says what is wrong with it
    example = bundled_example(text)
    if example.is_file():
        return example
    raise FileNotFoundError(f"no job spec {text!r} (a file, or one of the bundled examples: "
                            f"{', '.join(bundled_examples())})")
