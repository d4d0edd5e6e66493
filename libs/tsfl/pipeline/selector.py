"""The selector role: ``tsfl.rounds`` (OPEN) + ``tsfl.devices`` → ``tsfl.cohorts``.

Chooses each round's cohort from the job's registered devices, ordered by id, so both
deployments draw the same cohort for the same seed — or, for a DP job (``secret`` in the
OPEN event), from a CSPRNG, so that nobody can recompute who took part. The cohort
message says how many devices it was drawn from (the round's true sampling population,
which the privacy ledger charges for). With adaptive compression it also
keeps a link estimate per device (from the coordinator's timed transfers) and assigns
each chosen device the gentlest codec whose upload fits the round's time budget. The
registry is kept in memory from ``tsfl.devices`` events and loaded from the store when
a job is first seen (so a restarted selector knows every device enrolled before it started).
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.compress.schedule import LinkEstimate, choose_rung, ladder
from tsfl.pipeline import events
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.selection import UniformSelector
from tsfl.pipeline.selection_policies import DeviceBook, SelectionPolicy
from tsfl.storage.store import Store
from tsfl.wire.envelope import unpack


class Selector(BusRole):
    name = "selector"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "selector"):
        super().__init__(bus, store, [topics.ROUNDS, topics.DEVICES], group_id)
        self.registry: dict[str, set[str]] = {}  # job -> device ids
        self.links: dict[tuple[str, str], LinkEstimate] = {}  # (job, device) -> estimate
        # job -> a non-uniform selection policy and what it knows of the devices (set by
        # the embedded runtime; never used for a secret (DP) cohort)
        self.policies: dict[str, tuple[SelectionPolicy, DeviceBook]] = {}

    async def handle(self, record: Record) -> None:
        if record.topic == topics.DEVICES:
            event = unpack(record.value, events.DEVICE_EVENT, max_bytes=1 << 20)
            job_id, device = str(event["job"]), str(event["device"])
            if event.get("event") == "transfer":
                self._observe(job_id, device, event)
            else:
                devices = self.registry.get(job_id)
                if devices is not None:
                    devices.add(device)
        else:
            event = events.parse_round_event(record.value)
            if event["type"] == events.OPEN:
                await self._select(event)
            elif event["type"] == events.JOB_FINISHED:
                self.registry.pop(event["job"], None)
                self.policies.pop(event["job"], None)
                for key in [k for k in self.links if k[0] == event["job"]]:
                    del self.links[key]
        self.settle(record)

    async def _devices(self, job_id: str) -> list[str]:
        devices = self.registry.get(job_id)
        if devices is None:
            devices = self.registry[job_id] = set(await self.store.list_device_ids(job_id))
        return sorted(devices)

    async def _select(self, event: dict) -> None:
        job_id, number = event["job"], event["round"]
        k, minimum = int(event["k"]), int(event["min"])
        secret = bool(event.get("secret"))
        seed = None if secret else int(event["seed"])
        available = await self._devices(job_id)
        if len(available) < minimum:
            msg = events.cohort_message(job_id, number, [], reason=(
                f"only {len(available)} registered device(s), the round needs {minimum}"))
        else:
            selector = UniformSelector(seed, secure=secret)
            rate = event.get("poisson_rate")
            policy = None if secret else self.policies.get(job_id)
            if rate is not None:  # DP accounting assumes exactly this sampling
                cohort = selector.poisson(number, available, float(rate))
            elif policy is not None:
                cohort = policy[0].select(number, available, min(k, len(available)),
                                          policy[1])
            else:
                cohort = selector.select(number, available, min(k, len(available)))
            msg = events.cohort_message(job_id, number, cohort, reason=(
                None if cohort else "Poisson sampling drew no client this round"),
                codecs=self._plan(job_id, cohort, event.get("adaptive")),
                population=len(available))
        await self.bus.publish(topics.COHORTS, msg, key=job_id.encode())

    def _observe(self, job_id: str, device: str, event: dict) -> None:
        nbytes, seconds = event.get("bytes"), event.get("seconds")
        if not (isinstance(nbytes, int) and isinstance(seconds, int | float)):
            self.log.warning("ignoring a malformed transfer event for %s", device)
            return
        self.links.setdefault((job_id, device), LinkEstimate()).observe(nbytes, float(seconds))
        # every device's transfers also feed the job's population prior (for newcomers)
        self.links.setdefault((job_id, ""), LinkEstimate(decay=0.98)).observe(
            nbytes, float(seconds))

    def _plan(self, job_id: str, cohort: list[str], request: object
              ) -> dict[str, dict] | None:
        """Per-device codecs for adaptive compression; a device never seen transferring
        gets the rung the job's pooled estimate picks (none yet: the configured chain)."""
        if not isinstance(request, dict):
            return None
        try:
            n, budget = int(request["n"]), float(request["budget_s"])
            rungs = ladder(float(request["min_ratio"]), request.get("lossless"))
            block = int(request.get("block", 256))
        except (KeyError, TypeError, ValueError):
            self.log.warning("ignoring a malformed adaptive-compression request")
            return None
        plan = {}
        for device in cohort:
            estimate = self.links.get((job_id, device)) or self.links.get((job_id, ""))
            rung = choose_rung(estimate, n, budget, rungs, block)
            if rung is not None:
                plan[device] = {"chain": list(rung.chain.names), "ratio": rung.ratio}
        return plan
