"""The Python client against a real cluster speaking mTLS on every link."""

import pytest

import atomq
from cluster import Cluster, make_ca, make_certificate


@pytest.fixture(scope="module")
def cluster():
    """c1, p1 and p2 with --tls_client_auth=require."""
    c = Cluster(participants=2, tls=True).start_all()
    yield c
    c.stop()


def tls(cluster, name="client"):
    ca, cert, key = cluster.client_tls(name)
    return atomq.TLS(ca=ca, cert=cert, key=key)


def test_client_with_its_certificate_commits_receives_and_acks(cluster):
    with atomq.Client(cluster.coordinator, cluster.participants, tls=tls(cluster),
                      retry_for=10.0) as cl:
        cl.create_queue("p1", "orders")
        cl.create_queue("p2", "audit")
        r = cl.execute(enqueue=[("p1", "orders", b"o-1"), ("p2", "audit", b"a-1")])
        assert r.committed
        got = cl.receive("p1", "orders")
        assert [d.payload for d in got] == [b"o-1"]
        got[0].ack()
        # The ack of p2's message and an enqueue on p1, atomically, over mTLS.
        a = cl.receive("p2", "audit")[0]
        assert cl.execute(enqueue=[("p1", "orders", b"o-2")], ack=[a]).committed
        assert [d.payload for d in cl.receive("p1", "orders")] == [b"o-2"]
        assert cl.receive("p2", "audit") == []


def test_tls_from_files_as_well_as_bytes(cluster):
    t = cluster.tls_dir
    files = atomq.TLS(ca=str(t / "ca.pem"), cert=str(t / "client.pem"), key=str(t / "client.key"))
    with atomq.Client(cluster.coordinator, cluster.participants, tls=files, retry_for=5.0) as cl:
        cl.create_queue("p2", "files")
        assert cl.send("p2", "files", b"x").sequence == 1


def test_plaintext_and_certificateless_clients_are_refused(cluster):
    with atomq.Client(cluster.coordinator, cluster.participants, retry_for=0.2) as plain:
        with pytest.raises(atomq.Unavailable):
            plain.execute(enqueue=[("p1", "orders", b"plain")])
    ca, _, _ = cluster.client_tls()
    with atomq.Client(cluster.coordinator, cluster.participants, tls=atomq.TLS(ca=ca),
                      retry_for=0.2) as anonymous:  # TLS, but no client certificate
        with pytest.raises(atomq.Unavailable):
            anonymous.create_queue("p1", "anonymous")


def test_certificate_from_another_ca_is_refused(cluster):
    with atomq.Client(cluster.coordinator, cluster.participants, tls=tls(cluster)) as cl:
        cl.create_queue("p1", "guarded")
    make_ca(cluster.tls_dir, "otherca")
    make_certificate(cluster.tls_dir, "intruder", "otherca", "client", "DNS:client")
    ca, _, _ = cluster.client_tls()
    _, cert, key = cluster.client_tls("intruder")
    with atomq.Client(cluster.coordinator, cluster.participants,
                      tls=atomq.TLS(ca=ca, cert=cert, key=key), retry_for=0.2) as cl:
        with pytest.raises(atomq.Unavailable):
            cl.send("p1", "guarded", b"intruder")
    # Nothing the refused clients sent arrived.
    with atomq.Client(cluster.coordinator, cluster.participants, tls=tls(cluster)) as cl:
        assert "anonymous" not in [q.name for q in cl.list_queues("p1")]
        assert cl.receive("p1", "guarded") == []


def test_from_env_takes_the_certificates_atomqctl_takes(cluster, monkeypatch):
    t = cluster.tls_dir
    monkeypatch.setenv("ATOMQ_COORDINATOR", cluster.coordinator)
    monkeypatch.setenv("ATOMQ_PARTICIPANTS",
                       ",".join(f"{p}={a}" for p, a in cluster.participants.items()))
    monkeypatch.setenv("ATOMQ_TLS_CA", str(t / "ca.pem"))
    monkeypatch.setenv("ATOMQ_TLS_CERT", str(t / "client.pem"))
    monkeypatch.setenv("ATOMQ_TLS_KEY", str(t / "client.key"))
    with atomq.Client.from_env() as cl:
        cl.create_queue("p1", "from-env")
        assert cl.execute(enqueue=[("p1", "from-env", b"x")]).committed
