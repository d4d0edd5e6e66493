"""Homomorphic encryption for aggregation.

Two keyings (:mod:`job`): threshold RLWE encryption among the silos, in numpy
(:mod:`tsfl.he.threshold`, the default), and shared-key CKKS through SEAL (TenSEAL's
``sealapi``): parameters (:mod:`params`), key sets (:mod:`keys`), encrypted vectors with
their streaming sum (:mod:`sealed`). Both: which coordinates are encrypted
(:mod:`selection`) and signed sections (:mod:`signing`). Algorithms only: nothing here
knows the bus, the database or gRPC.
"""

from tsfl.he.errors import HeError
from tsfl.he.job import HeJob
from tsfl.he.keys import PublicKeySet, SecretKeySet, read_public, read_secret
from tsfl.he.params import CkksParams, choose_params
from tsfl.he.sealed import SealedSum, SealedVector, open_vector, seal_vector
from tsfl.he.selection import select_coordinates

__all__ = ["CkksParams", "HeError", "HeJob", "PublicKeySet", "SealedSum", "SealedVector",
           "SecretKeySet", "choose_params", "open_vector", "read_public", "read_secret",
           "seal_vector", "select_coordinates"]
