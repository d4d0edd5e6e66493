"""Two gRPC servers never share a port (gRPC's default SO_REUSEPORT would let them)."""

import grpc
import pytest

from tsfl.rpc.common import SERVER_OPTIONS
from tsfl.runtime.stack import StackState, _unused_port


async def test_a_taken_port_is_refused_not_shared():
    first = grpc.aio.server(options=SERVER_OPTIONS)
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    try:
        second = grpc.aio.server(options=SERVER_OPTIONS)
        with pytest.raises(RuntimeError, match="bind"):
            second.add_insecure_port(f"127.0.0.1:{port}")
    finally:
        await first.stop(None)


def test_stack_ports_are_distinct():
    state = StackState(kafka="k", database="d", grpc="127.0.0.1:50051")
    for i in range(30):
        port = _unused_port(state)
        state.services[f"s{i}"] = {"health": f"127.0.0.1:{port}"}
    assert len({e["health"] for e in state.services.values()} | {state.grpc}) == 31
