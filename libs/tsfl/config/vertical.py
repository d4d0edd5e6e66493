"""Vertical federated learning: parties holding different columns of the same entities
(``vertical:``; :mod:`tsfl.vertical`). The job's ``rounds`` are epochs over the aligned
entities; ``training.lr``, ``training.batch_size`` and ``training.optimizer`` apply."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tsfl.config.base import Fraction, PositiveFloat, Spec

if TYPE_CHECKING:
    from tsfl.config.job import JobSpec

MAX_PARTIES = 16
MAX_COLUMNS = 4096
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Width = Annotated[int, Field(gt=0, le=4096)]


class VerticalPartySpec(Spec):
    """One party and its columns: indices, or ``"a:b"`` ranges (b excluded)."""

    name: Name
    columns: Annotated[list[Annotated[int, Field(ge=0, lt=MAX_COLUMNS)] | str],
                       Field(max_length=MAX_COLUMNS)] = Field(default_factory=list)

    @field_validator("columns")
    @classmethod
    def _ranges(cls, cols: list[int | str]) -> list[int | str]:
        for c in cols:
            if isinstance(c, str):
                lo, sep, hi = c.partition(":")
                if not (sep and lo.isdigit() and hi.isdigit()
                        and int(lo) < int(hi) <= MAX_COLUMNS):
                    raise ValueError(f"column range {c!r} must look like 'a:b' with "
                                     f"0 ≤ a < b ≤ {MAX_COLUMNS}")
        return cols

    @property
    def indices(self) -> tuple[int, ...]:
        out: list[int] = []
        for c in self.columns:
            if isinstance(c, int):
                out.append(c)
            else:
                lo, _, hi = c.partition(":")
                out.extend(range(int(lo), int(hi)))
        return tuple(out)


class PsiSpec(Spec):
    """The private set intersection that aligns the parties (ECDH-PSI, tsfl.vertical.psi)."""

    mode: Literal["intersection", "cardinality"] = Field(
        "intersection", description="cardinality: report |intersection| only, no training")
    salt: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32,128}$")] | None = Field(
        None, description="hex per-job id-hash salt; default: derived from name and seed")
    max_items: Annotated[int, Field(gt=0, le=10_000_000)] = 2_000_000
    workers: Annotated[int, Field(ge=1, le=16)] = 1


class CutDpSpec(Spec):
    """Gaussian DP on the activations a feature party sends (clip rows, add noise)."""

    noise_multiplier: PositiveFloat
    clip: PositiveFloat = 1.0
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5


class LabelDpSpec(Spec):
    """Label DP: the label party trains on randomized-response labels."""

    epsilon: PositiveFloat


class VerticalSpec(Spec):
    label_party: Name
    parties: Annotated[list[VerticalPartySpec], Field(min_length=2, max_length=MAX_PARTIES)]
    model: Literal["logreg", "split_nn"] = "logreg"
    cut_layer: Width = Field(8, description="split_nn: activation width per feature party")
    bottom_hidden: Annotated[list[Width], Field(max_length=8)] = Field(
        default_factory=lambda: [16])
    top_hidden: Annotated[list[Width], Field(max_length=8)] = Field(
        default_factory=lambda: [16])
    overlap: Fraction = Field(1.0, description="simulation: share of entities every party "
                                               "holds (the others are held by some only)")
    psi: PsiSpec = PsiSpec()
    cut_dp: CutDpSpec | None = None
    label_dp: LabelDpSpec | None = None
    noise: Literal["seeded", "secure"] = Field(
        "secure", description="randomness of cut_dp/label_dp; seeded: simulation, not private")

    @model_validator(mode="after")
    def _check(self) -> VerticalSpec:
        names = [p.name for p in self.parties]
        if len(set(names)) != len(names):
            raise ValueError("vertical.parties: duplicate party names")
        if self.label_party not in names:
            raise ValueError(f"vertical.label_party {self.label_party!r} is not a party")
        seen: set[int] = set()
        for p in self.parties:
            idx = p.indices
            if len(idx) > MAX_COLUMNS or len(set(idx)) != len(idx):
                raise ValueError(f"vertical.parties {p.name}: repeated columns")
            if seen & set(idx):
                raise ValueError(f"vertical.parties {p.name}: columns {sorted(seen & set(idx))}"
                                 " belong to another party too")
            seen |= set(idx)
            if p.name != self.label_party and not idx:
                raise ValueError(f"vertical.parties {p.name}: a feature party needs columns")
        return self

    def check_job(self, job: JobSpec) -> None:
        """The rules that cross sections."""
        if job.data.dataset == "synthetic":
            raise ValueError("vertical: data.dataset synthetic generates clients' rows, not "
                             "columns; use breast_cancer, digits, npz or csv")
        for key, value in (("crypto.mode", job.crypto.mode), ("privacy.mode", job.privacy.mode),
                           ("robust.aggregator", job.robust.aggregator)):
            if value != "none":
                raise ValueError(f"vertical with {key} {value!r}: horizontal-only; protect a "
                                 "vertical job with vertical.cut_dp and vertical.label_dp")
        if job.training.dp_sgd is not None:
            raise ValueError("vertical with training.dp_sgd: not supported; use "
                             "vertical.cut_dp")
