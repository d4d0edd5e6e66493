"""Vertical parties as separate party runtimes (tsfl.sdk.vertical) through the
coordinator's relay (tsfl.rpc.vertical_service) over real gRPC: the same result as the
embedded run, the job's record in the store, what the relaying coordinator learns, and
the relay's refusals."""

from __future__ import annotations

import asyncio
import threading

import grpc
import msgpack
import pytest
import yaml
from grpc_stack import coordinator_grpc

from tsfl.api import resolve_spec
from tsfl.config import ConfigError, bundled_example
from tsfl.rpc.party_relay import PartyRelay
from tsfl.rpc.vertical_client import PartyClient, TermsMismatch
from tsfl.runtime.vertical import job_salt, run_vertical
from tsfl.runtime.vertical_jobs import RESTARTED
from tsfl.sdk.vertical import run_party
from tsfl.sim.vertical import vertical_tables
from tsfl.vertical.group import hash_to_group
from tsfl.vertical.psi import HEADER

RELAY = "/tsfl.vertical.PartyRelay/"


def spec_yaml(spec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True))


def run_parties(address: str, job_id: str, spec, token: str = "enrol") -> dict[str, dict]:
    """Every party in a thread of its own, each with its own client (blocking)."""
    tables = vertical_tables(spec)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def party(name: str) -> None:
        try:
            with PartyClient(address, job_id, name, token, spec=spec) as box:
                results[name] = run_party(box.spec, name, tables.parties[name], box,
                                          salt=job_salt(box.spec), test_ids=tables.test_ids,
                                          num_classes=box.num_classes, timeout=60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=party, args=(n,)) for n in tables.parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def assert_equal_runs(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert (a["bytes_up"], a["bytes_down"]) == (b["bytes_up"], b["bytes_down"])


async def wait_status(store, job_id: str, timeout: float = 30) -> dict:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (row := await store.get_job(job_id))["status"] == "RUNNING":
        assert loop.time() < end, "the job is still RUNNING"
        await asyncio.sleep(0.1)
    return row


@pytest.mark.parametrize("extra", [{}, {"model": "split_nn"}])
async def test_parties_through_the_coordinator_equal_the_embedded_run(tmp_path, monkeypatch,
                                                                      extra):
    spec = resolve_spec(bundled_example("vertical-breast-cancer"),
                        {"rounds": 2, "vertical": extra})
    embedded = run_vertical(spec, tmp_path / "embedded")
    carried: list[bytes] = []  # everything the coordinator relayed
    requests: list[tuple[str, int, int]] = []  # (to, count in header, length): PSI requests
    real_send = PartyRelay.send

    async def recording(self, job_id, me, dst, kind, payload):
        carried.append(bytes(payload))
        if kind == "psi.request":
            requests.append((dst, HEADER.unpack_from(payload)[5], len(payload)))
        await real_send(self, job_id, me, dst, kind, payload)

    monkeypatch.setattr(PartyRelay, "send", recording)
    async with coordinator_grpc(tmp_path / "v.db") as stack:
        job_id = (await stack.jobs.submit(spec_yaml(spec), "enrol")).job_id
        results = await asyncio.to_thread(run_parties, stack.address, job_id, spec)
        row = await wait_status(stack.store, job_id)
        rounds = await stack.store.list_rounds(job_id)
        trail = await stack.store.audit_trail(job_id)
        chain_ok, _ = await stack.store.verify_audit(job_id)
    got = results[spec.vertical.label_party]["metrics"]
    assert_equal_runs(got, embedded.metrics)
    inter = embedded.vertical["psi"]["intersection"]
    assert {r["intersection"] for r in results.values()} == {inter}
    # the job's record: COMPLETED, one PUBLISHED round per epoch with its metrics
    assert (row["status"], row["reason"]) == ("COMPLETED", None) and chain_ok
    assert [(r["number"], r["state"]) for r in rounds] == [(1, "PUBLISHED"), (2, "PUBLISHED")]
    assert [r["metrics"]["test_accuracy"] for r in rounds] == [m["test_accuracy"]
                                                                for m in got]
    kinds = [e["kind"] for e in trail]
    assert kinds.count("vertical.psi") == 4 and kinds.count("vertical.epoch") == 2
    psi = {e["payload"]["party"]: e["payload"] for e in trail if e["kind"] == "vertical.psi"}
    assert psi["hospital"]["set_size"] == len(vertical_tables(spec).parties["hospital"].ids)
    relayed = next(e["payload"] for e in trail if e["kind"] == "vertical.relayed")
    assert relayed["bytes"]["activations"] == sum(m["bytes_up"] for m in got)
    assert relayed["bytes"]["gradients"] == sum(m["bytes_down"] for m in got)
    assert sum(relayed["bytes"].values()) == sum(len(m) for m in carried)
    # what it learns: each set's size and the leader's chained intersections (in the PSI
    # requests' headers, and their lengths), message counts and lengths
    t = {n: set(x.ids) for n, x in vertical_tables(spec).parties.items()}
    chain = [t["hospital"], t["hospital"] & t["lab-a"], t["hospital"] & t["lab-a"] & t["lab-b"]]
    assert [r[:2] for r in requests] == [(p, len(c)) for p, c in
                                         zip(("lab-a", "lab-b", "lab-c"), chain, strict=True)]
    assert len({r[2] - 32 * r[1] for r in requests}) == 1  # length = constant + 32 · count
    # what it carried names no entity: the coordinator knows the salt and every id, yet
    # none of H(salt, id) nor any raw id appears in the PSI or training messages
    universe = [f"entity-{i:06d}".encode() for i in range(569)]
    blob = b"".join(carried)
    assert not any(h in blob for h in hash_to_group(job_salt(spec), universe))
    assert not any(i in blob for i in universe)


async def test_a_vertical_job_is_admitted_only_as_a_deployment_runs_it(tmp_path):
    base = resolve_spec(bundled_example("vertical-breast-cancer"), {"rounds": 1})
    async with coordinator_grpc(tmp_path / "a.db") as stack:
        for change, needle in [({"vertical": {"noise": "seeded", "label_dp": {"epsilon": 1}}},
                                "vertical.noise"),
                               ({"vertical": {"psi": {"mode": "cardinality"}}},
                                "vertical.psi.mode"),
                               ({"data": {"dataset": "npz", "path": "../../etc/x.npz"}},
                                "data.path")]:
            with pytest.raises(ConfigError, match=needle):
                await stack.jobs.submit(spec_yaml(resolve_spec(base, change)), "enrol")
        assert await stack.store.list_jobs() == []


def _call(channel: grpc.Channel, method: str, req: dict, md=()) -> grpc.StatusCode:
    try:
        channel.unary_unary(RELAY + method)(msgpack.packb(req), timeout=10, metadata=md)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_the_relay_refuses_strangers_bad_messages_and_times_out(tmp_path):
    spec = resolve_spec(bundled_example("vertical-breast-cancer"), {"rounds": 2})
    C = grpc.StatusCode
    async with coordinator_grpc(tmp_path / "r.db") as stack:
        stack.jobs.registration_timeout_s = 3.0
        stack.jobs.vertical.relay.max_queue = 2
        job = (await stack.jobs.submit(spec_yaml(spec), "enrol")).job_id

        def probe() -> dict:
            out = {}
            a = PartyClient(stack.address, job, "lab-a", "enrol")
            h = PartyClient(stack.address, job, "hospital", "enrol")
            with grpc.insecure_channel(stack.address) as ch:
                reg = {"job": job, "party": "lab-b", "enrollment_token": "enrol"}
                out["register"] = [_call(ch, "Register", {**reg, **bad}) for bad in (
                    {"enrollment_token": "wrong"}, {"party": "mallory"}, {"job": "nope"},
                    {"party": "x" * 1000})]
                md = a._md
                send = {"job": job, "dst": "hospital", "kind": "activations", "payload": b"x"}
                out["send"] = [_call(ch, "Send", {**send, **bad}, md) for bad in (
                    {"dst": "mallory"}, {"dst": "lab-a"}, {"kind": "DROP TABLE"},
                    {"payload": "text"}, {"payload": b"x" * (65 << 20)})]
                out["anonymous"] = _call(ch, "Send", send, (("x-tsfl-device", "lab-a"),
                                                            ("authorization", "Bearer no")))
                garbage = ch.unary_unary(RELAY + "Send")
                try:
                    garbage(b"\xc1garbage", timeout=5, metadata=md)
                except grpc.RpcError as exc:
                    out["garbage"] = exc.code()
                out["bounded"] = [_call(ch, "Send", send, md) for _ in range(3)]
                recv = {"job": job, "src": "lab-a", "kind": "activations"}
                out["recv_wait"] = _call(ch, "Receive", {**recv, "timeout": 1e9}, h._md)
                out["recv_empty"] = _call(ch, "Receive", {**recv, "kind": "gradients",
                                                          "timeout": 0}, h._md)
                out["report"] = [_call(ch, "Report", {"job": job, **r}, md) for r in (
                    {"kind": "epoch", "body": {"round": 1}},  # not the label party
                    {"kind": "psi", "body": {"set_size": -1, "intersection": 0}},
                    {"kind": "what", "body": {}})]
            out["delivered"] = h.recv("lab-a", "activations", 5)
            a.close()
            h.close()
            return out

        out = await asyncio.to_thread(probe)
        row = await wait_status(stack.store, job)  # lab-b and lab-c never enrolled
    assert out["register"] == [C.UNAUTHENTICATED, C.PERMISSION_DENIED, C.NOT_FOUND,
                               C.INVALID_ARGUMENT]
    assert out["send"] == [C.PERMISSION_DENIED, C.PERMISSION_DENIED, C.INVALID_ARGUMENT,
                           C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED]
    assert out["anonymous"] == C.UNAUTHENTICATED and out["garbage"] == C.INVALID_ARGUMENT
    assert out["bounded"] == [C.OK, C.OK, C.RESOURCE_EXHAUSTED]  # at most 2 in flight
    assert (out["recv_wait"], out["recv_empty"]) == (C.INVALID_ARGUMENT, C.DEADLINE_EXCEEDED)
    assert out["report"] == [C.INVALID_ARGUMENT] * 3
    assert out["delivered"] == b"x"
    assert row["status"] == "FAILED" and "['lab-b', 'lab-c'] did not enrol" in row["reason"]


async def test_cancel_terms_and_a_party_that_gives_up(tmp_path):
    spec = resolve_spec(bundled_example("vertical-breast-cancer"), {"rounds": 2})
    other = resolve_spec(spec, {"vertical": {"label_dp": {"epsilon": 50.0}}})
    async with coordinator_grpc(tmp_path / "c.db") as stack:
        job = (await stack.jobs.submit(spec_yaml(spec), "enrol")).job_id
        with pytest.raises(TermsMismatch, match="vertical"):  # not what lab-a agreed to
            await asyncio.to_thread(PartyClient, stack.address, job, "lab-a", "enrol",
                                    spec=other)
        assert await stack.jobs.cancel(job, by="admin:test")
        row = await stack.store.get_job(job)
        assert (row["status"], row["reason"]) == ("CANCELLED", "cancelled by admin:test")
        assert not stack.jobs.vertical.relay.is_open(job)
        with pytest.raises(grpc.RpcError) as ended:  # the job is over: nothing to enrol in
            await asyncio.to_thread(PartyClient, stack.address, job, "lab-a", "enrol")
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND
        job2 = (await stack.jobs.submit(spec_yaml(spec), "enrol")).job_id

        def give_up() -> None:
            with PartyClient(stack.address, job2, "lab-b", "enrol") as box:
                box.report("end", {"status": "FAILED", "reason": "my data moved"})

        await asyncio.to_thread(give_up)
        row2 = await wait_status(stack.store, job2)
        # a coordinator restart: the relay was in memory, so the job cannot resume
        job3 = (await stack.jobs.submit(spec_yaml(spec), "enrol")).job_id
        await stack.jobs.vertical.stop()  # the old process's state is gone
        await stack.jobs.resume_all()
        row3 = await stack.store.get_job(job3)
    assert (row2["status"], row2["reason"]) == ("FAILED", "party lab-b: my data moved")
    assert (row3["status"], row3["reason"]) == ("FAILED", RESTARTED)
