"""One HE job as every party sees it: the key's public part, the encrypted coordinates
(and the clear ones), the weight unit and the identity authorities whose certificates
sign sections. Built from the job spec and the model layout, so the coordinator, the he
service, the release stage and each device derive the same.

Two keyings (``crypto.he.keying``):

- ``threshold`` (default): a collective key from a ceremony among the silos
  (:mod:`tsfl.he.threshold`); the server side holds the key's commitment and the
  parameters (:class:`~tsfl.he.threshold.keys.JobKey`);
- ``shared``: one CKKS secret key all silos hold (trusted silos: any of them decrypts
  any update); the server side holds a :class:`~tsfl.he.keys.PublicKeySet`.

Either way a section is accepted only with a valid signature (:mod:`tsfl.he.signing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tsfl.core.layout import ParamLayout
from tsfl.he.errors import HeError
from tsfl.he.keys import PublicKeySet
from tsfl.he.params import CkksParams, choose_params
from tsfl.he.seal import prime_of
from tsfl.he.sealed import SealedSum, ciphertext_count, coeff_bytes, parse_section, widen
from tsfl.he.selection import select_coordinates
from tsfl.he.signing import check_signature
from tsfl.he.threshold import params as tparams
from tsfl.he.threshold import sections
from tsfl.he.threshold.keys import JobKey

if TYPE_CHECKING:
    from tsfl.config import JobSpec


def he_selection(spec: JobSpec) -> dict[str, Any]:
    h = spec.crypto.he
    return {"layers": h.layers, "regex": h.regex, "fraction": h.fraction}


def he_params(spec: JobSpec, layout: ParamLayout) -> CkksParams:
    """The job's CKKS parameters (shared keying): from its precision, bound, cohort size
    and security, and the ring that pads its encrypted coordinates least."""
    h = spec.crypto.he
    size = int(select_coordinates(layout, **he_selection(spec)).size)
    return choose_params(h.precision, h.value_bound, spec.clients.per_round,
                         security=h.security, poly_degree=h.poly_degree, size=size)


def he_threshold(spec: JobSpec) -> int:
    """t: the spec's, else a majority of the silos."""
    return spec.crypto.he.threshold or spec.clients.count // 2 + 1


def threshold_params(spec: JobSpec) -> tparams.ThresholdParams:
    """The job's threshold parameters: every client is a silo holding a share."""
    h = spec.crypto.he
    return tparams.choose_params(h.precision, h.value_bound, spec.clients.per_round,
                                 spec.clients.count, he_threshold(spec),
                                 security=h.security, flooding=h.flooding,
                                 poly_degree=h.poly_degree)


def he_size(spec: JobSpec, layout: ParamLayout) -> int:
    """How many coordinates the job encrypts."""
    return int(select_coordinates(layout, **he_selection(spec)).size)


def threshold_keyed(spec: JobSpec) -> bool:
    """Whether the job is HE with threshold keying."""
    return spec.crypto.mode == "he" and spec.crypto.he.keying == "threshold"


def needs_ceremony(spec: JobSpec) -> bool:
    """A threshold-HE job without a key yet: its silos make it through the coordinator
    (:mod:`tsfl.pipeline.he_ceremony`) before round 1."""
    return threshold_keyed(spec) and not spec.crypto.he.key_id


@dataclass(frozen=True)
class CheckedSection:
    """A device's section after every check: what the he stage adds and records."""

    data: bytes | memoryview
    head: dict[str, Any]
    payload: memoryview
    entry: dict[str, Any]  # the sum's manifest entry: id, digest, weight, signature, cert
    polys: np.ndarray | None = None  # threshold keying: the residues (count, 2, k, N)


