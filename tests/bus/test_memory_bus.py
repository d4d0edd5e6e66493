import asyncio

import pytest

from tsfl.bus import BusError, MemoryBus


@pytest.fixture
async def bus():
    b = MemoryBus()
    await b.start()
    await b.create_topics({"t": 4, "u": 1})
    yield b
    await b.stop()


async def test_publish_consume_in_key_order(bus):
    for i in range(5):
        await bus.publish("t", f"v{i}".encode(), key=b"same-key")
    async with bus.consumer(["t"], "g") as c:
        got = [(await c.getone(timeout=1)) for _ in range(5)]
    assert [r.value for r in got] == [f"v{i}".encode() for i in range(5)]
    assert len({r.partition for r in got}) == 1
    assert [r.offset for r in got] == list(range(5))


async def test_uncommitted_records_are_redelivered_to_the_group(bus):
    for i in range(3):
        await bus.publish("u", bytes([i]))
    c1 = bus.consumer(["u"], "g")
    await c1.start()
    r0 = await c1.getone(timeout=1)
    await c1.commit(r0)
    await c1.getone(timeout=1)  # read but never committed: "crash"
    await c1.stop()
    c2 = bus.consumer(["u"], "g")
    await c2.start()
    again = [await c2.getone(timeout=1) for _ in range(2)]
    assert [r.value for r in again] == [b"\x01", b"\x02"]
    assert await c2.getone(timeout=0.05) is None
    await c2.stop()


async def test_groups_are_independent_and_members_share_partitions(bus):
    for i in range(40):
        await bus.publish("t", b"x", key=str(i).encode())
    a, b = bus.consumer(["t"], "g"), bus.consumer(["t"], "g")
    other = bus.consumer(["t"], "h")
    for c in (a, b, other):
        await c.start()

    async def drain(c):
        n = 0
        while await c.getone(timeout=0.05) is not None:
            n += 1
        return n

    na, nb, nh = await drain(a), await drain(b), await drain(other)
    assert na + nb == 40 and na > 0 and nb > 0
    assert nh == 40


async def test_committed_records_are_released(bus):
    async with bus.consumer(["u"], "g") as c:
        for i in range(10):
            await bus.publish("u", bytes([i]))
        last = None
        for _ in range(10):
            last = await c.getone(timeout=1)
        assert bus.pending("u") == 10
        await c.commit(last)
        assert bus.pending("u") == 0


async def test_consumer_wakes_on_publish(bus):
    async with bus.consumer(["u"], "g") as c:
        waiter = asyncio.create_task(c.getone(timeout=2))
        await asyncio.sleep(0.01)
        await bus.publish("u", b"hello")
        assert (await waiter).value == b"hello"


async def test_misuse_is_refused(bus):
    with pytest.raises(BusError, match="unknown topic"):
        await bus.publish("nope", b"x")
    with pytest.raises(BusError, match="unknown topic"):
        bus.consumer(["nope"], "g")
    with pytest.raises(BusError, match="bytes"):
        await bus.publish("u", "text")  # type: ignore[arg-type]
