"""selector — draws each round's cohort from the registered devices.

consumes  tsfl.rounds (open, job events), tsfl.devices (registrations, link estimates)
produces  tsfl.cohorts
state     reads the device registry
"""

from tsfl.bus import topics
from tsfl.pipeline.selector import Selector as Role

CONSUMES = (topics.ROUNDS, topics.DEVICES)
PRODUCES = (topics.COHORTS,)

__all__ = ["CONSUMES", "PRODUCES", "Role", "main"]


def main(argv: list[str] | None = None) -> int:
    from services import serve

    return serve("selector", argv)


if __name__ == "__main__":
    raise SystemExit(main())