@dataclass(frozen=True)
class HeJob:
    public: PublicKeySet | JobKey
    selected: np.ndarray  # flat indices that are encrypted (sorted)
    clear: np.ndarray  # the others, sent in the clear
    weight_unit: float
    selection: dict[str, Any]  # how ``selected`` was chosen (sent to devices)
    authorities: tuple[bytes, ...]  # identity authorities trusted for section signatures

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @property
    def keying(self) -> str:
        return "threshold" if isinstance(self.public, JobKey) else "shared"

    @property
    def size(self) -> int:
        return int(self.selected.size)

    @classmethod
    def from_spec(cls, spec: JobSpec, layout: ParamLayout) -> HeJob | None:
        """None unless ``crypto.mode`` is ``he``; a job without a key id or an identity
        authority is refused."""
        if spec.crypto.mode != "he":
            return None
        h = spec.crypto.he
        if not h.key_id and h.keying == "threshold":
            raise HeError("pending", "crypto.he.key_id is missing: the silos' key ceremony "
                                     "has not made the job's key yet")
        if not h.key_id:
            raise HeError("key", "crypto.he.key_id is missing: create the key set "
                                 "(`tsfl keys init`) and submit with --he-keys")
        if not h.authority:
            raise HeError("key", "crypto.he.authority is missing: the identity authority "
                                 "whose certificates sign the devices' encrypted sections")
        public: PublicKeySet | JobKey
        if h.keying == "threshold":
            public = JobKey(h.key_id, threshold_params(spec))
        else:
            params = he_params(spec, layout)
            public = PublicKeySet(h.key_id, params, prime_of(params))
        return cls.build(public, layout, h.weight_unit, he_selection(spec),
                         tuple(bytes.fromhex(a) for a in h.authority))

    @classmethod
    def build(cls, public: PublicKeySet | JobKey, layout: ParamLayout, weight_unit: float,
              selection: dict[str, Any], authorities: tuple[bytes, ...] = ()) -> HeJob:
        selected = select_coordinates(layout, layers=selection.get("layers"),
                                      regex=selection.get("regex"),
                                      fraction=selection.get("fraction"))
        mask = np.ones(layout.total_size, dtype=bool)
        mask[selected] = False
        return cls(public, selected, np.flatnonzero(mask).astype(np.int64), weight_unit,
                   dict(selection), tuple(authorities))

    def task_config(self) -> dict[str, Any]:
        """What a device needs, besides its key, to take part in a round."""
        return {"key_id": self.key_id, "keying": self.keying,
                "weight_unit": self.weight_unit, **self.selection}

    def section_bound(self) -> int:
        """The most bytes a device's encrypted section takes (headers included)."""
        if isinstance(self.public, JobKey):
            return sections.payload_bytes(self.public, self.size) + 64 * 1024
        p = self.public.params
        count = ciphertext_count(self.size, p.reals_per_ciphertext)
        return count * 2 * p.poly_degree * coeff_bytes(self.public.prime) + 64 * 1024

    def check_section(self, data: bytes | memoryview, job_id: str, round_number: int,
                      client_id: str) -> CheckedSection:
        """Format, key, size, residues below their moduli, then the device's signature
        and certificate. Raises :class:`HeError` with code ``key``, ``unsigned``,
        ``identity``, ``signature``, ``sealed`` or ``ciphertext``."""
        polys = None
        if isinstance(self.public, JobKey):
            head, payload = sections.parse_section(data, self.public, self.size)
            polys = sections.residues(payload, self.public, self.size)
        else:
            head, payload = parse_section(data, self.public, self.size, max_terms=1)
            prime = self.public.prime  # every coefficient below q
            if int(widen(payload, coeff_bytes(prime)).max()) >= prime:
                raise HeError("ciphertext", "a coefficient is not reduced mod q")
        cert, digest, signature = check_signature(
            head, payload, job_id=job_id, round_number=round_number, key_id=self.key_id,
            client_id=client_id, authorities=self.authorities)
        return CheckedSection(data, head, payload, {
            "id": client_id, "d": digest, "w": float(head["w"]), "s": signature,
            "c": cert.to_wire()}, polys)

    def new_sum(self) -> RoundSum:
        return RoundSum(self)


class RoundSum:
    """A round's encrypted sum, fed with checked sections."""

    def __init__(self, job: HeJob):
        self.job = job
        self._shared = (SealedSum(job.public, job.size) if isinstance(job.public, PublicKeySet)
                        else None)
        self._threshold = (sections.SectionSum(job.public, job.size)
                           if isinstance(job.public, JobKey) else None)

    def add(self, section: CheckedSection) -> None:
        if self._shared is not None:
            self._shared.add_section(section.data, max_terms=1)
        else:
            assert self._threshold is not None and isinstance(self.job.public, JobKey)
            polys = section.polys if section.polys is not None else sections.residues(
                section.payload, self.job.public, self.job.size)
            self._threshold.add(polys, section.entry)

    def result(self, job_id: str, round_number: int) -> bytes:
        if self._shared is not None:
            assert isinstance(self.job.public, PublicKeySet)
            return self._shared.result().to_bytes(self.job.public.prime)
        assert self._threshold is not None
        return self._threshold.result(job_id, round_number)
