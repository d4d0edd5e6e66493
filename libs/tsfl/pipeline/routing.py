"""How a job's per-update records are keyed, so aggregator replicas can split the work.

An update (and its verdict) is keyed ``job:round:client``: a round's updates spread over
the update topics' partitions, and each aggregator replica folds the partitions it owns
(:mod:`tsfl.pipeline.aggregator_replicas`). A job whose aggregate needs the whole round
at once — a coordinate-wise robust rule (median, trimmed mean, Bulyan), evaluated over
every kept update at the close — is keyed ``job:round`` instead: its round lands on one
partition, so one replica owns all of it (replicas still split such jobs by round and
by job). Every producer of update and verdict records keys them here, and the replicas
place clients with the same function (:func:`client_partition`).
"""

from __future__ import annotations

from tsfl.bus.partitioning import partition_for
from tsfl.config import JobSpec
from tsfl.robust.build import COORDINATE_RULES


def whole_round(spec: JobSpec) -> bool:
    """Whether one aggregator must see all of a round's updates (a coordinate-wise rule)."""
    return spec.robust.aggregator in COORDINATE_RULES


def update_key(spec: JobSpec, job_id: str, round_number: int, client_id: str) -> bytes:
    """The key of an update or verdict record of ``client_id`` (see the module doc)."""
    if whole_round(spec):
        return f"{job_id}:{round_number}".encode()
    return f"{job_id}:{round_number}:{client_id}".encode()


def client_partition(spec: JobSpec, job_id: str, round_number: int, client_id: str,
                     partitions: int) -> int:
    """The partition of a topic of ``partitions`` partitions that carries the client's
    update and verdict."""
    return partition_for(update_key(spec, job_id, round_number, client_id), partitions)
