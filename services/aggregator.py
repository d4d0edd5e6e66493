"""aggregator — folds a round's accepted updates (streaming), as N replicas.

consumes  tsfl.updates.clipped, tsfl.updates.direct, tsfl.verdicts (split among the
          replicas by partition), tsfl.rounds (each replica all of it)
produces  tsfl.aggregates (a partial aggregate per replica and round; the privacy stage
          merges them and reports a round with nothing valid on tsfl.failures)
state     reads the released model version
"""

from tsfl.bus import topics
from tsfl.pipeline.aggregator_replicas import PartitionedAggregator as Role

CONSUMES = (topics.ROUNDS, topics.UPDATES_CLIPPED, topics.UPDATES_DIRECT, topics.VERDICTS)
PRODUCES = (topics.AGGREGATES,)

__all__ = ["CONSUMES", "PRODUCES", "Role", "main"]


def main(argv: list[str] | None = None) -> int:
    from services import serve

    return serve("aggregator", argv)


if __name__ == "__main__":
    raise SystemExit(main())
