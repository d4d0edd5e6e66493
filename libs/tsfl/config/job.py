"""The job spec: every section, and the rules that cross sections."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import Field, model_validator

from tsfl.config import compat
from tsfl.config.base import MAX_ROUNDS, Spec
from tsfl.config.compression import CompressionSpec
from tsfl.config.crypto import CryptoSpec
from tsfl.config.data import ClientsSpec, DataSpec, ModelSpec
from tsfl.config.privacy import PrivacySpec
from tsfl.config.robust import AttackSpec, RobustSpec
from tsfl.config.selection import SelectionSpec
from tsfl.config.training import (
    EvaluationSpec,
    RoundSpec,
    SimulationSpec,
    StrategySpec,
    TrainingSpec,
)
from tsfl.config.vertical import VerticalSpec


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
    vertical: VerticalSpec | None = Field(
        None, description="vertical FL: parties holding columns of the same entities")
    selection: SelectionSpec = SelectionSpec()

    @property
    def seeded_privacy(self) -> list[str]:
        """The spec keys that ask for reproducible, server-predictable DP randomness
        (``noise: seeded``): simulation only — the distributed coordinator refuses them."""
        keys = []
        if self.privacy.mode != "none" and self.privacy.noise == "seeded":
            keys.append("privacy.noise")
        if self.training.dp_sgd is not None and self.training.dp_sgd.noise == "seeded":
            keys.append("training.dp_sgd.noise")
        v = self.vertical
        if v is not None and (v.cut_dp or v.label_dp) and v.noise == "seeded":
            keys.append("vertical.noise")
        return keys

    @property
    def private(self) -> bool:
        """Whether the job claims differential privacy (central, local or DP-SGD)."""
        return self.privacy.mode != "none" or self.training.dp_sgd is not None

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        from tsfl.config.rules import check_async, check_selection

        check_selection(self)
        check_async(self)
        if self.vertical is not None:
            self.vertical.check_job(self)
        c = self.crypto.mode
        if self.evaluation.federated == "on" and (self.private or c != "none"):
            raise ValueError(
                "evaluation.federated 'on' with "
                + ("differential privacy" if self.private else f"crypto.mode {c!r}")
                + ": each device's evaluation (its loss on its own data) would reach the "
                "server in the clear, outside the privacy guarantee; use 'auto' or 'off'")
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
                compat.check_he(self)
            else:
                compat.check_secagg(self)
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

    def sha256(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
