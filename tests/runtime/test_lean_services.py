"""The five stage services never load torch (nor the coordinator's gRPC server and job
machinery): only the coordinator builds models and evaluates them. Checked in a fresh
interpreter, on what ``tsfl service NAME`` imports to run a stage."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from tsfl.pipeline.roles import ROLES
import tsfl.cli.main, tsfl.runtime.service
for name in {names!r}:
    ROLES[name]
heavy = sorted(m for m in ("torch", "tsfl.rpc.server", "tsfl.runtime.jobs",
                           "tsfl.runtime.admission", "tsfl.sdk.client") if m in sys.modules)
print(",".join(heavy))
"""


@pytest.mark.parametrize("names", [("selector", "privacy", "he", "byzantine", "aggregator")])
def test_stage_services_do_not_import_torch(names):
    out = subprocess.run([sys.executable, "-c", PROBE.format(names=names)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"a stage service loads {out.stdout.strip()}"
