"""aggregator — folds a round's accepted updates (streaming) and applies the strategy.

consumes  tsfl.rounds, tsfl.updates.clipped, tsfl.updates.direct, tsfl.verdicts
produces  tsfl.aggregates, tsfl.failures (nothing valid to aggregate)
state     reads the released model version
"""

from tsfl.bus import topics
from tsfl.pipeline.aggregator import Aggregator as Role

CONSUMES = (topics.ROUNDS, topics.UPDATES_CLIPPED, topics.UPDATES_DIRECT, topics.VERDICTS)
PRODUCES = (topics.AGGREGATES, topics.FAILURES)

__all__ = ["CONSUMES", "PRODUCES", "Role", "main"]


def main(argv: list[str] | None = None) -> int:
    from services import serve

    return serve("aggregator", argv)


if __name__ == "__main__":
    raise SystemExit(main())
