"""FedBuff through the coordinator and the aggregator (the distributed deployment's
roles over the memory bus, a real store): releases, staleness weights against a numpy
reference, the one-task and one-update-per-release rules, and uploads that arrive while
a release closes."""

import asyncio

import numpy as np

from tsfl.config import parse_job
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.pipeline.driver import drive_rounds
from tsfl.pipeline.roles import LocalPipeline
from tsfl.storage import Store
from tsfl.wire import encode_update

LAYOUT = ParamLayout([("w", (6,), "float32")])
JOB = "fedbuff-1"
CLIENTS = ["c0", "c1", "c2", "c3"]


def _spec(**fedbuff):
    fb = {"buffer": 2, "concurrency": 3, "max_staleness": 2, "weighting": "polynomial",
          "a": 0.5, **fedbuff}
    return parse_job({"name": "fb", "rounds": 3, "clients": {"count": 4, "per_round": 4},
                      "strategy": {"name": "fedavg", "mode": "async", "fedbuff": fb},
                      "round": {"deadline_s": 30}})


class Harness:
    def __init__(self, tmp_path, spec):
        self.tmp_path, self.spec = tmp_path, spec

    async def __aenter__(self):
        self.store = await Store.open(f"sqlite:///{self.tmp_path / 'fb.db'}")
        self.pipeline = await LocalPipeline.in_memory(self.store)
        self.coord = self.pipeline.coordinator
        await self.coord.submit_job(JOB, self.spec, LAYOUT, np.zeros(6, np.float32))
        for c in CLIENTS:
            await self.coord.register_device(JOB, c, "token-" + c)
        return self

    async def __aexit__(self, *exc):
        await self.pipeline.stop()
        await self.store.close()

    async def send(self, client, task, value, n):
        frame = encode_update(Update(JOB, task.round, client, task.model_version, n,
                                     np.full(6, value, np.float32), {"train_loss": 1.0}),
                              LAYOUT)
        return await self.coord.upload(client, frame)


async def test_releases_weigh_stale_updates_by_s_tau_as_numpy_does(tmp_path):
    async with Harness(tmp_path, _spec()) as h:
        assert await h.coord.open_round(JOB) == []  # a release has no cohort
        tasks = {c: await h.coord.get_task(c, JOB) for c in ("c0", "c1", "c2")}
        assert {(t.round, t.model_version) for t in tasks.values()} == {(1, 0)}
        assert await h.coord.get_task("c3", JOB) is None  # concurrency 3: no slot
        assert (await h.coord.get_task("c0", JOB)).round == 1  # re-asking: the same task
        assert (await h.send("c0", tasks["c0"], 1.0, 10)).accepted
        assert (await h.send("c1", tasks["c1"], 3.0, 30)).accepted  # K = 2: closes
        first = await asyncio.wait_for(h.coord.wait_round(JOB), 10)
        assert first.ok and sorted(first.accepted) == ["c0", "c1"] and first.version == 1
        v1 = (10 * 1.0 + 30 * 3.0) / 40
        np.testing.assert_allclose(h.coord.model_vector(JOB), v1, rtol=1e-6)

        await h.coord.open_round(JOB)  # release 2 on v1
        # c2 trained on v0: staleness 1, weight (1 + 1)^-0.5, into release 2
        assert (await h.send("c2", tasks["c2"], 5.0, 20)).accepted
        t0 = await h.coord.get_task("c0", JOB)
        assert (t0.round, t0.model_version) == (2, 1)
        assert (await h.send("c0", t0, 2.0, 10)).accepted
        second = await asyncio.wait_for(h.coord.wait_round(JOB), 10)
        assert second.ok and sorted(second.accepted) == ["c0", "c2"]
        s = (1 + 1) ** -0.5
        v2 = v1 + (20 * s * 5.0 + 10 * 2.0) / 30  # Σ s(τ)·n·Δ / Σ n
        np.testing.assert_allclose(h.coord.model_vector(JOB), v2, rtol=1e-6)
        folded = [e["payload"] for e in await h.store.audit_trail(JOB)
                  if e["kind"] == "fedbuff.folded"]
        assert [f["staleness"] for f in folded] == [[0, 0], [0, 1]]
        parts = await h.store.list_participants(JOB)
        assert sorted((p["round"], p["client_id"]) for p in parts) == [
            (1, "c0"), (1, "c1"), (2, "c0"), (2, "c2")]


