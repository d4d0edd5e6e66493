"""privacy — clips (central DP), charges the privacy ledger, noises, applies the server
optimizer, checkpoints and releases each model.

consumes  tsfl.updates.raw, tsfl.aggregates, tsfl.rounds
produces  tsfl.updates.clipped / tsfl.updates.direct (no robust rule), tsfl.models,
          tsfl.failures (budget refusals)
state     privacy ledger, checkpoints
"""

from tsfl.bus import topics
from tsfl.pipeline.privacy import Privacy as Role

CONSUMES = (topics.UPDATES_RAW, topics.AGGREGATES, topics.ROUNDS)
PRODUCES = (topics.UPDATES_CLIPPED, topics.UPDATES_DIRECT, topics.MODELS, topics.FAILURES)

__all__ = ["CONSUMES", "PRODUCES", "Role", "main"]


def main(argv: list[str] | None = None) -> int:
    from services import serve

    return serve("privacy", argv)


if __name__ == "__main__":
    raise SystemExit(main())
