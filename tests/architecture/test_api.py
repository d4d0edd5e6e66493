"""The Python API: tsfl.run gives objects back, equal to what `tsfl run` writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tsfl
from tsfl.config import ConfigError


def test_run_returns_metrics_model_and_outputs(tmp_path):
    result = tsfl.run("digits-fedavg", out_dir=tmp_path, rounds=2,
                      clients={"count": 10, "per_round": 4}, model={"kind": "logreg"})
    assert isinstance(result, tsfl.RunResult)
    assert result.status == "COMPLETED" and len(result.metrics) == 2
    assert result.spec.clients.per_round == 4 and result.spec.clients.count == 10
    assert result.final_accuracy == pytest.approx(result.metrics[-1]["test_accuracy"])
    assert result.final_accuracy > 0.5  # digits, 10 classes: far above chance
    state = result.state_dict()
    assert sum(t.numel() for t in state.values()) == result.final_vector.size
    flat = np.concatenate([t.numpy().ravel() for t in state.values()])
    np.testing.assert_array_equal(flat, result.final_vector)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["round"] for m in written] == [1, 2]
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_run_reports_bad_specs_as_config_errors():
    with pytest.raises(ConfigError):
        tsfl.run("digits-fedavg", rounds=0)
    with pytest.raises(ConfigError, match="bundled examples"):
        tsfl.run("no-such-example")


def test_load_job_and_unknown_attributes():
    assert tsfl.load_job("digits-dp").privacy.mode == "central"
    with pytest.raises(AttributeError):
        _ = tsfl.nothing_here
