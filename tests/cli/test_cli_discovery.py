"""The CLI finds its stack and its specs, refuses a second stack in a live directory, and
starts fast (no torch for --help or the client commands)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from tsfl.cli.client import DEFAULT_COORDINATOR, coordinator_address
from tsfl.runtime import stack


def test_service_names_are_the_roles():
    from tsfl.pipeline.names import SERVICE_NAMES
    from tsfl.pipeline.roles import ROLES

    assert tuple(ROLES) == SERVICE_NAMES


@pytest.mark.parametrize("argv", [["--help"], ["job", "--help"], ["stack", "--help"]])
def test_client_commands_do_not_load_torch(argv):
    code = ("import sys\nfrom tsfl.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_coordinator_address_from_flag_env_stack_or_default(tmp_path, monkeypatch):
    monkeypatch.delenv("TSFL_COORDINATOR", raising=False)
    ns = argparse.Namespace(coordinator=None, stack_dir=str(tmp_path))
    assert coordinator_address(ns) == DEFAULT_COORDINATOR
    (tmp_path / "stack.json").write_text(json.dumps({"grpc": "127.0.0.1:6001"}))
    assert coordinator_address(ns) == "127.0.0.1:6001"
    monkeypatch.setenv("TSFL_COORDINATOR", "10.0.0.5:443")
    assert coordinator_address(ns) == "10.0.0.5:443"
    ns.coordinator = "h:1"
    assert coordinator_address(ns) == "h:1"


def test_job_specs_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    from tsfl.config import ConfigError, load_job

    monkeypatch.chdir(tmp_path)
    assert load_job("digits-dp").privacy.mode == "central"
    with pytest.raises(ConfigError, match="digits-fedavg"):
        load_job("no-such-example")
    with pytest.raises(ConfigError):
        load_job("../digits-dp")  # a path is never looked up among the examples


def _state(tmp_path, pid: int) -> None:
    st = stack.StackState(kafka="127.0.0.1:1", database="sqlite:///x", grpc="127.0.0.1:2",
                          services={"coordinator": {"pid": pid, "health": "127.0.0.1:2",
                                                    "log": "c.log"}})
    st.save(tmp_path)


def test_stack_up_refuses_a_live_directory(tmp_path):
    _state(tmp_path, os.getpid())  # "a service" that is alive: this test process
    with pytest.raises(stack.StackError, match="already running"):
        stack.up(tmp_path, kafka="127.0.0.1:1", database=None)
    assert json.loads((tmp_path / "stack.json").read_text())["grpc"] == "127.0.0.1:2"


def test_stack_status_shows_addresses(tmp_path, capsys):
    from tsfl.cli.main import main

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _state(tmp_path, dead.pid)
    assert stack.describe(tmp_path) == {"broker": ("external", "127.0.0.1:1"),
                                        "coordinator": ("stopped", "127.0.0.1:2")}
    assert main(["stack", "status", "--dir", str(tmp_path)]) == 1
    shown = capsys.readouterr().out
    assert "127.0.0.1:2" in shown and "sqlite:///x" in shown
