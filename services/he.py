"""he — sums HE jobs' encrypted sections without any key that decrypts.

consumes  tsfl.rounds, tsfl.updates.encrypted
produces  tsfl.aggregates (the encrypted sum after the clear mean), tsfl.failures
state     the job's public parameters, key commitment and trusted identity authorities;
          sections that are unsigned, wrongly keyed or tampered with are refused and
          audited (he.section.refused)
"""

from tsfl.bus import topics
from tsfl.pipeline.he import HomomorphicAggregator as Role

CONSUMES = (topics.ROUNDS, topics.UPDATES_ENCRYPTED)
PRODUCES = (topics.AGGREGATES, topics.FAILURES)

__all__ = ["CONSUMES", "PRODUCES", "Role", "main"]


def main(argv: list[str] | None = None) -> int:
    from services import serve

    return serve("he", argv)


if __name__ == "__main__":
    raise SystemExit(main())
