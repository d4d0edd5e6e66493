"""The admin API against a hostile network peer (issue #16): no credential, a device's
credential, the wrong role, another submitter's job — each refused with a precise status;
actions audited under the caller's name; tokens stored as salted hashes. Real gRPC server
over the embedded pipeline and a SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
import yaml
from grpc_stack import coordinator_grpc, status_of

from tsfl.rpc.admin_auth import new_token
from tsfl.v1 import admin_pb2, admin_pb2_grpc, device_pb2, device_pb2_grpc

SPEC = yaml.safe_dump({"name": "owned", "rounds": 2, "clients": {"count": 4, "per_round": 2},
                       "model": {"kind": "logreg"}})


def _md(token: str | None) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def _scenario(tmp_path) -> dict:
    async with coordinator_grpc(tmp_path / "auth.db") as stack:
        return await _play(stack)


async def _play(stack) -> dict:
    store = stack.store
    tokens = {}
    for name, role in (("root", "operator"), ("auditor", "viewer"), ("alice", "submitter"),
                       ("bob", "submitter"), ("gone", "operator")):
        tokens[name], row = new_token(name, role)
        await store.add_admin_token(row)
    await store.revoke_admin_token(tokens["gone"].split(".")[1])
    out: dict = {"tokens": tokens}
    channel = stack.channel
    admin = admin_pb2_grpc.AdminServiceStub(channel)

    async def code(call, request, token) -> grpc.StatusCode:
        return await status_of(call(request, metadata=_md(token), timeout=30))

    submit = admin_pb2.SubmitJobRequest(spec_yaml=SPEC, enrollment_token="enrol")
    out["anonymous_submit"] = await code(admin.SubmitJob, submit, None)
    out["revoked_submit"] = await code(admin.SubmitJob, submit, tokens["gone"])
    out["forged"] = await code(admin.SubmitJob, submit,
                               tokens["root"][:-4] + "AAAA")
    out["viewer_submit"] = await code(admin.SubmitJob, submit, tokens["auditor"])
    job = await admin.SubmitJob(submit, metadata=_md(tokens["alice"]), timeout=120)
    ref = admin_pb2.JobRef(job_id=job.job_id)
    # a device's session credential is not an admin identity
    device = device_pb2_grpc.DeviceServiceStub(channel)
    session = (await device.Register(device_pb2.RegisterRequest(
        job_id=job.job_id, device_id="d1", enrollment_token="enrol"))).session_token
    out["device_session"] = await code(admin.GetJob, ref, session)
    out["anonymous_cancel"] = await code(admin.CancelJob, ref, None)
    out["every_method"] = await _every_method(admin, job.job_id, tokens, session)
    out["bob_reads"] = await code(admin.GetJob, ref, tokens["bob"])
    out["bob_cancels"] = await code(admin.CancelJob, ref, tokens["bob"])
    out["viewer_reads"] = await code(admin.GetJob, ref, tokens["auditor"])
    out["viewer_cancels"] = await code(admin.CancelJob, ref, tokens["auditor"])
    out["missing_audit"] = await code(admin.QueryAudit,
                                      admin_pb2.JobRef(job_id="no-such-job"),
                                      tokens["root"])
    out["missing_participants"] = await code(
        admin.ListParticipants, admin_pb2.ParticipantsRequest(job_id="no-such-job"),
        tokens["root"])
    # listing: a submitter sees its own jobs, an operator every job
    root_job = await admin.SubmitJob(submit, metadata=_md(tokens["root"]), timeout=120)
    out["alice_lists"] = [j.job_id for j in (await admin.ListJobs(
        admin_pb2.ListJobsRequest(), metadata=_md(tokens["alice"]))).jobs]
    out["root_lists"] = [j.job_id for j in (await admin.ListJobs(
        admin_pb2.ListJobsRequest(status="RUNNING"), metadata=_md(tokens["root"]))).jobs]
    out["bad_status"] = await code(admin.ListJobs, admin_pb2.ListJobsRequest(status="x"),
                                   tokens["root"])
    out["anonymous_list"] = await code(admin.ListJobs, admin_pb2.ListJobsRequest(), None)
    out["layout"] = (await admin.GetJob(ref, metadata=_md(tokens["alice"]))).layout_json
    out["jobs"] = (job.job_id, root_job.job_id)
    await admin.CancelJob(admin_pb2.JobRef(job_id=root_job.job_id),
                          metadata=_md(tokens["root"]))
    # quotas: one running job per submitter
    policy = stack.jobs.policy
    stack.jobs.policy = dataclasses.replace(policy, max_jobs_per_owner=1)
    out["alice_second_job"] = await code(admin.SubmitJob, submit, tokens["alice"])
    stack.jobs.policy = dataclasses.replace(policy, max_running_jobs=1)
    out["bob_past_global_quota"] = await code(admin.SubmitJob, submit, tokens["bob"])
    stack.jobs.policy = policy
    out["alice_cancels"] = await code(admin.CancelJob, ref, tokens["alice"])
    out["status"] = (await admin.GetJob(ref, metadata=_md(tokens["root"]))).status
    generated = await admin.SubmitJob(admin_pb2.SubmitJobRequest(spec_yaml=SPEC),
                                      metadata=_md(tokens["root"]), timeout=120)
    out["generated_token"] = generated.enrollment_token
    await admin.CancelJob(admin_pb2.JobRef(job_id=generated.job_id),
                          metadata=_md(tokens["root"]))
    out["audit"] = await store.audit_trail(job.job_id)
    out["row"] = await store.get_job(job.job_id)
    out["token_rows"] = [await store.admin_token(t.split(".")[1])
                         for t in tokens.values()]
    return out


async def _every_method(admin, job_id: str, tokens: dict, session: str) -> dict:
    """Each AdminService method, found in the service's descriptor (a method added later
    is covered too), called with no credential, a device's session token and another
    submitter's token: ``{method: (anonymous, device, bob)}``."""
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    out = {}
    for method in service.methods:
        request = getattr(admin_pb2, method.input_type.name)()
        if "job_id" in method.input_type.fields_by_name:
            request.job_id = job_id
        call = getattr(admin, method.name)
        codes = []
        for token in (None, session, tokens["bob"]):
            if method.server_streaming:  # the first message, or the refusal
                stream = call(request, metadata=_md(token), timeout=30)
                codes.append(await status_of(stream.read()))
                stream.cancel()
            else:
                codes.append(await status_of(call(request, metadata=_md(token), timeout=30)))
        out[method.name] = tuple(codes)
    return out


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    return asyncio.run(_scenario(tmp_path_factory.mktemp("auth")))


