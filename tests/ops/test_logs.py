"""Service logs are JSON lines with the job, round and device they concern."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from tsfl.runtime.logs import JsonFormatter
from tsfl.telemetry import context_from_key, log_context


def _line(record_fn) -> dict:
    fmt = JsonFormatter("aggregator")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("tsfl.test.logs")
    log.propagate = False
    log.handlers[:] = [Keep()]
    log.setLevel(logging.DEBUG)
    record_fn(log)
    return json.loads(fmt.format(records[-1]))


def test_context_fields_and_extra():
    with log_context(**context_from_key(b"job-1:7:dev-3")):
        entry = _line(lambda log: log.info("folded %d", 3))
    assert entry["msg"] == "folded 3" and entry["service"] == "aggregator"
    assert (entry["job"], entry["round"], entry["client"]) == ("job-1", 7, "dev-3")
    entry = _line(lambda log: log.warning("late", extra={"job": "j2", "round": 1}))
    assert (entry["job"], entry["round"]) == ("j2", 1) and "client" not in entry
    assert "job" not in _line(lambda log: log.info("outside"))


def test_key_shapes():
    assert context_from_key(b"j") == {"job": "j"}
    assert context_from_key(b"j:4") == {"job": "j", "round": 4}
    assert context_from_key(None) == {}


def test_exceptions_stay_on_one_json_line():
    def boom(log: logging.Logger) -> None:
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")

    entry = _line(boom)
    assert "ValueError: bad" in entry["exc"]


def test_uncaught_exceptions_are_json_lines_too():
    code = ("from tsfl.runtime.logs import configure\nconfigure('he')\n"
            "raise RuntimeError('kaboom')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0 and lines
    entries = [json.loads(line) for line in lines]  # every line parses
    assert any("kaboom" in e.get("exc", "") for e in entries)
