"""The he role: ``tsfl.rounds`` + ``tsfl.updates.encrypted`` → ``tsfl.aggregates``
(the encrypted coordinates' sum still encrypted).

The aggregator's stage code, for HE jobs: the same streaming fold over the clear
coordinates (selective encryption), and beside it :class:`tsfl.he.SealedSum`, which adds
the encrypted sections as they arrive. It holds the job's public key set only (CKKS
parameters and the data prime): nothing on this side can decrypt. No update is readable
here, so there is no Byzantine verdict to wait for (such jobs are refused at submission).
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.pipeline.aggregator import Aggregator


class HomomorphicAggregator(Aggregator):
    name = "he"
    update_topics = (topics.UPDATES_ENCRYPTED,)
    serves_mode = "he"


__all__ = ["HomomorphicAggregator"]
