"""How a job's per-update records are keyed, so stage replicas can split the work.

An update (and its verdict) is keyed ``job:round:client``: a round's updates spread over
the update topics' partitions, and each aggregator replica folds the partitions it owns
(:mod:`tsfl.pipeline.aggregator_replicas`). A job with a robust rule is keyed
``job:round`` instead: the rule judges a round's updates against each other (Krum's
distances, WFAgg's filters, a coordinate-wise median over every kept update), so its whole
round lands on one partition and one byzantine replica — and one aggregator replica — owns
all of it (replicas still split such jobs by round and by job:
:mod:`tsfl.pipeline.byzantine_replicas`). Every producer of update and verdict records
keys them here, and the replicas place clients with the same function
(:func:`client_partition`).
"""

from __future__ import annotations

from tsfl.bus.partitioning import partition_for
from tsfl.config import JobSpec


def whole_round(spec: JobSpec) -> bool:
    """Whether one replica must see all of a round's updates (any robust rule)."""
    return spec.robust.aggregator != "none"


def update_key(spec: JobSpec, job_id: str, round_number: int, client_id: str) -> bytes:
    """The key of an update or verdict record of ``client_id`` (see the module doc)."""
    if whole_round(spec):
        return f"{job_id}:{round_number}".encode()
    return f"{job_id}:{round_number}:{client_id}".encode()


def client_partition(spec: JobSpec, job_id: str, round_number: int, client_id: str,
                     partitions: int) -> int:
    """The partition of a topic of ``partitions`` partitions that carries the client's
    update and verdict (for a whole-round job, any client: the round's partition)."""
    return partition_for(update_key(spec, job_id, round_number, client_id), partitions)
