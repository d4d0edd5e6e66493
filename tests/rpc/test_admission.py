"""Job specs are data: the attacks of issue #16 on SubmitJob, each refused with the field
named, no side effect, and nothing stored (the coordinator's JobManager over the real
pipeline and a SQLite store)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import yaml

from tsfl.config import ConfigError
from tsfl.pipeline.roles import LocalPipeline
from tsfl.runtime.admission import AdmissionPolicy
from tsfl.runtime.jobs import JobManager
from tsfl.storage import Store

BASE = {"name": "adm", "rounds": 2, "clients": {"count": 4, "per_round": 2},
        "model": {"kind": "logreg"}}


def _submit(tmp_path: Path, spec: dict | str, policy: AdmissionPolicy | None = None
            ) -> tuple[str | None, int]:
    """Submit; returns (job id or None, jobs stored)."""

    tmp_path.mkdir(parents=True, exist_ok=True)

    async def go() -> tuple[str | None, int]:
        store = await Store.open(f"sqlite:///{tmp_path / 'adm.db'}")
        pipeline = await LocalPipeline.in_memory(store)
        jobs = JobManager(pipeline.coordinator, policy=policy)
        job_id = None
        try:
            text = spec if isinstance(spec, str) else yaml.safe_dump(spec)
            job_id = (await jobs.submit(text)).job_id
        finally:
            await jobs.stop()
            stored = await store.count("jobs")
            await pipeline.stop()
            await store.close()
        return job_id, stored

    return asyncio.run(go())


def _refused(tmp_path: Path, spec: dict | str, match: str,
             policy: AdmissionPolicy | None = None) -> None:
    with pytest.raises(ConfigError, match=match):
        _submit(tmp_path, spec, policy)
    async def count() -> int:  # nothing was stored for it
        store = await Store.open(f"sqlite:///{tmp_path / 'adm.db'}")
        try:
            return await store.count("jobs")
        finally:
            await store.close()

    assert asyncio.run(count()) == 0


@pytest.mark.parametrize("factory,kwargs", [
    ("logging:basicConfig", {"filename": "PLANTED", "filemode": "w"}),
    ("torch.hub:load", {"repo_or_dir": "PLANTED", "model": "evil", "source": "local"}),
])
def test_a_spec_cannot_run_code_on_the_coordinator(tmp_path, factory, kwargs):
    target = tmp_path / "victim.log"
    kwargs = {k: (str(target) if v == "PLANTED" else v) for k, v in kwargs.items()}
    _refused(tmp_path, {**BASE, "model": {"kind": "custom", "factory": factory,
                                          "kwargs": kwargs}}, "import path")
    assert not target.exists()


def test_an_installed_model_builder_is_named_not_imported(tmp_path):
    job_id, stored = _submit(tmp_path, {**BASE, "model": {
        "kind": "custom", "builder": "mlp-layernorm", "kwargs": {"hidden": [16]}}})
    assert job_id and stored == 1
    _refused(tmp_path / "x", {**BASE, "model": {"kind": "custom", "builder": "nope"}},
             "no model builder 'nope' is installed")


def _csv(path: Path, secret: str) -> Path:
    rows = "".join(f"{i},{i + 1},{i % 2}\n" for i in range(20))
    path.write_text(f"a,b,label\n1,2,0\n{secret},3,1\n{rows}")
    return path


def test_data_files_come_from_the_operators_directory_only(tmp_path):
    (tmp_path / "data").mkdir()
    outside = _csv(tmp_path / "outside.csv", "1")
    policy = AdmissionPolicy(tmp_path / "data")
    spec = {**BASE, "data": {"dataset": "csv", "path": "/etc/passwd", "label_column": "zzz"}}
    _refused(tmp_path / "a", spec, "reads no data files")  # no data directory at all
    _refused(tmp_path / "b", spec, "outside the coordinator's data directory", policy)
    _refused(tmp_path / "c", {**spec, "data": {**spec["data"], "path": "../outside.csv"}},
             "outside", policy)
    os.symlink(outside, tmp_path / "data" / "link.csv")  # a link out of the directory
    _refused(tmp_path / "d", {**spec, "data": {**spec["data"], "path": "link.csv"}},
             "outside", policy)
    _csv(tmp_path / "data" / "ok.csv", "1")
    job_id, _ = _submit(tmp_path / "e", {**BASE, "data": {"dataset": "csv", "path": "ok.csv"}},
                        policy)
    assert job_id


def test_errors_never_echo_a_files_content(tmp_path):
    (tmp_path / "data").mkdir()
    _csv(tmp_path / "data" / "planted.csv", "TOP-SECRET-CELL")
    policy = AdmissionPolicy(tmp_path / "data")
    for extra in ({"label_column": "zzz"}, {}):
        with pytest.raises(ConfigError) as err:
            _submit(tmp_path / f"p{len(extra)}", {**BASE, "data": {
                "dataset": "csv", "path": "planted.csv", **extra}}, policy)
        text = "\n".join(err.value.problems)
        assert "TOP-SECRET-CELL" not in text and "label" not in text.replace("label column",
                                                                           "")
    (tmp_path / "data" / "binary.csv").write_bytes(b"\xff\xfe secret \x00")
    with pytest.raises(ConfigError) as err:
        _submit(tmp_path / "bin", {**BASE, "data": {"dataset": "csv", "path": "binary.csv"}},
                policy)
    assert "secret" not in "\n".join(err.value.problems)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = "name: bomb\nmodel:\n  kind: custom\n  builder: mlp-layernorm\n  kwargs:\n"
    bomb += "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"    a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]\n"
    assert len(bomb) < 600
    _refused(tmp_path, bomb, "anchors")


@pytest.mark.parametrize("text,match", [
    ("name: slow\nrounds: " + ":".join(["1"] * 60_000) + "\n", "longer than"),
    ("name: big\nmodel: {kind: logreg}\n" + "# padding\n" * 40_000, "more than"),
    ("name: deep\nmodel:\n  kind: custom\n  builder: mlp-layernorm\n  kwargs:\n    x: "
     + "[" * 100 + "]" * 100 + "\n", "nested deeper"),
])
def test_oversized_and_deep_specs_are_refused(tmp_path, text, match):
    _refused(tmp_path, text, match)


@pytest.mark.parametrize("extra,match", [
    ({"model": {"kind": "mlp", "hidden": [100_000, 100_000]}}, "model.hidden"),
    ({"clients": {"count": 1_000_000_000, "per_round": 10}}, "clients.count"),
    ({"rounds": 10**9}, "rounds"),
    ({"data": {"dataset": "synthetic", "synthetic": {"dim": 10**7}}}, "data.synthetic.dim"),
])
def test_sizes_are_bounded_before_anything_is_built(tmp_path, extra, match):
    _refused(tmp_path, {**BASE, **extra}, match)


def test_the_models_size_is_measured_before_a_weight_is_allocated(tmp_path):
    _refused(tmp_path, {**BASE, "model": {"kind": "mlp", "hidden": [8000, 8000]}},
             "parameters, above", AdmissionPolicy(max_parameters=1_000_000))


def test_the_coordinator_never_loads_simulation_data(tmp_path, monkeypatch):
    import tsfl.sim.datasets as datasets

    def boom(*_a, **_k):
        raise AssertionError("the coordinator loaded a simulation dataset")

    monkeypatch.setattr(datasets, "load_digits", boom)
    monkeypatch.setattr(datasets, "generate_synthetic", boom)
    assert _submit(tmp_path / "d", {**BASE, "model": {"kind": "cnn"}})[0]
    assert _submit(tmp_path / "s", {**BASE, "data": {"dataset": "synthetic"}})[0]


def test_tsfl_models_lists_the_installed_builders(capsys):
    from tsfl.cli.main import main

    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert "mlp-layernorm" in printed and "tsfl.sim.models:mlp_layernorm" in printed


@pytest.mark.parametrize("step", ["parse_spec_text", "admit"])
def test_expensive_admission_work_runs_off_the_event_loop(tmp_path, monkeypatch, step):
    """Issue #16, finding 4: an alias bomb blocked the coordinator's event loop for
    minutes (no device or admin call answered meanwhile). Parsing and building run in a
    worker thread: a step made to block for a second leaves the loop answering."""
    import time

    import tsfl.runtime.jobs as jobs_module

    real = getattr(jobs_module, step)

    def slow(*args, **kwargs):
        time.sleep(1.0)  # blocking, as a slow parse or a big model build would be
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs_module, step, slow)

    async def go() -> tuple[float, float]:
        store = await Store.open(f"sqlite:///{tmp_path / 'loop.db'}")
        pipeline = await LocalPipeline.in_memory(store)
        jobs = JobManager(pipeline.coordinator)
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            await jobs.submit(yaml.safe_dump(BASE))
        finally:
            took = time.monotonic() - started
            done.set()
            await tick
            await jobs.stop()
            await pipeline.stop()
            await store.close()
        return took, max(gaps)

    took, longest_gap = asyncio.run(go())
    assert took >= 1.0 and longest_gap < 0.5


@pytest.mark.parametrize("selection", [{"kind": "oort"}, {"over_selection": 0.3}])
def test_selection_the_selector_service_cannot_draw_is_refused(tmp_path, selection):
    """Not silently drawn uniformly: the policy needs the simulation's device book."""
    _refused(tmp_path, {**BASE, "selection": selection}, "selector service draws cohorts")