def test_no_credential_no_admin_call(outcome):
    assert outcome["anonymous_submit"] == grpc.StatusCode.UNAUTHENTICATED
    assert outcome["anonymous_cancel"] == grpc.StatusCode.UNAUTHENTICATED
    assert outcome["forged"] == grpc.StatusCode.UNAUTHENTICATED
    assert outcome["revoked_submit"] == grpc.StatusCode.UNAUTHENTICATED


def test_a_device_credential_is_never_an_admin(outcome):
    assert outcome["device_session"] == grpc.StatusCode.UNAUTHENTICATED


def test_every_admin_method_is_authenticated_and_authorised_per_job(outcome):
    """Issue #16, finding 1: SubmitJob, GetJob, ListParticipants, QueryAudit, WatchJob
    and CancelJob answered a plain channel without credentials. Every method of the
    service now refuses no credential and a device's credential, and every method about
    one job refuses a submitter who does not own it."""
    S = grpc.StatusCode
    every = outcome["every_method"]
    assert {"SubmitJob", "GetJob", "CancelJob", "WatchJob", "ListRounds",
            "ListParticipants", "QueryAudit", "ListJobs"} <= set(every)
    for name, (anonymous, device, bob) in every.items():
        assert anonymous == device == S.UNAUTHENTICATED, name
        if name not in ("SubmitJob", "ListJobs"):  # about one job, which alice owns
            assert bob == S.PERMISSION_DENIED, name


def test_roles_and_ownership(outcome):
    assert outcome["viewer_submit"] == grpc.StatusCode.PERMISSION_DENIED
    assert outcome["bob_reads"] == grpc.StatusCode.PERMISSION_DENIED
    assert outcome["bob_cancels"] == grpc.StatusCode.PERMISSION_DENIED
    assert outcome["viewer_reads"] == grpc.StatusCode.OK
    assert outcome["viewer_cancels"] == grpc.StatusCode.PERMISSION_DENIED
    assert outcome["alice_cancels"] == grpc.StatusCode.OK
    assert outcome["status"] == "CANCELLED"
    assert outcome["row"]["owner"] == "alice"


def test_actions_are_audited_under_the_callers_name(outcome):
    by_kind = {e["kind"]: e for e in outcome["audit"]}
    assert by_kind["job.created"]["actor"] == "admin:alice"
    assert by_kind["job.cancel_requested"]["actor"] == "admin:alice"
    assert "admin:alice" in outcome["row"]["reason"]


def test_missing_jobs_are_not_found_not_empty(outcome):
    assert outcome["missing_audit"] == grpc.StatusCode.NOT_FOUND
    assert outcome["missing_participants"] == grpc.StatusCode.NOT_FOUND


def test_tokens_are_stored_as_salted_hashes(outcome):
    for token, row in zip(outcome["tokens"].values(), outcome["token_rows"], strict=True):
        secret = token.split(".")[2]
        assert secret not in str(row) and len(row["salt"]) == 32 and len(row["hash"]) == 64
    salts = {row["salt"] for row in outcome["token_rows"]}
    assert len(salts) == len(outcome["token_rows"])


def test_quotas_per_submitter_and_per_coordinator(outcome):
    assert outcome["alice_second_job"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert outcome["bob_past_global_quota"] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_enrolment_tokens_are_stored_as_salted_scrypt(outcome):
    import hashlib

    from tsfl.pipeline.credentials import enrollment_matches

    stored = outcome["row"]["enrollment_hash"]
    assert stored.startswith("scrypt:") and len(stored) <= 64
    assert hashlib.sha256(b"enrol").hexdigest() not in stored
    job_id = outcome["row"]["id"]
    assert enrollment_matches(job_id, "enrol", stored)
    assert not enrollment_matches(job_id, "enrol!", stored)
    assert not enrollment_matches("another-job", "enrol", stored)  # salted per job


def test_job_listing_is_authorised_per_job(outcome):
    alice_job, root_job = outcome["jobs"]
    assert outcome["alice_lists"] == [alice_job]
    assert outcome["root_lists"] == [root_job, alice_job]  # newest first
    assert outcome["bad_status"] == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome["anonymous_list"] == grpc.StatusCode.UNAUTHENTICATED


def test_get_job_gives_the_model_layout(outcome):
    import json

    layout = json.loads(outcome["layout"])
    assert layout and {"name", "shape"} <= set(layout[0])


def test_a_generated_enrolment_token_is_a_safe_cli_argument(outcome):
    """Issue #16, finding 9: a generated token starting with "-" broke ``--token TOKEN``
    (argparse took it for an option). Generated tokens are hex: never an option."""
    import argparse
    import re

    token = outcome["generated_token"]
    assert re.fullmatch(r"[0-9a-f]{48}", token)
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    assert parser.parse_args(["--token", token]).token == token
    assert all(t.startswith("tsfl-admin.") for t in outcome["tokens"].values())
