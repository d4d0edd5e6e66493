"""docs/extending.md stays true: its plugin package, installed as the page writes it (a
module and a distribution's entry points on sys.path), runs a job — the strategy's steps
are capped at η·r and the policy asks every device once before any twice."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

from tsfl.config import ConfigError, parse_job
from tsfl.runtime.embedded import run_embedded
from tsfl.storage import Store
from tsfl.strategies import build_strategy

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def plugins_installed(tmp_path, monkeypatch):
    """The page's package, installed: its module and a dist-info with its entry points."""
    (module,) = _blocks("python")
    (pyproject,) = _blocks("toml")
    project = tomllib.loads(pyproject)["project"]
    site = tmp_path / "site"
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (site / "my_fl_plugins.py").write_text(module)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in project["entry-points"].items()))
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("my_fl_plugins", None)


def _job(**extra) -> dict:
    (spec,) = _blocks("yaml")
    job = {"name": "plugins", "seed": 3, "rounds": 4, "clients": {"count": 8, "per_round": 2},
           "model": {"kind": "logreg"}, "training": {"lr": 0.5, "epochs": 1, "batch_size": 16}}
    job.update(yaml.safe_load(spec))
    job.update(extra)
    return job


def test_the_documented_plugins_run_a_job(plugins_installed, tmp_path):
    spec = parse_job(_job())
    assert spec.strategy.params() == {"radius": 0.5, "server_lr": 1.0}
    result = asyncio.run(run_embedded(spec, tmp_path / "out"))
    assert result.status == "COMPLETED"

    async def read() -> tuple[list[np.ndarray], list[list[str]]]:
        store = await Store.open(f"sqlite:///{result.database}")
        try:
            models = [(await store.latest_checkpoint(result.job_id, v))["vector"]
                      for v in range(5)]
            parts = await store.list_participants(result.job_id)
            return models, [[p["client_id"] for p in parts if p["round"] == r]
                            for r in range(1, 5)]
        finally:
            await store.close()

    models, cohorts = asyncio.run(read())
    steps = [float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(models)]
    assert all(0 < s <= 0.5 * (1 + 1e-5) for s in steps), steps  # trust region: η·r
    assert sorted(c for cohort in cohorts for c in cohort) == sorted(
        f"client-{i:05d}" for i in range(8))  # least recent: all 8 once in 4 rounds × 2


def test_the_documented_strategy_matches_numpy(plugins_installed):
    strategy = build_strategy("trust_region", radius=0.5, server_lr=2.0)
    x = np.arange(4, dtype=np.float32)
    delta = np.array([3.0, 0.0, 4.0, 0.0], dtype=np.float32)  # ‖Δ‖ = 5
    np.testing.assert_allclose(strategy.aggregate_fit(x, delta.copy()),
                               x + 2.0 * delta * (0.5 / 5.0), rtol=1e-6)


def test_names_and_options_are_checked_when_the_spec_is_parsed(plugins_installed):
    with pytest.raises(ConfigError, match="installed: trust_region"):
        parse_job(_job(strategy={"name": "not_installed"}))
    with pytest.raises(ConfigError, match=r"strategy\.options"):
        parse_job(_job(strategy={"name": "trust_region", "server_lr": 1.0}))
    with pytest.raises(ConfigError, match="installed: least_recent"):
        parse_job(_job(selection={"kind": "nope"}))
    with pytest.raises(ValueError, match="unexpected keyword"):
        build_strategy("trust_region", **parse_job(_job(
            strategy={"name": "trust_region", "options": {"angle": 1}})).strategy.params())
    with pytest.raises(ConfigError, match="uniform"):  # DP keeps selection random
        parse_job(_job(privacy={"mode": "central", "clip_norm": 1.0,
                                "noise_multiplier": 1.0}))


def test_without_the_package_the_names_are_unknown():
    with pytest.raises(ConfigError, match="unknown strategy 'trust_region'"):
        parse_job(_job())


def test_plugin_options_keep_their_type_and_bad_ones_fail_before_anything_runs(
        plugins_installed, tmp_path):
    """A job submitter's options reach the constructor as given (an int stays an int),
    and one the constructor refuses fails the submission: no job is stored RUNNING."""
    spec = parse_job(_job(strategy={"name": "trust_region", "options": {"radius": 2}}))
    assert type(spec.strategy.params()["radius"]) is int
    bad = parse_job(_job(strategy={"name": "trust_region", "options": {"radius": -1}}))
    with pytest.raises(ValueError, match="radius must be positive"):
        asyncio.run(run_embedded(bad, tmp_path / "bad"))

    async def jobs() -> int:
        store = await Store.open(f"sqlite:///{tmp_path / 'bad' / 'tsfl.db'}")
        try:
            return await store.count("jobs")
        finally:
            await store.close()

    assert asyncio.run(jobs()) == 0
