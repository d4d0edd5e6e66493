"""`tsfl` as a user runs it: a real subprocess, real files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import tsfl, write_job

ROOT = Path(__file__).resolve().parents[2]


def test_run_writes_every_output(tmp_path):
    job = write_job(tmp_path / "job.yaml")
    out = tmp_path / "out"
    proc = tsfl("run", str(job), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "final test accuracy:" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [1, 2, 3, 4]
    for key in ("round", "test_accuracy", "test_loss", "train_loss", "clients", "bytes_up",
                "bytes_down", "wall_s"):
        assert all(key in m for m in metrics), key
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_test_accuracy", "best_test_accuracy", "rounds", "wall_s", "seed",
                "config_sha256", "versions"):
        assert key in summary, key
    assert summary["seed"] == 1 and summary["rounds"] == 4
    assert summary["versions"]["torch"].startswith("2.")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "tsfl.db").stat().st_size > 0


def test_seed_and_rounds_flags_and_reproducibility(tmp_path):
    job = write_job(tmp_path / "job.yaml")
    for name in ("a", "b"):
        assert tsfl("run", str(job), "--out", str(tmp_path / name), "--seed", "7",
                    "--rounds", "2", "--quiet").returncode == 0

    def load(name):
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in m]

    assert load("a") == load("b") and len(load("a")) == 2
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["seed"] == 7


def test_bad_spec_exits_nonzero_with_one_line_per_problem(tmp_path):
    job = write_job(tmp_path / "bad.yaml", rounds=0, training={"lr": "fast", "foo": 1},
                    clients={"count": 2, "per_round": 5})
    proc = tsfl("run", str(job), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.startswith("  ")]
    assert sorted(ln.split(":")[0] for ln in lines) == [
        "clients", "rounds", "training.foo", "training.lr"]
    assert not (tmp_path / "o").exists()


def test_validate_and_version(tmp_path):
    assert tsfl("validate", str(write_job(tmp_path / "j.yaml"))).returncode == 0
    assert tsfl("validate", str(tmp_path / "missing.yaml")).returncode == 2
    assert tsfl("--version").stdout.startswith("tsfl ")


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "tsfl"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "run" in proc.stdout


@pytest.mark.slow
def test_bundled_example_reaches_090(tmp_path):
    proc = tsfl("run", "--out", str(tmp_path / "example"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "example" / "summary.json").read_text())
    assert summary["final_test_accuracy"] >= 0.90
    assert summary["rounds"] < 100
