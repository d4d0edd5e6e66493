"""The strategy seam: how the server turns the round's mean delta into a new model.

Every strategy sees the same inputs: the current global vector ``x_t`` and the
example-weighted mean of the client deltas ``Δ_t = Σ (n_k/n) (x_k − x_t)``
(folded by :class:`~tsfl.core.accumulator.WeightedAccumulator`). Strategies keep
their own O(P) state (momentum, second moments) and can export and restore it,
so a restarted aggregator resumes exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


class Strategy(ABC):
    """One federated optimisation algorithm."""

    name: ClassVar[str]

    def client_config(self, server_round: int) -> dict[str, Any]:
        """Extra settings sent to clients with the round's task (e.g. FedProx's μ)."""
        return {}

    @abstractmethod
    def aggregate_fit(self, current: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """Return the next global vector given ``x_t`` and the mean delta ``Δ_t``.

        May reuse ``mean_delta``'s buffer; must not modify ``current``.
        """

    def state(self) -> dict[str, np.ndarray | float | int]:
        """Optimizer state to checkpoint (empty for stateless strategies)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(state)}")