async def test_refusals_stale_duplicate_and_not_in_flight(tmp_path):
    async with Harness(tmp_path, _spec(max_staleness=0, buffer=1, concurrency=2)) as h:
        await h.coord.open_round(JOB)
        t0, t1 = await h.coord.get_task("c0", JOB), await h.coord.get_task("c1", JOB)
        # a device without a task, and one claiming another's task, are refused
        assert (await h.send("c3", t0, 1.0, 5)).code == "not_selected"
        assert (await h.send("c0", t0, 1.0, 5)).accepted  # K = 1: release 1 closes
        await asyncio.wait_for(h.coord.wait_round(JOB), 10)
        await h.coord.open_round(JOB)
        receipt = await h.send("c1", t1, 1.0, 5)  # trained on v0, model is v1: τ = 1 > 0
        assert (receipt.accepted, receipt.code) == (False, "stale_model")
        assert (await h.send("c0", t0, 1.0, 5)).code == "not_selected"  # task answered
        # the refused device's slot is free again: it gets a fresh task on v1
        fresh = await h.coord.get_task("c1", JOB)
        assert (fresh.round, fresh.model_version) == (2, 1)
        assert (await h.send("c1", fresh, 1.0, 5)).accepted


async def test_a_full_asynchronous_job_counts_each_update_once(tmp_path):
    """Devices of different speeds loop task → train → upload while the driver runs the
    releases; uploads that arrive while a release closes wait for the next one."""
    spec = _spec(buffer=3, concurrency=4, max_staleness=3)
    async with Harness(tmp_path, spec) as h:
        driver = asyncio.create_task(drive_rounds(h.coord, JOB, 5))
        delays = {"c0": 0.0, "c1": 0.01, "c2": 0.03, "c3": 0.07}
        receipts: list[tuple[str, bool, str]] = []

        async def device(client):
            while not driver.done():
                task = await h.coord.get_task(client, JOB)
                if task is None:
                    await asyncio.sleep(0.005)
                    continue
                await h.coord.download_model(JOB, task.model_version)
                await asyncio.sleep(delays[client])
                r = await h.send(client, task, 0.1, 10)
                receipts.append((client, r.accepted, r.code))

        devices = [asyncio.create_task(device(c)) for c in CLIENTS]
        outcome = await asyncio.wait_for(driver, 60)
        for d in devices:
            d.cancel()
        await asyncio.gather(*devices, return_exceptions=True)
        assert outcome.status == "COMPLETED"
        assert [len(r.accepted) for r in outcome.results] == [3] * 5
        parts = [(p["round"], p["client_id"]) for p in await h.store.list_participants(JOB)
                 if p["status"] == "accepted"]
        assert len(parts) == len(set(parts)) == 15
        refused = {code for _, ok, code in receipts if not ok}
        assert refused <= {"round_closed", "not_selected"}, refused
        stale = [s for e in await h.store.audit_trail(JOB) if e["kind"] == "fedbuff.folded"
                 for s in e["payload"]["staleness"]]
        assert len(stale) == 15 and max(stale) <= 3 and max(stale) > 0  # slow devices lag


async def test_an_upload_waiting_for_the_next_release_ends_with_the_job(tmp_path):
    async with Harness(tmp_path, _spec(buffer=1, concurrency=2)) as h:
        await h.coord.open_round(JOB)
        t0, t1 = await h.coord.get_task("c0", JOB), await h.coord.get_task("c1", JOB)
        assert (await h.send("c0", t0, 1.0, 5)).accepted  # K = 1: the release closes
        waiting = asyncio.create_task(h.send("c1", t1, 1.0, 5))
        await asyncio.wait_for(h.coord.wait_round(JOB), 10)
        await asyncio.sleep(0.05)
        assert not waiting.done()  # held for the next release (deadline 30 s)
        await h.coord.finish_job(JOB, "COMPLETED")
        receipt = await asyncio.wait_for(waiting, 2)
        assert (receipt.accepted, receipt.code) == (False, "round_closed")
