"""Server strategies behind one interface (:class:`Strategy`)."""

from __future__ import annotations

from typing import Any

from tsfl.strategies.base import Strategy
from tsfl.strategies.fedavg import FedAvg, FedProx
from tsfl.strategies.fedavgm import FedAvgM
from tsfl.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam, FedYogi)
}


def build_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate a strategy by its registered name."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}") from None
    return cls(**params)


__all__ = [
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Strategy",
    "build_strategy",
]
