"""services/ is the wiring diagram: each service's declared topics are what its role
really subscribes to and publishes (recorded over real embedded runs of every job mode),
and what docs/topics.md says."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import services
from tsfl.bus import TOPICS
from tsfl.bus.memory import MemoryBus
from tsfl.config import parse_job
from tsfl.pipeline import roles as roles_module
from tsfl.pipeline.names import SERVICE_NAMES, role_class
from tsfl.pipeline.roles import ROLES
from tsfl.runtime.embedded import run_embedded
from tsfl.storage import Store

ROOT = Path(__file__).resolve().parents[2]
BASE = {"seed": 1, "rounds": 2, "clients": {"count": 8, "per_round": 4},
        "model": {"kind": "logreg"}, "training": {"lr": 0.1, "epochs": 1, "batch_size": 8}}
BUDGET = 5.5  # one round at z = 0.8 spends ε ≈ 4.8, two more than 5.5
MODES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "central-dp": {"privacy": {"mode": "central", "noise_multiplier": 0.5, "clip_norm": 1.0,
                               "noise": "seeded"}},
    # attacked, with an alert threshold the attack passes: tsfl.alerts
    "robust": {"robust": {"aggregator": "trimmed_mean", "num_malicious": 1,
                          "alert_fraction": 0.1},
               "attacks": {"kind": "scaling", "fraction": 0.25}},
    "robust-central-dp": {"robust": {"aggregator": "norm_bounding", "max_norm": 5.0,
                                     "min_cosine": None, "max_norm_ratio": None,
                                     "reputation_threshold": 0},
                          "privacy": {"mode": "central", "noise_multiplier": 0.5,
                                      "clip_norm": 1.0, "noise": "seeded"}},
    # a budget the second release would pass: the privacy stage withholds it (tsfl.failures)
    "central-dp-budget": {"privacy": {"mode": "central", "noise_multiplier": 0.8,
                                      "clip_norm": 1.0, "noise": "seeded",
                                      "target_epsilon": BUDGET}},
    "he": {"crypto": {"mode": "he"}},
    # 4 clients, one of which may be corrupt: no SecAgg+ graph also survives a dropout
    "secagg": {"crypto": {"mode": "secagg", "secagg": {"dropout": 0.0}}},
}


def test_every_service_has_a_module_and_the_same_role():
    assert tuple(ROLES) == SERVICE_NAMES
    assert all(role_class(name) is ROLES[name] for name in SERVICE_NAMES)
    for name in SERVICE_NAMES:
        module = services.load(name)
        assert module.Role is ROLES[name]
        assert module.__doc__.splitlines()[0].startswith(f"{name} — ")
        assert callable(module.main)
    with pytest.raises(ValueError):
        services.load("os")


def test_declared_consumption_is_the_roles_subscription(tmp_path):
    async def subscriptions() -> dict[str, tuple[str, ...]]:
        store = await Store.open(f"sqlite:///{tmp_path / 'w.db'}")
        try:
            return {n: tuple(ROLES[n](MemoryBus(), store).topics) for n in SERVICE_NAMES}
        finally:
            await store.close()

    for name, topics in asyncio.run(subscriptions()).items():
        assert set(services.load(name).CONSUMES) == set(topics), name


class RecordingBus:
    """The shared bus as one role sees it: publishes are recorded under the role's name."""

    def __init__(self, bus: MemoryBus, role: str, log: dict[str, set[str]]):
        self._bus, self._role, self._log = bus, role, log

    async def publish(self, topic: str, *args: Any, **kw: Any) -> None:
        self._log[self._role].add(topic)
        await self._bus.publish(topic, *args, **kw)

    async def publish_nowait(self, topic: str, *args: Any, **kw: Any) -> Any:
        self._log[self._role].add(topic)
        return await self._bus.publish_nowait(topic, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, set[str]]:
    """Topics each role published over embedded runs of every job mode."""
    log: dict[str, set[str]] = defaultdict(set)
    original = roles_module.LocalPipeline.__init__

    def recording_init(self, bus, store):  # type: ignore[no-untyped-def]
        original(self, bus, store)
        for name, role in self.roles.items():
            role.bus = RecordingBus(bus, name, log)

    mp = pytest.MonkeyPatch()
    mp.setattr(roles_module.LocalPipeline, "__init__", recording_init)
    try:
        for mode, extra in MODES.items():
            spec = parse_job({**BASE, "name": f"wiring-{mode}", **extra})
            result = asyncio.run(run_embedded(spec, tmp_path_factory.mktemp(mode)))
            if mode == "central-dp-budget":
                assert "BUDGET_EXHAUSTED" in (result.reason or ""), result.reason
            else:
                assert result.status == "COMPLETED" and result.metrics, (mode, result.reason)
    finally:
        mp.undo()
    return log


#: declared outputs the runs above do not reach: a round in which every update is refused
#: (the aggregator's and he stage's "nothing valid to aggregate")
UNREACHED = {("aggregator", "tsfl.failures"), ("he", "tsfl.failures")}


def test_declared_production_is_what_roles_publish(published):
    for name in SERVICE_NAMES:
        declared = set(services.load(name).PRODUCES)
        assert published[name] <= declared, (name, published[name] - declared)
        # nothing declared that no job mode ever produces
        unused = {t for t in declared - published[name] if (name, t) not in UNREACHED}
        assert not unused, (name, unused)


def _topic_table() -> dict[str, tuple[set[str], set[str]]]:
    """docs/topics.md: topic -> (services named as producers, services named as consumers)."""
    out = {}
    for line in (ROOT / "docs" / "topics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`tsfl."):
            topic = cells[0].strip("`")

            def named(text: str) -> set[str]:
                return {n for n in SERVICE_NAMES if re.search(rf"\b{n}\b", text)}

            out[topic] = (named(cells[4]), named(cells[5]))
    return out


def test_docs_topics_table_matches_the_declarations():
    table = _topic_table()
    assert set(table) == set(TOPICS)
    for topic, (producers, consumers) in table.items():
        declared_p = {n for n in SERVICE_NAMES if topic in services.load(n).PRODUCES}
        declared_c = {n for n in SERVICE_NAMES if topic in services.load(n).CONSUMES}
        assert producers == declared_p, (topic, producers, declared_p)
        assert consumers == declared_c, (topic, consumers, declared_c)


def test_architecture_picture_is_generated_from_the_declarations():
    from services.diagram import mermaid

    text = (ROOT / "docs" / "architecture.md").read_text()
    assert f"```mermaid\n{mermaid()}\n```" in text, "regenerate: python -m services.diagram"
