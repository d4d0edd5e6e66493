"""Vertical federated learning: parties hold different columns of the same entities.

:mod:`.group` the prime-order group, :mod:`.psi` two-party ECDH-PSI, :mod:`.align` PSI
among a label party and feature parties, :mod:`.messages` the activation and gradient
messages of split training, :mod:`.split` the parties' models and one training step,
:mod:`.protection` cut-layer DP and label DP, :mod:`.trainer` a whole vertical job on
aligned data. Nothing here knows a transport: messages are bytes handed to a relay.
"""
