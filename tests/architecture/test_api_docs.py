"""The API reference builds (pdoc) from the docstrings of the public modules."""

from __future__ import annotations

import subprocess
import sys

PUBLIC = ["tsfl.api", "tsfl.config", "tsfl.sdk.client", "tsfl.sdk.runner",
          "tsfl.sdk.privacy_guard", "tsfl.sdk.grpc_client", "tsfl.sdk.grpc_transport",
          "tsfl.identity", "tsfl.metrics"]


def test_api_reference_builds(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pdoc", *PUBLIC, "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    api = (tmp_path / "tsfl" / "api.html").read_text()
    assert "def run" in api or "run(" in api
    assert "RunResult" in api and "state_dict" in api
    assert (tmp_path / "tsfl" / "sdk" / "client.html").exists()
