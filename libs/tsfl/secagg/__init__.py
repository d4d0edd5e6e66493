"""Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the cohort's sum.

Algorithms only (key agreement, Shamir shares, ChaCha20 masks, the ring encoding and the
client/server state machines); the coordinator and the SDK carry the messages.
"""

from tsfl.secagg.protocol import RoundConfig, SecAggAbort, SecAggClient, SecAggServer
from tsfl.secagg.ring import RingSpec

__all__ = ["RingSpec", "RoundConfig", "SecAggAbort", "SecAggClient", "SecAggServer"]
