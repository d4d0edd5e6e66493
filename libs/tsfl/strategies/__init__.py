"""Server strategies behind one interface (:class:`Strategy`)."""

from __future__ import annotations

from typing import Any

from tsfl.plugins import STRATEGY_GROUP, PluginError, load_plugin
from tsfl.strategies.base import Strategy
from tsfl.strategies.fedavg import FedAvg, FedProx
from tsfl.strategies.fedavgm import FedAvgM
from tsfl.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam, FedYogi)
}


def build_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate a strategy by its name: a built-in one, else one installed in the
    ``tsfl.strategies`` entry-point group (:mod:`tsfl.plugins`)."""
    cls = STRATEGIES.get(name)
    if cls is None:
        try:
            cls = load_plugin(STRATEGY_GROUP, name, Strategy)
        except PluginError as exc:
            raise ValueError(f"unknown strategy {name!r}; built in: {sorted(STRATEGIES)}; "
                             f"{exc}") from None
    try:
        return cls(**params)
    except Exception as exc:  # an option its constructor does not take, or refuses
        raise ValueError(f"strategy {name!r}: {exc}") from None


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
