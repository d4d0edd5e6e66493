"""The six services of the distributed deployment: the wiring diagram, one module each.

Each module names its role, the topics it consumes and produces, and runs it
with :func:`serve`. ``tsfl service NAME`` loads the module of that name;
tests/architecture/test_wiring.py checks every declaration against what the role really
subscribes to and publishes, and against docs/topics.md. Installed (and imported) as the
``services`` package.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from tsfl.pipeline.names import SERVICE_NAMES


def load(name: str) -> ModuleType:
    """The service module ``name`` (one of :data:`SERVICE_NAMES`)."""
    if name not in SERVICE_NAMES:
        raise ValueError(f"unknown service {name!r}; choose from {sorted(SERVICE_NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def serve(name: str, argv: list[str] | None = None) -> int:
    """Run service ``name`` as this process: exactly ``tsfl service NAME [options]`` (the
    CLI's options and ``TSFL_*`` environment variables, logging, telemetry)."""
    from tsfl.cli.main import main

    return main(["service", name, *(sys.argv[1:] if argv is None else argv)])
