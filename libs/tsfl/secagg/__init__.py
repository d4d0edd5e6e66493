"""SecAgg+ (Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020, Fig. 3/4) secure against an active server with the signed rounds of
Bonawitz et al. ("Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017: signed AdvertiseKeys and the ConsistencyCheck round of its active-adversary
protocol, Sec. 6), transport-free: the server learns only the cohort's sum.

Threat model: the server is malicious (it routes every message and may drop, replay,
alter or invent any), colluding with up to γn clients; up to δn clients drop out. Each
device holds a long-term identity certified by an authority *it* trusts (not the
server). Stages (U1 ⊇ U2 ⊇ U3 ⊇ U4 ⊇ U5 are the clients still there):

1. *advertise*: each client sends two X25519 public keys, c (share channel) and s
   (pairwise masks) — in the hybrid mode also an ML-KEM-768 encapsulation key — signed
   over (round, its id, the keys) with its certificate (:mod:`tsfl.secagg.advert`).
   The server forwards every advertisement of U1 to everyone.
2. *share*: each client checks every certificate against its own trusted authorities
   and every signature; derives the graph seed from all advertisements and its
   neighbours from it; checks (k, t) against :func:`tsfl.secagg.params.derive` for the
   round's γ, δ, σ (at construction) and that at least ⌈(1 − δ)n⌉ clients advertised.
   Then it draws its self-mask seed b_u, Shamir-shares b_u and its s secret key t-of-k
   among its neighbours, and sends each share sealed (AES-GCM under K_uv,
   :mod:`tsfl.secagg.keys`) for the server to route.
3. *masked input*: y_u = c_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)  (mod 2^b), the
   sign + when u < v; c_u the ring codes (update, then n and metrics,
   :mod:`tsfl.secagg.extras`); s_uv = HKDF(X25519(s_u, s_v)).
4. *consistency*: the server names the survivors U3; each signs (round, seed, U3) —
   and refuses a second, different U3, or one smaller than ⌈(1 − δ)n⌉.
5. *unmask*: the server forwards the signatures; a client answers only after t of its
   neighbours signed the same (seed, U3), with a share of b_v for each neighbour in U3
   and of s_v for each neighbour it holds shares of outside U3 — never both for one v.
   The server rebuilds them and gets Σ_{u ∈ U3} c_u exactly; below t shares anywhere
   the round aborts.

Security rests on t > (k + X)/2 for the X corrupt neighbours of any honest client
(:mod:`tsfl.secagg.params`, eq. 2): splitting the unmask request, the server collects at
most (k − X)/2 + X < t shares of one of the two secrets.

Modules: :mod:`~tsfl.secagg.round` (a round's parameters and errors),
:mod:`~tsfl.secagg.client` and :mod:`~tsfl.secagg.server` (the two state machines),
:mod:`~tsfl.secagg.advert` (signed advertisements and the consistency message),
:mod:`~tsfl.secagg.params` and :mod:`~tsfl.secagg.graph` (the graph and its
parameters), :mod:`~tsfl.secagg.keys` (key agreement), :mod:`~tsfl.secagg.shamir`,
:mod:`~tsfl.secagg.prg` (ChaCha20 masks), :mod:`~tsfl.secagg.ring` and
:mod:`~tsfl.secagg.extras` (the ring encoding). Algorithms only: the coordinator and
the SDK carry the messages.
"""

from tsfl.secagg.client import SecAggClient
from tsfl.secagg.ring import RingSpec
from tsfl.secagg.round import RoundConfig, SecAggAbort, SecAggRefusal
from tsfl.secagg.server import SecAggServer

__all__ = ["RingSpec", "RoundConfig", "SecAggAbort", "SecAggClient", "SecAggRefusal",
           "SecAggServer"]
