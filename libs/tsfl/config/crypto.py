"""Cryptographic aggregation: CKKS HE and SecAgg+."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tsfl.config.base import PositiveFloat, Spec


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
