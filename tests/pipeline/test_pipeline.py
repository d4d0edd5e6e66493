"""Coordinator and aggregator roles over the memory bus with a real store."""

import asyncio

import msgpack
import numpy as np
import pytest

from tsfl.config import parse_job
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.pipeline.aggregator import Aggregator
from tsfl.pipeline.roles import LocalPipeline
from tsfl.storage import Store
from tsfl.wire import encode_update

LAYOUT = ParamLayout([("w", (6,), "float32")])
JOB = "job-1"


class Harness:
    def __init__(self, tmp_path, **spec):
        self.tmp_path = tmp_path
        self.spec = parse_job({"name": "p", "clients": {"count": 4, "per_round": 4}, **spec})

    async def __aenter__(self):
        self.store = await Store.open(f"sqlite:///{self.tmp_path / 'p.db'}")
        self.pipeline = await LocalPipeline.in_memory(self.store)
        self.bus = self.pipeline.bus
        self.coord = self.pipeline.coordinator
        await self.coord.submit_job(JOB, self.spec, LAYOUT, np.zeros(6, np.float32))
        for c in CLIENTS:
            await self.coord.register_device(JOB, c, "token-" + c)
        return self

    async def restart_aggregator(self):
        await self.pipeline.roles["aggregator"].stop()
        self.pipeline.roles["aggregator"] = Aggregator(self.bus, self.store)
        await self.pipeline.roles["aggregator"].start()

    async def __aexit__(self, *exc):
        await self.pipeline.stop()
        await self.store.close()

    def update(self, client, value, n=10, rnd=1, version=0, delta=None):
        d = np.full(6, value, np.float32) if delta is None else delta
        return encode_update(Update(JOB, rnd, client, version, n, d, {"train_loss": 1.0}),
                             LAYOUT)


CLIENTS = ["c0", "c1", "c2", "c3"]


async def test_round_with_bad_uploads_completes_with_the_good_ones(tmp_path):
    async with Harness(tmp_path, round={"quorum": 0.75}) as h:
        cohort = await h.coord.open_round(JOB)
        assert sorted(cohort) == CLIENTS
        up = h.coord.upload
        assert (await up("c0", h.update("c0", 1.0, n=10))).accepted
        codes = {
            "malformed": await up("c1", b"\x00garbage"),
            "wrong_round": await up("c1", h.update("c1", 1.0, rnd=7)),
            "stale_model": await up("c1", h.update("c1", 1.0, version=3)),
            "not_selected": await up("intruder", h.update("intruder", 1.0)),
            "identity": await up("c2", h.update("c1", 1.0)),
            "unknown_job": await up("c1", h.update("c1", 1.0).replace(JOB.encode(),
                                                                        b"job-9")),
            "nonfinite": await up("c1", h.update("c1", 0, delta=np.full(6, np.nan, np.float32))),
        }
        for code, receipt in codes.items():
            assert not receipt.accepted and receipt.code == code, (code, receipt)
        # a duplicate of an accepted update is refused and never counts twice
        dup = await up("c0", h.update("c0", 1.0, n=10))
        assert (dup.accepted, dup.code) == (False, "duplicate")
        assert (await up("c2", h.update("c2", 3.0, n=30))).accepted
        assert (await up("c3", h.update("c3", 5.0, n=0 + 20))).accepted  # quorum -> closes
        result = await asyncio.wait_for(h.coord.wait_round(JOB), 5)
        assert result.ok and sorted(result.accepted) == ["c0", "c2", "c3"]
        assert result.dropped == ["c1"]
        expected = (10 * 1.0 + 30 * 3.0 + 20 * 5.0) / 60
        np.testing.assert_allclose(h.coord.model_vector(JOB), expected, rtol=1e-6)
        parts = {p["client_id"]: p["status"] for p in await h.store.list_participants(JOB, 1)}
        assert parts == {"c0": "accepted", "c1": "dropped", "c2": "accepted",
                         "c3": "accepted"}
        trail = await h.store.audit_trail(JOB)
        refused = [e["payload"]["code"] for e in trail if e["kind"] == "upload.refused"]
        assert set(refused) == {"wrong_round", "stale_model", "not_selected", "identity",
                                "duplicate", "nonfinite"}
        system = [e["payload"]["code"] for e in await h.store.audit_trail("_system")]
        assert system == ["malformed", "unknown_job"]
        assert await h.store.verify_audit(JOB) == (True, "ok")


