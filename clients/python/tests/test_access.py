"""The client's token= against servers with a roles and a tokens file."""

import pytest

import atomq
from cluster import Cluster

APP = "app-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(participants=2, roles=["app producer,consumer", "ops operator"],
                tokens={"app": APP, "ops": OPS}).start_all()
    yield c
    c.stop()


def client(cluster, token):
    return atomq.Client(cluster.coordinator, cluster.participants, token=token, retry_for=2.0)


def test_token_names_the_caller_and_its_roles(cluster):
    with client(cluster, OPS) as ops, client(cluster, APP) as app:
        ops.create_queue("p1", "orders")
        ops.create_queue("p2", "audit")
        result = app.execute([("p1", "orders", b"o1"), ("p2", "audit", b"a1")])
        assert result.committed
        app.send("p1", "orders", b"o2")
        got = app.receive("p1", "orders", max_messages=10)
        assert sorted(d.payload for d in got) == [b"o1", b"o2"]
        for d in got:
            d.ack()
        # A producer is no operator: refused, and the queue stays.
        with pytest.raises(atomq.PermissionDenied) as e:
            app.delete_queue("p1", "orders")
        assert "app" in str(e.value) and "operator" in str(e.value)
        assert [q.name for q in ops.list_queues("p1")] == ["orders"]
        # An operator is no producer.
        with pytest.raises(atomq.PermissionDenied):
            ops.send("p1", "orders", b"x")


def test_no_token_or_a_wrong_one_is_unauthenticated(cluster):
    for token in (None, "wrong-token-0123456789abcdef"):
        with client(cluster, token) as c:
            with pytest.raises(atomq.Unauthenticated):
                c.list_queues("p1")
            with pytest.raises(atomq.Unauthenticated):
                c.execute([("p1", "orders", b"x")])
