"""A participant that is a group of three replicas (docs/design.md 10.2):
the client reaches its leader through the members' addresses ("a|b|c"),
and keeps sending, receiving and committing after the leader is killed."""

import pytest

import atomq
from cluster import Cluster


@pytest.fixture(scope="module")
def replicated():
    c = Cluster(participants=1, replicas=3).start_all()
    yield c
    c.stop()


def test_calls_reach_the_leader_and_survive_its_loss(replicated):
    with atomq.Client(replicated.coordinator, replicated.participants, retry_for=15.0) as client:
        client.create_queue("p1", "jobs")
        client.send("p1", "jobs", b"one")
        assert client.execute(enqueue=[("p1", "jobs", b"two")]).committed
        leader = replicated.leader_of("p1")
        assert leader != 0
        replicated.kill(f"p1-r{leader}")
        # The same client: its next calls find the new leader (a deduplicated
        # Send is retried; a plain one may have landed, so it is not).
        client.send("p1", "jobs", b"three", producer_id="test", producer_sequence=1)
        assert client.execute(enqueue=[("p1", "jobs", b"four")]).committed
        assert replicated.leader_of("p1") not in (0, leader)
        got = client.receive("p1", "jobs", max_messages=10, auto_ack=True)
        assert sorted(d.payload for d in got) == [b"four", b"one", b"three", b"two"]


def test_asyncio_client_reaches_the_leader(replicated):
    import asyncio

    from atomq.aio import AsyncClient

    async def run():
        async with AsyncClient(replicated.coordinator, replicated.participants,
                               retry_for=15.0) as client:
            await client.send("p1", "jobs", b"async", producer_id="aio", producer_sequence=1)
            got = await client.receive("p1", "jobs", max_messages=10, auto_ack=True)
            return [d.payload for d in got]

    assert asyncio.run(run()) == [b"async"]
