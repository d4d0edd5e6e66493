"""The six services' names, importable without loading the roles (the CLI builds its
parser from them), and :func:`role_class`, which loads one service's role alone — a stage
service never imports the others' dependencies (the coordinator's torch, the privacy
stage's accountant, the HE stage's TenSEAL). ``tsfl.pipeline.roles.ROLES`` maps exactly
these names to the same classes (tests/architecture/test_wiring.py checks it)."""

from __future__ import annotations

import importlib
from typing import Any

SERVICE_NAMES: tuple[str, ...] = ("coordinator", "selector", "privacy", "byzantine",
                                  "aggregator", "he")

_ROLE_PATHS = {
    "coordinator": ("tsfl.pipeline.coordinator", "Coordinator"),
    "selector": ("tsfl.pipeline.selector", "Selector"),
    "privacy": ("tsfl.pipeline.privacy", "Privacy"),
    "byzantine": ("tsfl.pipeline.byzantine_replicas", "ReplicatedByzantine"),
    "aggregator": ("tsfl.pipeline.aggregator_replicas", "PartitionedAggregator"),
    "he": ("tsfl.pipeline.he", "HomomorphicAggregator"),
}


def role_class(name: str) -> Any:
    """The :class:`~tsfl.pipeline.role.BusRole` subclass of service ``name``, importing
    only its module; ValueError for an unknown name."""
    if name not in _ROLE_PATHS:
        raise ValueError(f"unknown service {name!r}; choose from {sorted(SERVICE_NAMES)}")
    module, cls = _ROLE_PATHS[name]
    return getattr(importlib.import_module(module), cls)
