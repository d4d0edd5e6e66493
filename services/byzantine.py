"""byzantine — judges each update with the job's robust rule and anomaly detectors, as N
replicas (each judges the rounds whose partition it owns).

consumes  tsfl.updates.clipped (split among the replicas: a round on one partition),
          tsfl.rounds (each replica all of it)
produces  tsfl.verdicts, tsfl.alerts
state     robust_state (client history, reputation), participants (verdicts), audit
"""

from tsfl.bus import topics
from tsfl.pipeline.byzantine_replicas import ReplicatedByzantine as Role

CONSUMES = (topics.UPDATES_CLIPPED, topics.ROUNDS)
PRODUCES = (topics.VERDICTS, topics.ALERTS)

__all__ = ["CONSUMES", "PRODUCES", "Role", "main"]


def main(argv: list[str] | None = None) -> int:
    from services import serve

    return serve("byzantine", argv)


if __name__ == "__main__":
    raise SystemExit(main())
