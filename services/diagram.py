"""The services-and-topics picture of docs/architecture.md, generated from the services'
declarations: ``python -m services.diagram`` prints the Mermaid block
(tests/architecture/test_wiring.py checks the document holds exactly this)."""

from __future__ import annotations

from services import load
from tsfl.pipeline.names import SERVICE_NAMES

#: where each service keeps state (drawn as edges to the stores)
STORES = {"coordinator": "db", "privacy": "db", "byzantine": "db", "selector": "db",
          "aggregator": "db"}


def _node(topic: str) -> str:
    return topic.replace(".", "_")


def mermaid() -> str:
    lines = ["flowchart LR",
             '  devices(["devices: tsfl.sdk over gRPC"]) <--> coordinator',
             '  admins(["admins: tsfl job, AdminService"]) --> coordinator',
             '  db[("PostgreSQL or SQLite: jobs, rounds, participants, ledger, audit")]']
    topics = sorted({t for n in SERVICE_NAMES for t in (*load(n).CONSUMES, *load(n).PRODUCES)})
    lines += [f'  {_node(t)}{{{{"{t}"}}}}' for t in topics]
    for name in SERVICE_NAMES:
        module = load(name)
        lines += [f"  {name} --> {_node(t)}" for t in module.PRODUCES]
        lines += [f"  {_node(t)} --> {name}" for t in module.CONSUMES]
        if name in STORES:
            lines.append(f"  {name} --- {STORES[name]}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"```mermaid\n{mermaid()}\n```")
