"""coordinator — round state, the device API and the admin API (gRPC).

consumes  tsfl.cohorts (selector), tsfl.models (privacy), tsfl.failures; gRPC devices and admins
produces  tsfl.rounds, tsfl.devices, tsfl.updates.{raw,clipped,direct,encrypted} (by job
          mode), tsfl.aggregates (SecAgg+ jobs: the unmasked sum), tsfl.registry (each
          released version, for TrustStram's model lifecycle)
state     jobs, rounds, participants, devices, audit; resumes running jobs at start
"""

from tsfl.bus import topics
from tsfl.pipeline.coordinator import Coordinator as Role

CONSUMES = (topics.COHORTS, topics.MODELS, topics.FAILURES)
PRODUCES = (topics.ROUNDS, topics.DEVICES, topics.UPDATES_RAW, topics.UPDATES_CLIPPED,
            topics.UPDATES_DIRECT, topics.UPDATES_ENCRYPTED, topics.AGGREGATES,
            topics.REGISTRY)

__all__ = ["CONSUMES", "PRODUCES", "Role", "main"]


def main(argv: list[str] | None = None) -> int:
    from services import serve

    return serve("coordinator", argv)


if __name__ == "__main__":
    raise SystemExit(main())