async def test_deadline_closes_with_partial_cohort_and_marks_dropouts(tmp_path):
    async with Harness(tmp_path, round={"quorum": 1.0, "deadline_s": 0.2,
                                        "min_updates": 2}) as h:
        await h.coord.open_round(JOB)
        await h.coord.upload("c0", h.update("c0", 2.0))
        await h.coord.upload("c1", h.update("c1", 4.0))
        result = await asyncio.wait_for(h.coord.wait_round(JOB), 5)
        assert result.ok and sorted(result.dropped) == ["c2", "c3"]
        np.testing.assert_allclose(h.coord.model_vector(JOB), 3.0)
        late = await h.coord.upload("c2", h.update("c2", 9.0))
        assert not late.accepted and late.code == "round_closed"


async def test_too_few_updates_by_the_deadline_fails_the_round(tmp_path):
    async with Harness(tmp_path, round={"deadline_s": 0.1, "min_updates": 3}) as h:
        await h.coord.open_round(JOB)
        await h.coord.upload("c0", h.update("c0", 2.0))
        result = await asyncio.wait_for(h.coord.wait_round(JOB), 5)
        assert not result.ok and "too few updates" in result.reason
        assert (await h.store.get_round(JOB, 1))["state"] == "FAILED"
        np.testing.assert_allclose(h.coord.model_vector(JOB), 0.0)  # nothing released


async def test_restarted_aggregator_refolds_the_open_round_exactly_once(tmp_path):
    async with Harness(tmp_path) as h:
        await h.coord.open_round(JOB)
        for i, c in enumerate(CLIENTS[:3]):
            assert (await h.coord.upload(c, h.update(c, float(i + 1)))).accepted
        await asyncio.sleep(0.05)  # the aggregator folds them...
        await h.restart_aggregator()  # ...dies before the round closes, and comes back
        assert (await h.coord.upload("c3", h.update("c3", 4.0))).accepted
        result = await asyncio.wait_for(h.coord.wait_round(JOB), 5)
        assert result.ok and sorted(result.accepted) == CLIENTS
        np.testing.assert_allclose(h.coord.model_vector(JOB), 2.5, rtol=1e-6)


async def test_second_round_uses_the_new_model_and_strategy_state(tmp_path):
    async with Harness(tmp_path, strategy={"name": "fedavgm", "momentum": 0.5}) as h:
        for rnd, value in ((1, 1.0), (2, 1.0)):
            await h.coord.open_round(JOB)
            for c in CLIENTS:
                await h.coord.upload(c, h.update(c, value, rnd=rnd, version=rnd - 1))
            assert (await h.coord.wait_round(JOB)).ok
        # v1 = 1 -> x1 = 1; v2 = 0.5 + 1 -> x2 = 2.5
        np.testing.assert_allclose(h.coord.model_vector(JOB), 2.5)
        ckpt = await h.store.latest_checkpoint(JOB)
        assert ckpt["version"] == 2 and "velocity" in ckpt["strategy_state"]


async def test_unknown_topics_of_garbage_do_not_stop_the_aggregator(tmp_path):
    async with Harness(tmp_path) as h:
        await h.bus.publish("tsfl.updates.raw", msgpack.packb({"v": 1, "kind": "update"}))
        await h.bus.publish("tsfl.rounds", b"\xc1")
        await h.coord.open_round(JOB)
        for c in CLIENTS:
            await h.coord.upload(c, h.update(c, 1.0))
        assert (await asyncio.wait_for(h.coord.wait_round(JOB), 5)).ok


@pytest.mark.parametrize("quorum,expected_uploads", [(0.5, 2), (0.75, 3)])
async def test_quorum_closes_early(tmp_path, quorum, expected_uploads):
    async with Harness(tmp_path, round={"quorum": quorum}) as h:
        await h.coord.open_round(JOB)
        for c in CLIENTS:
            await h.coord.upload(c, h.update(c, 1.0))
        result = await asyncio.wait_for(h.coord.wait_round(JOB), 5)
        assert len(result.accepted) == expected_uploads
        assert len(result.dropped) == 4 - expected_uploads


