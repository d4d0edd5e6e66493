"""The local stack without Docker: a Kafka-wire broker and the six services as processes.

State (pids, addresses, log files) lives in ``DIR/stack.json``; ``status`` and ``down``
read it. ``up`` also issues an operator admin token (``DIR/admin-token``, mode 600, which
the CLI's client commands pick up); the directory is private to its owner (mode 700).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tsfl.bus import topics
from tsfl.errors import ErrorKind, TsflError
from tsfl.pipeline.names import SERVICE_NAMES
from tsfl.runtime.broker import free_port, private_log, start_local_broker, wait_for_port

SERVICE_ORDER = ["aggregator", "byzantine", "privacy", "he", "selector", "coordinator"]
#: the stages that run as N replicas of one consumer group (docs/architecture.md)
REPLICATED = ("aggregator", "byzantine")
#: more replicas than the update topics' partitions would idle
MAX_REPLICAS = topics.TOPICS[topics.UPDATES_CLIPPED]
_PROCS: dict[int, subprocess.Popen[bytes]] = {}  # children of this process, to reap them


@dataclass
class StackState:
    kafka: str
    database: str
    grpc: str
    broker_pid: int | None = None
    services: dict[str, dict] = field(default_factory=dict)  # name -> {pid, health, log}
    admin_token: str | None = None  # the stack's operator token (also DIR/admin-token)

    def save(self, directory: Path) -> None:
        _write_private(directory / "stack.json", json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> StackState:
        path = directory / "stack.json"
        if not path.exists():
            raise FileNotFoundError(f"no stack in {directory} (run 'tsfl stack up' first)")
        return cls(**json.loads(path.read_text()))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def issue_admin_token(database: str, name: str, role: str) -> str:
    """Create an admin token in ``database`` (migrated first); returns it (shown once)."""
    import asyncio

    from tsfl.rpc.admin_auth import new_token
    from tsfl.storage import Store

    async def go() -> str:
        store = await Store.open(database)
        try:
            token, row = new_token(name, role)
            await store.add_admin_token(row)
            return token
        finally:
            await store.close()

    return asyncio.run(go())


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0): look at its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def service_command(name: str, kafka: str, database: str, grpc: str, health: str) -> list[str]:
    cmd = [sys.executable, "-m", "tsfl.cli.main", "service", name, "--kafka", kafka,
           "--database", database]
    return cmd + (["--grpc", grpc] if name == "coordinator" else ["--health", health])


def _unused_port(state: StackState, *also: str) -> int:
    """A free port that no address of the stack (nor ``also``) names yet (free_port may
    hand out a port another service was given but has not bound yet)."""
    taken = {state.grpc, *also, *(e["health"] for e in state.services.values()),
             *(e.get("metrics") for e in state.services.values())}
    while True:
        port = free_port()
        if f"127.0.0.1:{port}" not in taken:
            return port


def replica_name(name: str, replica: int = 0) -> str:
    """The stack's name of replica ``replica`` (0-based) of service ``name``: ``name``,
    then ``name-2``, ``name-3``, ..."""
    return name if replica == 0 else f"{name}-{replica + 1}"


def start_service(name: str, state: StackState, directory: Path, replica: int = 0) -> dict:
    """Start (or restart) replica ``replica`` of service ``name``; recorded under
    :func:`replica_name`. A replicated stage's process is named by ``TSFL_REPLICA``
    (stable across restarts, so it resumes its own reading of ``tsfl.rounds``)."""
    key = replica_name(name, replica)
    health = f"127.0.0.1:{_unused_port(state)}"
    metrics = f"127.0.0.1:{_unused_port(state, health)}"
    log_path = directory / f"{key}.log"
    command = [*service_command(name, state.kafka, state.database, state.grpc, health),
               "--metrics", metrics]
    env = {**os.environ, "TSFL_REPLICA": key} if name in REPLICATED else None
    with private_log(log_path) as log:  # mode 600: logs name jobs, devices and peers
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    entry = {"pid": proc.pid, "health": state.grpc if name == "coordinator" else health,
             "metrics": metrics, "log": str(log_path)}
    _PROCS[proc.pid] = proc
    state.services[key] = entry
    return entry


class StackError(TsflError, RuntimeError):
    """The local stack cannot be started as asked."""

    kind = ErrorKind.PRECONDITION


def running(directory: Path) -> list[str]:
    """The components of the stack recorded in ``directory`` that are still alive."""
    try:
        state = StackState.load(directory)
    except (FileNotFoundError, ValueError, TypeError):
        return []
    live = [name for name, e in state.services.items() if alive(e.get("pid"))]
    return (["broker"] if state.broker_pid and alive(state.broker_pid) else []) + live


def up(directory: Path, *, kafka: str | None, database: str | None, grpc_port: int = 50051,
       timeout: float = 90.0, aggregators: int = 1, byzantine: int = 1) -> StackState:
    """Start a broker (unless ``kafka`` names one) and the six services (``aggregators``
    aggregator and ``byzantine`` byzantine replicas); refuses a directory whose stack
    still runs (a second set would share its database and lose track of the first).

    The second and later replicas start once the first of every service serves, one
    replica of each group at a time: members of one group join it one after the other,
    not all at once (docs/architecture.md, "The broker these tests run on")."""
    replicas = {"aggregator": aggregators, "byzantine": byzantine}
    for name, count in replicas.items():
        if not 1 <= count <= MAX_REPLICAS:
            raise StackError(f"{name} replicas must be between 1 and {MAX_REPLICAS}")
    live = running(directory)
    if live:
        raise StackError(f"a stack is already running in {directory} ({', '.join(live)}); "
                         f"stop it first: tsfl stack down --dir {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # tokens, the database and logs are the owner's
    broker_pid = None
    if kafka is None:
        broker = start_local_broker(log_file=directory / "broker.log")
        kafka, broker_pid = broker.address, broker.process.pid
    database = database or f"sqlite:///{(directory / 'tsfl.db').resolve()}"
    state = StackState(kafka=kafka, database=database, grpc=f"127.0.0.1:{grpc_port}",
                       broker_pid=broker_pid)
    deadline = time.monotonic() + timeout
    for name in SERVICE_ORDER:
        start_service(name, state, directory)
    state.save(directory)
    _wait_serving(directory, state, list(state.services), deadline)
    for r in range(1, max(replicas.values())):  # one more member of each group at a time
        wave = [name for name in SERVICE_ORDER if replicas.get(name, 1) > r]
        for name in wave:
            start_service(name, state, directory, r)
        state.save(directory)
        _wait_serving(directory, state, [replica_name(name, r) for name in wave], deadline)
    state.admin_token = issue_admin_token(database, "stack-operator", "operator")
    _write_private(directory / "admin-token", state.admin_token + "\n")
    state.save(directory)
    return state


def _wait_serving(directory: Path, state: StackState, names: list[str],
                  deadline: float) -> None:
    for name in names:
        entry = state.services[name]
        host, port = entry["health"].rsplit(":", 1)
        while not wait_for_port(host, int(port), 0.5):
            proc = _PROCS.get(entry["pid"])
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                down(directory)
                raise RuntimeError(f"service {name} did not come up; see {entry['log']}")


def status(directory: Path) -> dict[str, str]:
    """Each component's state: running/stopped/external (broker), serving/not serving/
    stopped (services)."""
    return {name: st for name, (st, _) in describe(directory).items()}


def describe(directory: Path) -> dict[str, tuple[str, str]]:
    """Each component's ``(state, address)`` (the broker's bootstrap address, each
    service's gRPC health address — the coordinator's is its device/admin port)."""
    from tsfl.rpc.health import check

    state = StackState.load(directory)
    broker = (("running" if alive(state.broker_pid) else "stopped")
              if state.broker_pid else "external")
    out = {"broker": (broker, state.kafka)}
    for name, entry in state.services.items():
        st = check(entry["health"]) if alive(entry["pid"]) else "stopped"
        out[name] = (st, entry["health"])
    return out


def down(directory: Path, timeout: float = 20.0) -> None:
    state = StackState.load(directory)
    pids = [e["pid"] for e in state.services.values()]
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    if state.broker_pid and alive(state.broker_pid):
        os.kill(state.broker_pid, signal.SIGTERM)
    (directory / "stack.json").unlink(missing_ok=True)
    (directory / "admin-token").unlink(missing_ok=True)


assert set(SERVICE_ORDER) == set(SERVICE_NAMES)
