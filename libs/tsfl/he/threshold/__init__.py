"""Threshold (multiparty) RLWE encryption for aggregation, in numpy.

No silo, and not the server, can decrypt a ciphertext alone: the silos make a collective
public key in a key ceremony (:mod:`ceremony`), each keeping a t-of-n Shamir share of its
secret (:mod:`keys`); devices encrypt with the public key (:mod:`scheme`); the he service
adds signed sections into a sum with a manifest (:mod:`sections`); t silos open the sum
together through the server, masked so the server learns nothing, after checking that it
is the round's sum of signed sections (:mod:`opening`). Ring arithmetic: :mod:`ring`,
:mod:`ntt`; parameters and noise: :mod:`params`.
"""

from tsfl.he.threshold.ceremony import CeremonyParty, run_ceremony
from tsfl.he.threshold.keys import CollectivePublicKey, JobKey, KeyShare, read_share
from tsfl.he.threshold.opening import OpeningSilo
from tsfl.he.threshold.params import ThresholdParams, choose_params
from tsfl.he.threshold.sections import SectionSum, SumView, parse_section, parse_sum

__all__ = ["CeremonyParty", "CollectivePublicKey", "JobKey", "KeyShare", "OpeningSilo",
           "SectionSum", "SumView", "ThresholdParams", "choose_params", "parse_section",
           "parse_sum", "read_share", "run_ceremony"]
