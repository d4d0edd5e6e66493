"""`tsfl` as a subprocess, and a small job file: shared by the CLI and pipeline tests."""

import subprocess
import sys
from pathlib import Path

import yaml


def tsfl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tsfl.cli.main", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def write_job(path: Path, **overrides) -> Path:
    job = {"name": "cli-test", "seed": 1, "rounds": 4,
           "clients": {"count": 20, "per_round": 4},
           "model": {"kind": "mlp", "hidden": [16]},
           "training": {"lr": 0.1, "epochs": 2, "batch_size": 16}}
    job.update(overrides)
    path.write_text(yaml.safe_dump(job))
    return path