async def test_aggregator_refuses_nonfinite_updates_that_reach_the_bus(tmp_path):
    """Defence in depth: an update that skipped the coordinator's checks is refused too."""
    from tsfl.bus import topics

    async with Harness(tmp_path, round={"quorum": 0.75}) as h:
        await h.coord.open_round(JOB)
        bad = h.update("c3", 0, delta=np.full(6, np.inf, np.float32))
        await h.bus.publish(topics.UPDATES_CLIPPED, bad, key=b"%s:1:c3" % JOB.encode())
        for c in CLIENTS[:3]:
            await h.coord.upload(c, h.update(c, 2.0))
        result = await asyncio.wait_for(h.coord.wait_round(JOB), 5)
        assert result.ok and sorted(result.accepted) == ["c0", "c1", "c2"]
        np.testing.assert_allclose(h.coord.model_vector(JOB), 2.0)
        trail = await h.store.audit_trail(JOB)
        assert any(e["kind"] == "update.rejected" and "nonfinite" in e["payload"]["reason"]
                   for e in trail)


async def test_a_closing_job_never_commits_past_another_jobs_held_updates(tmp_path):
    """Two jobs share the update partitions: job 2's updates wait for its round while job
    1's round closes. A restart after that must read job 2's updates again (a commit of
    job 1's offsets would otherwise pass them and lose them)."""
    async with Harness(tmp_path) as h:
        other = "job-2"
        await h.coord.submit_job(other, h.spec, LAYOUT, np.zeros(6, np.float32))
        for c in CLIENTS:
            await h.coord.register_device(other, c, "token-" + c)
        await h.coord.open_round(JOB)
        await h.coord.open_round(other)

        def update2(client, value):
            return encode_update(Update(other, 1, client, 0, 10, np.full(6, value, np.float32)),
                                 LAYOUT)

        for i, c in enumerate(CLIENTS[:3]):
            assert (await h.coord.upload(c, update2(c, float(i + 1)))).accepted
        for c in CLIENTS:
            assert (await h.coord.upload(c, h.update(c, 1.0))).accepted
        assert (await asyncio.wait_for(h.coord.wait_round(JOB), 5)).ok
        await h.restart_aggregator()
        assert (await h.coord.upload("c3", update2("c3", 4.0))).accepted
        result = await asyncio.wait_for(h.coord.wait_round(other), 5)
        assert result.ok and sorted(result.accepted) == CLIENTS
        np.testing.assert_allclose(h.coord.model_vector(other), 2.5, rtol=1e-6)


async def test_coordinator_dying_between_the_release_and_reading_the_model_resumes(tmp_path):
    """The release stage checkpointed round 1's model (v1); the coordinator died before it
    read the model back. The restarted coordinator resumes on v0 and completes round 1
    from the model record, which was never committed, instead of waiting forever."""
    from tsfl.pipeline.coordinator import Coordinator

    async with Harness(tmp_path) as h:
        old = h.coord
        hang = asyncio.Event()

        async def dies_on_the_model(data):
            await hang.wait()  # the process is gone before it reads the model

        old._on_model = dies_on_the_model
        await old.open_round(JOB)
        for i, c in enumerate(CLIENTS):
            assert (await old.upload(c, h.update(c, float(i + 1)))).accepted
        for _ in range(500):
            meta = await h.store.latest_checkpoint_meta(JOB)
            if meta and meta[0] == 1:
                break
            await asyncio.sleep(0.01)
        assert meta == (1, 1)
        await old.stop()
        new = h.pipeline.roles["coordinator"] = Coordinator(h.bus, h.store)
        await new.start()
        await new.resume_job(JOB)
        result = await asyncio.wait_for(new.wait_round(JOB), 5)
        assert result.ok and result.version == 1 and sorted(result.accepted) == CLIENTS
        np.testing.assert_allclose(new.model_vector(JOB), 2.5, rtol=1e-6)
        assert (await h.store.get_round(JOB, 1))["state"] == "PUBLISHED"
        await new.open_round(JOB)  # and the job goes on, on v1
        assert (await new.upload("c0", h.update("c0", 1.0, rnd=2, version=1))).accepted


async def test_a_job_whose_every_round_failed_ends_failed(tmp_path):
    """Two rounds, no device answers: fewer failures than the three-in-a-row stop, but
    nothing was ever released — the job is FAILED, not COMPLETED."""
    from tsfl.pipeline.driver import drive_rounds

    async with Harness(tmp_path, rounds=2, round={"deadline_s": 0.2}) as h:
        outcome = await asyncio.wait_for(drive_rounds(h.coord, JOB, 2), 20)
        assert [r.ok for r in outcome.results] == [False, False]
        assert outcome.status == "FAILED" and outcome.reason.startswith("no round succeeded")
        assert (await h.store.get_job(JOB))["status"] == "FAILED"
