"""Operators see the pipeline: a real Prometheus scrapes a running stack, loads the alert
rules, and finds every series the dashboard and the alerts query."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from monitoring_queries import STANDARD, monitoring_queries, queried_series
from stack_helpers import fleet as _fleet
from stack_helpers import submit as _submit

from tsfl.runtime import stack
from tsfl.runtime.broker import free_port, start_local_broker, wait_for_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
BASE = {"seed": 2, "rounds": 2, "clients": {"count": 6, "per_round": 6},
        "model": {"kind": "logreg"}, "training": {"lr": 0.1, "epochs": 1, "batch_size": 16},
        "round": {"deadline_s": 120}}
JOBS = [  # a robust job (the byzantine stage judges) and a DP job (a privacy budget)
    {**BASE, "name": "obs-robust",
     "robust": {"aggregator": "trimmed_mean", "num_malicious": 1}},
    {**BASE, "name": "obs-dp",
     "privacy": {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 1.0,
                 "target_epsilon": 50.0}},
]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory):
    broker = start_local_broker()
    directory = tmp_path_factory.mktemp("obs-stack")
    state = stack.up(directory, kafka=broker.address, database=None, grpc_port=free_port())
    mp = pytest.MonkeyPatch()
    mp.setenv("TSFL_ADMIN_TOKEN", state.admin_token)  # the stack's operator token
    try:
        yield state
    finally:
        mp.undo()
        stack.down(directory)
        broker.stop()


@pytest.fixture(scope="module")
def prometheus(running_stack, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Prometheus is needed (Debian's prometheus package; .ci/run installs it)")
    workdir = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", workdir / "alerts.yml")
    targets = [e["metrics"] for e in running_stack.services.values()]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({
        # a busy 2-core machine can take a while to answer a scrape
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s",
                   "evaluation_interval": "2s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "tsfl", "static_configs": [{"targets": targets}]}]}))
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "wb"))  # noqa: SIM115
    try:
        assert wait_for_port("127.0.0.1", port, 60), (workdir / "prometheus.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def after_jobs(running_stack, prometheus):
    """Run the jobs on the stack, then give Prometheus a few scrapes."""
    for job in JOBS:
        job_id = _submit(running_stack.grpc, job)
        assert sum(_fleet(running_stack.grpc, job_id, job)) == 2 * 6
    deadline = time.monotonic() + 90
    while True:  # the last release's evaluation lands just after the job ends
        series = _series(prometheus, "tsfl_model_accuracy")
        if len({s.get("tsfl_job") for s in series}) == len(JOBS):
            break
        assert time.monotonic() < deadline, series
        time.sleep(1)
    return prometheus


def _series(base: str, name: str) -> list[dict]:
    query = urllib.parse.urlencode({"match[]": name})
    return _get(f"{base}/api/v1/series?{query}")["data"]


def test_every_service_is_scraped(after_jobs):
    deadline = time.monotonic() + 60  # a scrape that timed out under load is retried
    while True:
        targets = _get(f"{after_jobs}/api/v1/targets")["data"]["activeTargets"]
        if len(targets) == 6 and all(t["health"] == "up" for t in targets):
            break
        assert time.monotonic() < deadline, [(t["scrapeUrl"], t["health"], t["lastError"])
                                             for t in targets]
        time.sleep(1)


def test_every_series_the_dashboard_and_alerts_query_exists(after_jobs):
    used = set().union(*(queried_series(e) for e in monitoring_queries()))
    missing = [name for name in sorted(used) if not _series(after_jobs, name)]
    assert not missing, f"queried, but not in a real scrape: {missing}"
    assert used - STANDARD  # the check covered our own series, not only Prometheus's


def test_labels_are_bounded_no_device_ids(after_jobs):
    for name in ("tsfl_updates_total", "tsfl_rounds_total", "tsfl_model_accuracy"):
        for s in _series(after_jobs, name):
            assert set(s) <= {"__name__", "job", "instance", "tsfl_job", "stage", "outcome",
                              "direction", "otel_scope_name", "otel_scope_version",
                              "otel_scope_schema_url"}, s


def test_alert_rules_load_and_the_values_make_sense(after_jobs):
    groups = _get(f"{after_jobs}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 6 and all(r["health"] == "ok" for r in rules), rules
    query = urllib.parse.urlencode({"query": "tsfl_model_accuracy"})
    values = {v["metric"]["tsfl_job"]: float(v["value"][1]) for v in
              _get(f"{after_jobs}/api/v1/query?{query}")["data"]["result"]}
    assert len(values) == len(JOBS) and all(0 <= v <= 1 for v in values.values()), values
    robust = [v for job, v in values.items() if job.startswith("obs-robust")]
    assert robust and robust[0] > 0.15, values  # above chance (0.1); the DP job is noisy
    query = urllib.parse.urlencode({"query": "tsfl_privacy_budget_consumption"})
    budget = _get(f"{after_jobs}/api/v1/query?{query}")["data"]["result"]
    assert budget and 0 < float(budget[0]["value"][1]) < 1
