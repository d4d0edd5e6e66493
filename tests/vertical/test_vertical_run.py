"""A vertical job end to end: the ``vertical:`` spec, ``tsfl run`` / ``tsfl.run`` on it
(PSI then split training, embedded) and ``tsfl psi``."""

from __future__ import annotations

import json

import pytest

import tsfl
from tsfl.cli.main import main
from tsfl.config import ConfigError, bundled_example, load_job, parse_job
from tsfl.sim.datasets import DatasetError

BASE = {
    "name": "v", "rounds": 2, "data": {"dataset": "breast_cancer"},
    "vertical": {"label_party": "h", "overlap": 0.8, "parties": [
        {"name": "h"}, {"name": "a", "columns": ["0:15"]},
        {"name": "b", "columns": list(range(15, 30))}]},
}


def _with(**vertical):
    return {**BASE, "vertical": {**BASE["vertical"], **vertical}}


@pytest.mark.parametrize("spec,needle", [
    (_with(label_party="x"), "is not a party"),
    (_with(parties=[{"name": "h"}, {"name": "a", "columns": [0, 1]},
                    {"name": "b", "columns": ["1:3"]}]), "another party"),
    (_with(parties=[{"name": "h"}, {"name": "a"}]), "needs columns"),
    (_with(parties=[{"name": "h"}, {"name": "a", "columns": ["3:1"]}]), "a:b"),
    (_with(parties=[{"name": "h"}, {"name": "h", "columns": [1]}]), "duplicate"),
    ({**BASE, "privacy": {"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0}},
     "horizontal-only"),
    ({**BASE, "data": {"dataset": "synthetic"}}, "synthetic"),
    (_with(cut_dp={"noise_multiplier": -1}), "greater than 0"),
    (_with(psi={"max_items": 10**9}), "less than or equal"),
])
def test_bad_vertical_specs_are_refused_naming_the_field(spec, needle):
    with pytest.raises(ConfigError) as exc:
        parse_job(spec)
    assert any(needle in p for p in exc.value.problems), exc.value.problems


def test_the_bundled_example_is_valid_and_seeded_noise_is_flagged():
    spec = load_job(bundled_example("vertical-breast-cancer"))
    assert spec.vertical is not None and len(spec.vertical.parties) == 4
    assert sum(len(p.indices) for p in spec.vertical.parties) == 30
    seeded = parse_job(_with(noise="seeded", label_dp={"epsilon": 1.0}))
    assert seeded.seeded_privacy == ["vertical.noise"]


def test_run_aligns_with_psi_trains_and_writes_outputs(tmp_path):
    res = tsfl.run("vertical-breast-cancer", rounds=3, out_dir=tmp_path)
    assert res.status == "COMPLETED" and res.final_accuracy > 0.85
    v = res.summary["vertical"]
    assert v["psi"]["intersection"] == round(0.8 * 569)
    assert v["train_rows"] + v["test_rows"] == v["psi"]["intersection"]
    assert v["messages"]["request"] == 3 and v["bytes_by_kind"]["activations"] > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert {"test_accuracy", "test_loss", "train_loss", "bytes_up", "bytes_down",
            "wall_s"} <= set(metrics[0])
    assert (tmp_path / "curves.png").is_file()
    again = tsfl.run("vertical-breast-cancer", rounds=3, out_dir=tmp_path / "again")
    strip = [{k: v for k, v in m.items() if k != "wall_s"} for m in again.metrics]
    assert strip == [{k: v for k, v in m.items() if k != "wall_s"} for m in res.metrics]


def test_split_nn_with_both_protections_reports_epsilon(tmp_path):
    res = tsfl.run(_with(model="split_nn", cut_dp={"noise_multiplier": 1.0},
                         label_dp={"epsilon": 2.0}), out_dir=tmp_path)
    assert res.status == "COMPLETED"
    eps = [m["epsilon"] for m in res.metrics]
    assert eps[0] < eps[1] == res.summary["vertical"]["cut_dp_epsilon"]


def test_cardinality_mode_reports_sizes_only(tmp_path):
    res = tsfl.run(_with(psi={"mode": "cardinality"}), out_dir=tmp_path)
    assert res.status == "COMPLETED" and res.metrics == []
    psi = res.summary["vertical"]["psi"]
    assert psi["intersection"] is None and set(psi["cardinalities"]) == {"a", "b"}


def test_columns_beyond_the_dataset_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="beyond"):
        tsfl.run(_with(parties=[{"name": "h"}, {"name": "a", "columns": [40]}]),
                 out_dir=tmp_path)


def test_cli_run_and_psi(tmp_path, capsys):
    assert main(["run", "vertical-breast-cancer", "--rounds", "1", "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0
    assert "final test accuracy" in capsys.readouterr().out
    (tmp_path / "a.txt").write_text("".join(f"u{i}\n" for i in range(100)))
    (tmp_path / "b.txt").write_text("".join(f"u{i}\n" for i in range(50, 300)))
    assert main(["psi", "--party", f"a={tmp_path / 'a.txt'}", "--party",
                 f"b={tmp_path / 'b.txt'}", "--out", str(tmp_path / "psi")]) == 0
    assert "intersection: 50" in capsys.readouterr().out
    got = (tmp_path / "psi" / "b.ids").read_text().split()
    assert sorted(got) == sorted(f"u{i}" for i in range(50, 100))
    (tmp_path / "dup.txt").write_text("x\nx\n")
    with pytest.raises(SystemExit, match="duplicate"):
        main(["psi", "--party", f"a={tmp_path / 'a.txt'}", "--party",
              f"d={tmp_path / 'dup.txt'}"])


def test_the_coordinator_refuses_a_vertical_job_instead_of_running_it_horizontally():
    from tsfl.runtime.admission import AdmissionPolicy, admit

    with pytest.raises(ConfigError, match="vertical"):
        admit(parse_job(BASE), AdmissionPolicy())
