"""Poisoned values without a robust rule (issue #16): an update of 1e30 everywhere used to
be accepted (max |w| of the published model 5e29), and one of 3e38 made the round fail,
losing the honest updates. Now every job has an update-norm bound and an overflowing
update is refused alone. The embedded pipeline, with simulated scaling attackers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tsfl.config import parse_job
from tsfl.runtime.embedded import run_embedded
from tsfl.storage import Store

JOB = {"name": "poison", "seed": 2, "rounds": 3, "clients": {"count": 20, "per_round": 10},
       "model": {"kind": "logreg"}, "training": {"lr": 0.1, "epochs": 1, "batch_size": 16}}


async def _refusals(result) -> set[str]:
    store = await Store.open(f"sqlite:///{result.database}")
    try:
        return {e["payload"]["code"] for e in await store.audit_trail(result.job_id)
                if e["kind"] == "upload.refused"}
    finally:
        await store.close()


@pytest.mark.parametrize("scale", [1e30, 3e38])
def test_a_poisoned_update_cannot_blow_up_the_model(tmp_path, scale):
    spec = parse_job({**JOB, "attacks": {"kind": "scaling", "fraction": 0.1, "scale": scale}})
    result = asyncio.run(run_embedded(spec, tmp_path / "run"))
    assert result.status == "COMPLETED"
    assert all(m["model_version"] == m["round"] for m in result.metrics)  # no round lost
    refused = asyncio.run(_refusals(result))
    assert refused and refused <= {"norm_bound", "nonfinite"}
    assert np.all(np.isfinite(result.final_vector))
    assert np.abs(result.final_vector).max() < 100
    honest = asyncio.run(run_embedded(parse_job(JOB), tmp_path / "honest"))
    assert result.metrics[-1]["test_accuracy"] >= honest.metrics[-1]["test_accuracy"] - 0.1


def test_a_configured_bound_is_enforced(tmp_path):
    spec = parse_job({**JOB, "rounds": 1, "round": {"max_update_norm": 1e-9}})
    result = asyncio.run(run_embedded(spec, tmp_path / "run"))
    assert result.metrics[0]["clients"] == 0 and result.metrics[0]["model_version"] == 0
    assert asyncio.run(_refusals(result)) == {"norm_bound"}


def test_devices_sending_tiny_updates_cannot_lock_the_honest_ones_out(tmp_path):
    """The review's ratchet: 40% of devices sent updates × 1e-12 to drag the adaptive bound
    below every honest update. The bound follows the largest of recent rounds' medians, so
    an honest majority is never refused."""
    spec = parse_job({**JOB, "rounds": 6,
                      "attacks": {"kind": "scaling", "fraction": 0.4, "scale": 1e-12}})
    result = asyncio.run(run_embedded(spec, tmp_path / "run"))
    assert "norm_bound" not in asyncio.run(_refusals(result))
    assert all(m["model_version"] == m["round"] for m in result.metrics)
