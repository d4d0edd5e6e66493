"""The Kafka bus against a real Kafka-wire broker (Tansu)."""

import asyncio

import pytest

from tsfl.bus.kafka import KafkaBus
from tsfl.runtime.broker import start_local_broker

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def broker():
    b = start_local_broker()
    yield b
    b.stop()


async def _drain(consumer, n, timeout=30):
    out = []
    while len(out) < n:
        r = await consumer.getone(timeout=timeout)
        assert r is not None, f"timed out after {len(out)} of {n} records"
        out.append(r)
    return out


async def test_publish_consume_commit_and_resume(broker):
    bus = KafkaBus(broker.address)
    await bus.start()
    await bus.create_topics({"t.basic": 2})
    await bus.create_topics({"t.basic": 2})  # idempotent
    for i in range(6):
        await bus.publish("t.basic", f"v{i}".encode(), key=b"k1" if i % 2 else b"k2")
    c = bus.consumer(["t.basic"], "g1")
    await c.start()
    got = await _drain(c, 6)
    assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(6))
    by_key = [r.value for r in got if r.key == b"k1"]
    assert by_key == [b"v1", b"v3", b"v5"]  # one key, one partition, in order
    for r in got[:3]:
        await c.commit(r)
    await c.stop()
    # a new member of the group resumes after what was committed (at-least-once)
    c2 = bus.consumer(["t.basic"], "g1")
    await c2.start()
    again = await _drain(c2, 1)
    assert again[0].value in {r.value for r in got}
    await c2.stop()
    await bus.stop()


async def test_large_values_are_chunked_and_reassembled(broker):
    bus = KafkaBus(broker.address, chunk_bytes=64 * 1024)
    await bus.start()
    await bus.create_topics({"t.big": 1})
    payload = bytes(range(256)) * 2000  # 512 KB -> 8 chunks
    await bus.publish("t.big", payload, key=b"m")
    await bus.publish("t.big", b"small", key=b"m")
    c = bus.consumer(["t.big"], "g-big")
    await c.start()
    first, second = await _drain(c, 2)
    assert first.value == payload and second.value == b"small"
    assert all(k != "tsfl-chunk" for k, _ in first.headers)
    await c.stop()
    await bus.stop()


async def test_unreachable_broker_is_a_clear_error():
    from tsfl.runtime.broker import free_port

    bus = KafkaBus(f"127.0.0.1:{free_port()}", request_timeout_ms=2000)
    with pytest.raises(Exception, match="cannot reach Kafka"):
        await asyncio.wait_for(bus.start(), 60)


async def test_commit_all_commits_the_last_record_of_each_partition(broker):
    bus = KafkaBus(broker.address)
    await bus.start()
    await bus.create_topics({"t.many": 3})
    for i in range(12):
        await bus.publish("t.many", f"v{i}".encode(), key=f"k{i % 3}".encode())
    c = bus.consumer(["t.many"], "g-many")
    await c.start()
    got = await _drain(c, 12)
    await c.commit_all(reversed(got))  # order does not matter: the latest per partition
    await c.stop()
    c2 = bus.consumer(["t.many"], "g-many")
    await c2.start()
    assert await c2.getone(timeout=8) is None  # everything was committed
    await bus.publish("t.many", b"after", key=b"k0")
    assert (await _drain(c2, 1))[0].value == b"after"
    await c2.stop()
    await bus.stop()
