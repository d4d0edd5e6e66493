"""The type checker runs on the library and finds nothing: mypy on libs/tsfl (settings in
pyproject.toml) reports no error. There is no baseline to grow into: a change that adds
a type error fails here, with mypy's own lines in the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_mypy_finds_no_error_in_the_library():
    out = subprocess.run([sys.executable, "-m", "mypy", "libs/tsfl"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
