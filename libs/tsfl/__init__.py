"""TrustStram FL: federated learning across devices and organisations.

One pipeline, two deployments: the same stage code runs embedded in one process
(in-memory bus, SQLite) or distributed (Kafka, Postgres, gRPC).

From Python: ``tsfl.run(job, **overrides) -> tsfl.RunResult`` runs a job embedded
(:mod:`tsfl.api`); ``tsfl.load_job(path_or_example)`` validates a spec. Both load lazily,
so ``import tsfl`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunResult", "__version__", "load_job", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "RunResult"):
        from tsfl import api

        return getattr(api, name)
    if name == "load_job":
        from tsfl.config import load_job

        return load_job
    raise AttributeError(f"module 'tsfl' has no attribute {name!r}")
