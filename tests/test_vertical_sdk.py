"""Vertical parties as separate party runtimes (tsfl.sdk.vertical) over the gRPC relay
(tsfl.rpc.vertical_relay): the same result as the embedded run, and the relay's refusals."""

from __future__ import annotations

import secrets
import threading

import grpc
import msgpack
import pytest

from tsfl.api import resolve_spec
from tsfl.config import bundled_example
from tsfl.rpc.vertical_relay import Relay, RelayClient, serve
from tsfl.runtime.vertical import job_salt, run_vertical
from tsfl.sdk.vertical import run_party
from tsfl.sim.vertical import vertical_tables


@pytest.fixture()
def relay():
    r = Relay()
    server, port = serve(r)
    yield r, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.parametrize("extra", [{}, {"model": "split_nn", "label_dp": {"epsilon": 2.0},
                                        "cut_dp": {"noise_multiplier": 1.0},
                                        "noise": "seeded"}])
def test_parties_over_the_grpc_relay_equal_the_embedded_run(relay, tmp_path, extra):
    r, address = relay
    spec = resolve_spec(bundled_example("vertical-breast-cancer"),
                        {"rounds": 2, "vertical": extra})
    embedded = run_vertical(spec, tmp_path)
    tables = vertical_tables(spec)
    token = secrets.token_hex(16)
    r.register("job1", list(tables.parties), token)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def party(name: str) -> None:
        box = RelayClient(address, "job1", name, token)
        try:
            results[name] = run_party(spec, name, tables.parties[name], box,
                                      salt=job_salt(spec), test_ids=tables.test_ids,
                                      num_classes=tables.num_classes, timeout=60)
        except BaseException as exc:
            errors.append(exc)
        finally:
            box.close()

    threads = [threading.Thread(target=party, args=(n,)) for n in tables.parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    got = results[spec.vertical.label_party]["metrics"]
    assert len(got) == len(embedded.metrics) == 2
    for a, b in zip(got, embedded.metrics, strict=True):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert (a["bytes_up"], a["bytes_down"]) == (b["bytes_up"], b["bytes_down"])
    assert {v["intersection"] for v in results.values()} == {embedded.vertical["psi"]
                                                             ["intersection"]}


def _call(address: str, method: str, req: dict) -> grpc.RpcError:
    with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as exc:
        ch.unary_unary(f"/tsfl.vertical.Relay/{method}")(msgpack.packb(req), timeout=5)
    return exc.value


def test_the_relay_refuses_strangers_and_bad_messages(relay):
    r, address = relay
    r.register("job1", ["a", "b"], "t0ken")
    base = {"job": "job1", "party": "a", "token": "t0ken", "dst": "b", "kind": "psi.request",
            "payload": b"x"}
    for bad, code in [({"token": "nope"}, grpc.StatusCode.PERMISSION_DENIED),
                      ({"party": "c"}, grpc.StatusCode.PERMISSION_DENIED),
                      ({"dst": "a"}, grpc.StatusCode.PERMISSION_DENIED),
                      ({"job": "other"}, grpc.StatusCode.PERMISSION_DENIED),
                      ({"kind": "DROP TABLE"}, grpc.StatusCode.INVALID_ARGUMENT),
                      ({"payload": "text"}, grpc.StatusCode.INVALID_ARGUMENT)]:
        assert _call(address, "Send", {**base, **bad}).code() == code
    with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as exc:
        ch.unary_unary("/tsfl.vertical.Relay/Send")(b"\xc1garbage", timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    recv = {"job": "job1", "party": "b", "token": "t0ken", "src": "a", "kind": "psi.request",
            "timeout": 0}
    assert _call(address, "Receive", recv).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _call(address, "Receive", {**recv, "timeout": 1e9}).code() == (
        grpc.StatusCode.INVALID_ARGUMENT)
    client = RelayClient(address, "job1", "a", "t0ken")
    client.send("b", "psi.request", b"hello")
    assert RelayClient(address, "job1", "b", "t0ken").recv("a", "psi.request", 5) == b"hello"
