"""The local stack's files are its owner's (issue #16, finding 9: the database and the
logs were world-readable, 644). Logs name jobs, devices and peers."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from tsfl.runtime import stack
from tsfl.runtime.broker import private_log


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_private_log_is_owner_only_even_if_it_existed(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.log"
        with private_log(fresh) as fh:
            fh.write(b"one\n")
        existing = tmp_path / "existing.log"
        existing.write_bytes(b"before\n")
        os.chmod(existing, 0o644)
        with private_log(existing) as fh:  # appended to, and tightened
            fh.write(b"after\n")
    finally:
        os.umask(old)
    assert _mode(fresh) == _mode(existing) == 0o600
    assert existing.read_bytes() == b"before\nafter\n"


def test_a_stack_services_log_is_owner_only(tmp_path, monkeypatch):
    monkeypatch.setattr(stack, "service_command",
                        lambda *_a: [sys.executable, "-c", "print('job j, device d')"])
    state = stack.StackState(kafka="-", database="-", grpc="127.0.0.1:1")
    old = os.umask(0o022)
    try:
        entry = stack.start_service("aggregator", state, tmp_path)
    finally:
        os.umask(old)
    stack._PROCS.pop(entry["pid"]).wait(timeout=60)
    assert _mode(entry["log"]) == 0o600
    assert "job j, device d" in Path(entry["log"]).read_text()
