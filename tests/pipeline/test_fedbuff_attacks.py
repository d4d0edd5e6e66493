"""FedBuff through the coordinator against its adversary: enrolled devices (one or many
ids) that replay uploads, hold training slots without answering, park uploads while a
release closes, or heartbeat instead of training. Each attack must fail (memory bus,
SQLite; the rules are in :mod:`tsfl.pipeline.coordinator_fedbuff`)."""

from __future__ import annotations

import asyncio

import numpy as np
from test_fedbuff_pipeline import JOB, Harness

from tsfl.config import parse_job
from tsfl.pipeline.coordinator_fedbuff import Buffer
from tsfl.pipeline.driver import drive_rounds


def _spec(rounds: int = 3, deadline: float = 30.0, **fedbuff):
    fb = {"buffer": 1, "concurrency": 2, "max_staleness": 5, "weighting": "constant",
          **fedbuff}
    return parse_job({"name": "fb", "rounds": rounds, "clients": {"count": 4, "per_round": 4},
                      "strategy": {"name": "fedavg", "mode": "async", "fedbuff": fb},
                      "round": {"deadline_s": deadline}})


async def test_copies_of_one_upload_count_once(tmp_path):
    """Three copies of one update sent at once: the first closes release 1; the copies
    find their task answered instead of joining releases 2 and 3."""
    async with Harness(tmp_path, _spec()) as h:
        await h.coord.open_round(JOB)
        task = await h.coord.get_task("c0", JOB)
        copies = [asyncio.create_task(h.send("c0", task, 1.0, 10)) for _ in range(3)]
        await asyncio.wait_for(h.coord.wait_round(JOB), 10)
        await h.coord.open_round(JOB)
        receipts = await asyncio.wait_for(asyncio.gather(*copies), 10)
        assert sorted((r.accepted, r.code) for r in receipts) == [
            (False, "not_selected"), (False, "not_selected"), (True, "ok")]
        np.testing.assert_allclose(h.coord.model_vector(JOB), 1.0)  # moved once
        parts = [(p["round"], p["client_id"]) for p in await h.store.list_participants(JOB)]
        assert parts == [(1, "c0")]


async def test_devices_holding_every_slot_cannot_starve_the_honest_ones(tmp_path):
    """Two ids take both slots the moment they can and never answer. Their tasks expire,
    they cool down for two releases, and the honest devices train in between: the job
    completes instead of failing three empty releases in a row."""
    async with Harness(tmp_path, _spec(rounds=5, deadline=1.0)) as h:
        driver = asyncio.create_task(drive_rounds(h.coord, JOB, 5))
        honest_updates = 0

        async def hog(cid: str) -> None:
            while not driver.done():
                await h.coord.get_task(cid, JOB)  # takes a slot, never uploads
                await asyncio.sleep(0.01)

        async def honest(cid: str) -> None:
            nonlocal honest_updates
            while not driver.done():
                await asyncio.sleep(0.2)
                task = await h.coord.get_task(cid, JOB)
                if task is not None and (await h.send(cid, task, 0.1, 10)).accepted:
                    honest_updates += 1

        workers = [asyncio.create_task(hog(c)) for c in ("c0", "c1")]
        workers += [asyncio.create_task(honest(c)) for c in ("c2", "c3")]
        outcome = await asyncio.wait_for(driver, 60)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        assert outcome.status == "COMPLETED", outcome.reason
        assert honest_updates >= 2


async def test_a_device_cannot_park_uploads_while_a_release_closes(tmp_path):
    """While a release closes, one device sends 200 copies of its upload: one waits for
    the next release, the other 199 are refused at once (no memory held for them)."""
    async with Harness(tmp_path, _spec()) as h:
        await h.coord.open_round(JOB)
        t0, t1 = await h.coord.get_task("c0", JOB), await h.coord.get_task("c1", JOB)
        assert (await h.send("c1", t1, 1.0, 5)).accepted  # K = 1: release 1 closes
        await asyncio.wait_for(h.coord.wait_round(JOB), 10)
        parked = [asyncio.create_task(h.send("c0", t0, 1.0, 5)) for _ in range(200)]
        await asyncio.sleep(0.3)
        assert sum(not p.done() for p in parked) == 1
        assert {p.result().code for p in parked if p.done()} == {"not_selected"}
        await h.coord.open_round(JOB)
        assert (await asyncio.wait_for(asyncio.gather(*parked), 10))[0] is not None


async def test_the_deadline_waits_for_an_update_being_accepted(tmp_path):
    """The release's deadline fires while an update is being persisted: the deadline
    waits for it, so an acknowledged update is never left out of its release."""
    async with Harness(tmp_path, _spec(buffer=2, deadline=0.3)) as h:
        real = h.store.join_release

        async def slow_join(*args, **kwargs):
            await asyncio.sleep(0.5)  # past the deadline
            return await real(*args, **kwargs)

        h.store.join_release = slow_join
        await h.coord.open_round(JOB)
        task = await h.coord.get_task("c0", JOB)
        receipt = await h.send("c0", task, 1.0, 5)
        result = await asyncio.wait_for(h.coord.wait_round(JOB), 5)
        assert receipt.accepted and result.ok and result.accepted == ["c0"]


async def test_a_heartbeat_takes_no_training_slot(tmp_path):
    async with Harness(tmp_path, _spec(concurrency=1)) as h:
        await h.coord.open_round(JOB)
        for cid in ("c0", "c1", "c2"):  # devices that only heartbeat
            assert await h.coord.task_available(cid, JOB)
        task = await h.coord.get_task("c3", JOB)  # the one that trains still gets it
        assert task is not None and not await h.coord.task_available("c0", JOB)


def test_devices_answering_at_once_cannot_shorten_the_expiry():
    """Colluders answer 99 tasks instantly to drive the expiry down; one honest device
    took 20 s: tasks still get 40 s (twice the longest), where a median would give the
    5 s floor and expire every honest device slower than that."""
    buf = Buffer()
    buf.durations.extend([0.001] * 99 + [20.0])
    assert buf.expiry_s(deadline_s=600) == 40.0
    assert Buffer().expiry_s(deadline_s=600) == 600  # too few accepted tasks yet


async def test_a_refused_upload_does_not_count_towards_the_expiry(tmp_path):
    """An instant upload refused for its norm is not a measure of honest training time."""
    spec = parse_job({"name": "fb", "rounds": 2, "clients": {"count": 4, "per_round": 4},
                      "strategy": {"name": "fedavg", "mode": "async",
                                   "fedbuff": {"buffer": 1, "concurrency": 2}},
                      "round": {"max_update_norm": 1.0}})
    async with Harness(tmp_path, spec) as h:
        await h.coord.open_round(JOB)
        task = await h.coord.get_task("c0", JOB)
        assert (await h.send("c0", task, 100.0, 5)).code == "norm_bound"
        assert not h.coord.buffers[JOB].durations
