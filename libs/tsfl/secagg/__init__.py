"""Secure aggregation (SecAgg+, Bell et al. 2020) against an active server (the signed
rounds of Bonawitz et al. 2017): the server learns only the cohort's sum.

Algorithms only (signed advertisements, the graph and its parameters, key agreement,
Shamir shares, ChaCha20 masks, the ring encoding and the client/server state machines);
the coordinator and the SDK carry the messages.
"""

from tsfl.secagg.protocol import (
    RoundConfig,
    SecAggAbort,
    SecAggClient,
    SecAggRefusal,
    SecAggServer,
)
from tsfl.secagg.ring import RingSpec

__all__ = ["RingSpec", "RoundConfig", "SecAggAbort", "SecAggClient", "SecAggRefusal",
           "SecAggServer"]
