"""The type checker runs on the library: no module may have more mypy errors than its
baseline (tests/mypy_baseline.json), and a module not in the baseline has none. Fixing
errors shrinks the baseline (regenerate: python tests/architecture/test_types.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "tests" / "mypy_baseline.json"

pytestmark = pytest.mark.slow


def mypy_errors() -> Counter[str]:
    out = subprocess.run([sys.executable, "-m", "mypy", "libs/tsfl"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    if out.returncode not in (0, 1) or ("error:" not in out.stdout and out.returncode):
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
    return Counter(m.group(1) for m in re.finditer(r"^(libs/\S+?\.py):\d+: error:",
                                                   out.stdout, re.M))


def test_no_module_has_more_type_errors_than_its_baseline():
    baseline = json.loads(BASELINE.read_text())
    errors = mypy_errors()
    worse = {f: (n, baseline.get(f, 0)) for f, n in errors.items() if n > baseline.get(f, 0)}
    assert not worse, f"new mypy errors (found, baseline): {worse}"


if __name__ == "__main__":
    BASELINE.write_text(json.dumps(dict(sorted(mypy_errors().items())), indent=1) + "\n")
