"""docs/security.md states the control plane's threat model (who may call what) and its
limits with their defaults (issue #16, "Done when"); the limits table is checked against
the code, so a changed default cannot leave the document behind."""

from __future__ import annotations

import inspect
from pathlib import Path

from tsfl.bus.liveness import BrokerWatch
from tsfl.config.base import MAX_CLIENTS, MAX_ROUNDS
from tsfl.config.training import RoundSpec
from tsfl.pipeline.job_state import NORM_MIN_HISTORY, NORM_WINDOW
from tsfl.rpc import admin_auth, admin_service, common, device_gate, device_uploads
from tsfl.rpc.guard import PeerLimiter, RefusalLog, valid_device_id
from tsfl.rpc.spool import UploadSpool
from tsfl.runtime import jobs
from tsfl.runtime.admission import AdmissionPolicy
from tsfl.runtime.service import ServiceConfig
from tsfl.spec_yaml import MAX_DEPTH, MAX_NODES, MAX_SCALAR, MAX_SPEC_BYTES
from tsfl.v1 import admin_pb2

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
GiB, MiB = 1024**3, 1024**2


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _table(title: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in _section(title).splitlines()
            if line.startswith("| ") and not line.startswith("|---")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def _svc() -> ServiceConfig:
    return ServiceConfig(name="coordinator", kafka="-", database="-")


def test_who_may_call_what_names_every_admin_method_and_role():
    table = _table("Who may call what")
    said = " ".join(" ".join(v) for v in table.values())
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    assert {m.name for m in service.methods} <= {w.strip("`,;.") for w in said.split()}
    assert {"**viewer**", "**submitter**", "**operator**"} <= set(table)
    assert any(v[0] == "none" for v in table.values())  # the anonymous peer is in it


def test_the_limits_table_gives_the_codes_defaults():
    policy, spool, svc = AdmissionPolicy(), UploadSpool(), _svc()
    limiter, refusals = PeerLimiter(), RefusalLog(lambda *_: None)  # type: ignore[arg-type,return-value]
    failures = inspect.signature(BrokerWatch.__init__).parameters["failures"].default
    assert svc.max_parameters == policy.max_parameters
    assert (svc.max_running_jobs, svc.max_jobs_per_owner) == (policy.max_running_jobs,
                                                              policy.max_jobs_per_owner)
    assert valid_device_id("d" * 128) and not valid_device_id("d" * 129)
    expected = {
        "spec size": f"{MAX_SPEC_BYTES // 1024} KiB",
        "spec nesting": f"{MAX_DEPTH} levels",
        "spec values": f"{MAX_NODES:,}",
        "spec scalar length": f"{MAX_SCALAR:,} characters",
        "clients (`clients.count`, `per_round`)": f"{MAX_CLIENTS:,}",
        "rounds": f"{MAX_ROUNDS:,}",
        "model parameters": f"{policy.max_parameters:,} "
                            f"({policy.max_parameters * 4 // GiB} GiB of float32)",
        "data file or checkpoint": f"{policy.max_data_bytes // GiB} GiB",
        "running jobs": f"{policy.max_running_jobs}",
        "running jobs of one submitter": f"{policy.max_jobs_per_owner}",
        "jobs one `ListJobs` returns": f"{admin_service.MAX_LISTED_JOBS:,}",
        "a verified admin token trusted for": f"{admin_auth._CACHE_S:.0f} s",
        "refused calls of one peer host":
            f"a burst of {limiter.burst:.0f}, then {limiter.rate:.0f} a second",
        "refusal audit rows": f"1 per (chain, kind, code) per {refusals.window_s:.0f} s",
        "device id": "1-128 characters",
        "a live device id is locked for":
            f"{device_gate.LIVE_S:.0f} s after its last authenticated call",
        "uploads in flight, all devices": f"{spool.max_bytes // GiB} GiB (declared sizes)",
        "uploads in flight, one device and job": f"{spool.per_device}",
        "a stream sending nothing is dropped after": f"{device_uploads.STREAM_IDLE_S:.0f} s",
        "a partial upload idle is dropped after": f"{spool.ttl_s:.0f} s",
        "one unary message": f"{common.MAX_UNARY_BYTES // MiB} MiB",
        "update-norm bound":
            f"{RoundSpec().norm_bound_factor:.0f} × the largest of the last {NORM_WINDOW} "
            f"rounds' median norms, from {NORM_MIN_HISTORY} rounds on; at most 1e4·√P",
        "broker probe": f"every {svc.broker_probe_s:.0f} s, answered within "
                        f"{svc.broker_timeout_s:.0f} s; {failures} failures make it "
                        "unreachable",
        "a job's start must be taken by the broker within":
            f"{jobs.SUBMIT_PUBLISH_S:.0f} s",
        "a repeated Kafka client line passes once per": f"{svc.log_repeat_s:.0f} s",
    }
    table = _table("Limits and their defaults")
    documented = {name: cells[0] for name, cells in table.items()}
    assert {k: documented.get(k) for k in expected} == expected
    # rows the code cannot state as a constant are played by the attack tests instead
    assert set(documented) - set(expected) == {"YAML anchors and aliases",
                                               "devices a job enrols"}
