"""Every call of the Python client against real binaries on loopback."""

import itertools
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import atomq
from atomq.v1 import coordinator_pb2 as cpb
from atomq.v1 import coordinator_pb2_grpc as cgrpc
from atomq.v1 import types_pb2 as tpb
from cluster import free_port

_names = itertools.count(1)
PKG = Path(__file__).resolve().parents[1]


def fresh(client, participant, **options):
    """A new queue on `participant` with a unique name."""
    name = f"q{next(_names)}"
    client.create_queue(participant, name, **options)
    return name


def drain(client, participant, queue):
    out = []
    while True:
        got = client.receive(participant, queue, max_messages=100)
        if not got:
            return out
        for d in got:
            out.append(d.payload)
            d.ack()


# -- execute ------------------------------------------------------------------

def test_execute_commits_across_nodes_with_sequences(client):
    a, b = fresh(client, "p1"), fresh(client, "p2")
    r = client.execute(enqueue=[("p1", a, b"one"), ("p2", b, "two", {"k": "v"}),
                                atomq.Message("p1", a, b"three")])
    assert r.committed and r.outcome == "COMMITTED"
    assert r.sequences == [1, 1, 2]
    assert r.txn_id.startswith("py-")
    got = client.receive("p2", b)
    assert got[0].payload == b"two" and got[0].headers == {"k": "v"}
    assert drain(client, "p1", a) == [b"one", b"three"]


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
def test_execute_protocols_and_reply_at_decision(client, protocol):
    a, b = fresh(client, "p1"), fresh(client, "p3")
    r = client.execute(enqueue=[("p1", a, b"x"), ("p3", b, b"y")], protocol=protocol,
                       timeout=2.0)
    assert r.sequences == [1, 1]
    r = client.execute(enqueue=[("p1", a, b"x2"), ("p3", b, b"y2")], protocol=protocol,
                       reply_at_decision=True)
    assert r.committed
    deadline = time.monotonic() + 5
    while client.queue_info("p3", b).ready < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.queue_info("p3", b).ready == 2


def test_execute_aborts_with_reason_and_applies_nothing(client):
    a = fresh(client, "p1")
    with pytest.raises(atomq.Aborted) as e:
        client.execute(enqueue=[("p1", a, b"x"), ("p2", "missing", b"y")], txn_id="abort-1")
    assert 'queue "missing" does not exist' in e.value.reason
    assert e.value.txn_id == "abort-1"
    assert client.queue_info("p1", a).ready == 0


def test_typed_errors(client):
    with pytest.raises(atomq.InvalidArgument):
        client.execute(enqueue=[("p9", "q", b"x")])  # the coordinator knows no p9
    with pytest.raises(atomq.InvalidArgument):
        client.execute(enqueue=[])  # no ops
    with pytest.raises(atomq.InvalidArgument):
        client.execute(enqueue=[("p1", "q", b"x")], txn_id="bad id!")
    with pytest.raises(atomq.InvalidArgument):
        client.execute(enqueue=[("p1", "q", b"x")], protocol="4pc")
    with pytest.raises(atomq.InvalidArgument):
        client.send("p9", "q", b"x")  # not in this Client's participants
    with pytest.raises(atomq.NotFound):
        client.receive("p1", "no-such-queue")
    a = fresh(client, "p1")
    client.execute(enqueue=[("p1", a, b"x")], txn_id="dup-1")
    with pytest.raises(atomq.AlreadyExists):
        client.execute(enqueue=[("p1", a, b"other")], txn_id="dup-1")
    with pytest.raises(atomq.AlreadyExists):
        client.create_queue("p1", a)
    d = client.receive("p1", a)[0]
    d.ack()
    with pytest.raises(atomq.FailedPrecondition):
        d.ack()  # the lease is gone with the message
    assert issubclass(atomq.DeadlineExceeded, atomq.Unavailable)


def test_retry_with_same_id_returns_first_outcome(client):
    a, b = fresh(client, "p1"), fresh(client, "p2")
    ops = [("p1", a, b"once"), ("p2", b, b"once")]
    first = client.execute(enqueue=ops, txn_id="retry-1")
    again = client.execute(enqueue=ops, txn_id="retry-1")  # as after a lost reply
    assert again == first
    assert client.queue_info("p1", a).ready == 1 and client.queue_info("p2", b).ready == 1
    with pytest.raises(atomq.Aborted):
        client.execute(enqueue=[("p1", a, b"x"), ("p2", "missing", b"y")], txn_id="retry-2")
    with pytest.raises(atomq.Aborted):  # an abort stays an abort
        client.execute(enqueue=[("p1", a, b"x"), ("p2", "missing", b"y")], txn_id="retry-2")


def test_unavailable_is_retried_then_raised(cluster, client):
    dead = atomq.Client(f"127.0.0.1:{free_port()}", retry_for=0.3)
    start = time.monotonic()
    with pytest.raises(atomq.Unavailable):
        dead.execute(enqueue=[("p1", "q", b"x")])
    assert time.monotonic() - start < 3
    dead.close()

    # The coordinator is down when the call starts: the client retries the
    # same id until it is back, and the transaction runs once.
    a = fresh(client, "p1")
    cluster.kill("c1")
    restart = threading.Timer(0.7, cluster.start_coordinator)
    restart.start()
    try:
        r = client.execute(enqueue=[("p1", a, b"late")])
    finally:
        restart.join()
    assert r.sequences == [1]
    assert drain(client, "p1", a) == [b"late"]


# -- send, receive, queues ----------------------------------------------------

def test_send_with_producer_dedup(client):
    a = fresh(client, "p1")
    first = client.send("p1", a, b"m1", producer_id="prod-1", producer_sequence=1)
    retry = client.send("p1", a, b"m1", producer_id="prod-1", producer_sequence=1)
    assert not first.duplicate and retry.duplicate and retry.sequence == first.sequence
    plain = client.send("p1", a, "m2", headers={"h": "1"})
    assert plain.sequence == first.sequence + 1 and not plain.duplicate
    with pytest.raises(atomq.InvalidArgument):
        client.send("p1", a, b"m", producer_id="prod-1")
    assert drain(client, "p1", a) == [b"m1", b"m2"]


def test_receive_long_poll_lease_and_auto_ack(client):
    a = fresh(client, "p1")
    threading.Timer(0.3, lambda: client.send("p1", a, b"soon")).start()
    start = time.monotonic()
    got = client.receive("p1", a, wait=5.0, lease=0.3)
    assert [d.payload for d in got] == [b"soon"] and time.monotonic() - start < 4
    assert got[0].delivery_count == 1 and got[0].lease_token
    again = client.receive("p1", a, wait=3.0)  # the 0.3 s lease ran out
    assert again[0].sequence == got[0].sequence and again[0].delivery_count == 2
    again[0].nack()
    auto = client.receive("p1", a, auto_ack=True)
    assert auto[0].payload == b"soon" and not auto[0].lease_token
    assert client.queue_info("p1", a).ready == 0
    assert client.receive("p1", a) == []


def test_peek_and_purge(client):
    a = fresh(client, "p1")
    for m in (b"m1", b"m2", b"m3"):
        client.send("p1", a, m)
    looked = client.peek("p1", a, max_messages=5)
    assert [d.payload for d in looked] == [b"m1", b"m2", b"m3"]
    assert all(d.delivery_count == 0 and not d.lease_token for d in looked)
    with pytest.raises(atomq.InvalidArgument):
        looked[0].ack()
    assert client.queue_info("p1", a).ready == 3
    leased = client.receive("p1", a)
    assert leased[0].payload == b"m1" and leased[0].delivery_count == 1
    assert client.purge_queue("p1", a) == 2
    info = client.queue_info("p1", a)
    assert info.ready == 0 and info.leased == 1
    leased[0].nack()
    assert [d.payload for d in client.peek("p1", a)] == [b"m1"]
    with pytest.raises(atomq.NotFound):
        client.purge_queue("p1", "missing")


def test_queue_administration(client):
    dlq = fresh(client, "p2")
    a = fresh(client, "p2", max_deliveries=2, dead_letter_queue=dlq)
    info = client.queue_info("p2", a)
    assert info.max_deliveries == 2 and info.dead_letter_queue == dlq
    assert client.create_queue("p2", a, exist_ok=True).name == a
    assert {a, dlq} <= {q.name for q in client.list_queues("p2")}
    client.delete_queue("p2", a)
    with pytest.raises(atomq.NotFound):
        client.queue_info("p2", a)
    with pytest.raises(atomq.NotFound):
        client.delete_queue("p2", a)


# -- consumers ----------------------------------------------------------------

def test_stream_consumer_prefetch_ack_nack_dead_letter(client):
    dlq = fresh(client, "p1")
    a = fresh(client, "p1", max_deliveries=5, dead_letter_queue=dlq)
    for i in range(5):
        client.send("p1", a, f"m{i}")
    with client.consumer("p1", a, prefetch=2, inactivity_timeout=1.0) as consumer:
        first = consumer.get(timeout=5)
        second = consumer.get(timeout=5)
        assert [first.text, second.text] == ["m0", "m1"]
        time.sleep(0.3)
        assert client.queue_info("p1", a).leased == 2  # the window is full
        assert consumer.get(timeout=0.3) is None
        first.ack()
        third = consumer.get(timeout=5)
        assert third.text == "m2"
        assert second.nack() is False  # back to the queue, delivered again
        assert third.nack(dead_letter=True, reason="bad order") is True
        rest = [(d.text, d.delivery_count) for d in consumer]  # none acked: 2 come
        assert rest == [("m1", 2), ("m3", 1)]
    time.sleep(0.3)  # the stream's end returns its unacked deliveries at once
    assert client.queue_info("p1", a).ready == 3
    dead = client.receive("p1", dlq)[0]
    assert dead.text == "m2" and dead.headers["x-dead-letter-reason"] == "bad order"


def test_consumer_auto_ack_and_polling(client):
    a = fresh(client, "p1")
    for i in range(6):
        client.send("p1", a, f"m{i}")
    with client.consumer("p1", a, prefetch=2, auto_ack=True, inactivity_timeout=1.0) as c:
        got = [d.text for d in c]
    assert got == [f"m{i}" for i in range(6)]
    assert client.queue_info("p1", a).ready == 0

    for i in range(3):
        client.send("p1", a, f"n{i}")
    with client.consumer("p1", a, prefetch=2, stream=False, inactivity_timeout=1.0) as c:
        seen = []
        for d in c:
            seen.append(d.text)
            d.ack()
    assert seen == ["n0", "n1", "n2"]
    assert client.queue_info("p1", a).ready == 0
    with pytest.raises(atomq.NotFound):
        client.consumer("p1", "no-such-queue").get(timeout=5)


def test_stream_consumer_reconnects_after_participant_restart(cluster, client):
    a = fresh(client, "p2")
    client.send("p2", a, b"survives")
    with client.consumer("p2", a, prefetch=1) as consumer:
        before = consumer.get(timeout=5)
        cluster.start_participant("p2")  # kills and restarts p2: leases are gone
        after = consumer.get(timeout=10)
        assert after.text == "survives" and after.lease_token != before.lease_token
        with pytest.raises((atomq.FailedPrecondition, atomq.Unavailable)):
            before.ack()
        after.ack()
    assert client.queue_info("p2", a).ready == 0


# -- move and interactive transactions ----------------------------------------

def test_move_is_exactly_once(client):
    src, dst = fresh(client, "p1"), fresh(client, "p2")
    client.send("p1", src, b"order-1")
    with client.consumer("p1", src, prefetch=1, inactivity_timeout=1.0) as consumer:
        d = consumer.get(timeout=5)
        r = client.move(d, enqueue=[("p2", dst, b"invoice-1")])
        assert r.txn_id == d.move_id == f"mv-p1:{src}:{d.sequence}:{d.lease_token}"
        assert client.move(d, enqueue=[("p2", dst, b"invoice-1")]) == r  # a retry
        assert consumer.get(timeout=0.5) is None
        client.send("p1", src, b"order-2")
        assert consumer.get(timeout=5).text == "order-2"  # the move gave its credit back
    stale = client.receive("p1", src, lease=0.2, wait=3)[0]  # order-2, back from the stream
    time.sleep(0.5)
    fresh_d = client.receive("p1", src)[0]
    with pytest.raises(atomq.Aborted) as e:
        client.move(stale, enqueue=[("p2", dst, b"invoice-2")])
    assert "lease" in e.value.reason
    client.move(fresh_d, enqueue=[("p2", dst, b"invoice-2")])
    assert drain(client, "p2", dst) == [b"invoice-1", b"invoice-2"]
    assert client.queue_info("p1", src).ready == 0
    long = atomq.Delivery("p1", "x" * 200, 7, b"", {}, 1, "1-2", 0)
    assert long.move_id.startswith("mv-7-") and len(long.move_id) <= 128


def test_interactive_transaction_commits(client):
    src, a, b = fresh(client, "p1"), fresh(client, "p2"), fresh(client, "p3")
    client.send("p1", src, b"in")
    d = client.receive("p1", src)[0]
    with client.transaction(protocol="3pc", timeout=10) as txn:
        txn.ack(d)
        txn.enqueue("p2", a, b"out-a")
        txn.enqueue("p3", b, b"out-b", headers={"k": "v"})
        txn.enqueue("p2", a, b"out-a2")
    assert txn.result.sequences == [1, 1, 2]
    assert txn.result.staged == {"p1": [0], "p2": [1, 2], "p3": [1]}
    assert client.queue_info("p1", src).ready + client.queue_info("p1", src).leased == 0
    assert drain(client, "p2", a) == [b"out-a", b"out-a2"]
    with pytest.raises(atomq.FailedPrecondition):
        txn.enqueue("p2", a, b"late")  # it has ended


def test_interactive_transaction_rolls_back_on_exception(client):
    src, a = fresh(client, "p1"), fresh(client, "p2")
    client.send("p1", src, b"in")
    d = client.receive("p1", src)[0]
    with pytest.raises(RuntimeError, match="work failed"):
        with client.transaction() as txn:
            txn.ack(d)
            txn.enqueue("p2", a, b"never")
            assert client.queue_info("p1", src).pending_in_txn == 1
            raise RuntimeError("work failed")
    assert client.queue_info("p2", a).ready == 0  # the staged enqueue is gone
    deadline = time.monotonic() + 5
    while client.queue_info("p1", src).pending_in_txn and time.monotonic() < deadline:
        time.sleep(0.02)
    d.ack()  # unpinned: the lease holds again, and a plain ack works
    with pytest.raises(atomq.NotFound):  # staging validates at once
        with client.transaction() as txn:
            txn.enqueue("p2", "no-such-queue", b"x")
    txn2 = client.transaction().begin()
    txn2.enqueue("p2", a, b"dropped")
    txn2.rollback()
    assert client.queue_info("p2", a).ready == 0
    with pytest.raises(atomq.InvalidArgument):
        client.transaction().commit()  # nothing staged


def test_interactive_commit_after_coordinator_restart_aborts(cluster, client):
    a = fresh(client, "p2")
    txn = client.transaction().begin()
    txn.enqueue("p2", a, b"lost")
    cluster.start_coordinator()  # kills and restarts c1: the open transaction is gone
    with pytest.raises(atomq.Aborted):
        txn.commit()
    assert client.queue_info("p2", a).ready == 0


# -- credentials --------------------------------------------------------------

class _Recorder(cgrpc.CoordinatorServicer):
    """A stand-in coordinator that remembers each call's metadata."""

    def __init__(self):
        self.metadata = []

    def Execute(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return cpb.ExecuteResponse(txn_id=request.txn_id, outcome=tpb.COMMITTED,
                                   results=[cpb.OpResult(sequence=9)])


def _serve(credentials=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    recorder = _Recorder()
    cgrpc.add_CoordinatorServicer_to_server(recorder, server)
    port = free_port()
    if credentials is None:
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    return server, recorder, f"127.0.0.1:{port}"


def test_bearer_token_is_sent_on_every_call():
    server, recorder, addr = _serve()
    try:
        with atomq.Client(addr, token="s3cret") as cl:
            assert cl.execute(enqueue=[("p1", "q", b"x")]).sequences == [9]
        assert recorder.metadata[0]["authorization"] == "Bearer s3cret"
    finally:
        server.stop(0)


def _certificates(tmp):
    """A CA and a certificate for 127.0.0.1 / localhost, made with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout",
        "server.key", "-out", "server.csr")
    (tmp / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "ext", "-out", "server.pem")


@pytest.mark.skipif(not any(os.access(os.path.join(p, "openssl"), os.X_OK)
                            for p in os.environ.get("PATH", "").split(":")),
                    reason="openssl not installed")
def test_tls_channel_and_token(tmp_path):
    _certificates(tmp_path)
    creds = grpc.ssl_server_credentials(
        [((tmp_path / "server.key").read_bytes(), (tmp_path / "server.pem").read_bytes())])
    server, recorder, addr = _serve(creds)
    try:
        tls = atomq.TLS(ca=str(tmp_path / "ca.pem"))
        with atomq.Client(addr, tls=tls, token="t0k") as cl:
            assert cl.execute(enqueue=[("p1", "q", b"x")]).committed
        assert recorder.metadata[0]["authorization"] == "Bearer t0k"
        with atomq.Client(addr, retry_for=0.2) as plain:  # plaintext to a TLS server
            with pytest.raises(atomq.Unavailable):
                plain.execute(enqueue=[("p1", "q", b"x")])
        other = tmp_path / "other"
        other.mkdir()
        _certificates(other)
        with atomq.Client(addr, tls=atomq.TLS(ca=str(other / "ca.pem")), retry_for=0.2) as cl:
            with pytest.raises(atomq.Unavailable):  # a certificate from another CA
                cl.execute(enqueue=[("p1", "q", b"x")])
    finally:
        server.stop(0)
    with pytest.raises(atomq.InvalidArgument):
        atomq.TLS(cert=b"only a cert").credentials()
    assert isinstance(atomq.TLS(ca=b"pem bytes").credentials(), grpc.ChannelCredentials)


# -- the CLI ------------------------------------------------------------------

def _cli(cluster, *args):
    env = {**cluster.env(), "PYTHONPATH": str(PKG)}
    return subprocess.run([sys.executable, "-m", "atomq", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_cli(cluster, client):
    assert "exec" in _cli(cluster, "--help").stdout
    a, b = fresh(client, "p1"), fresh(client, "p2")
    r = _cli(cluster, "exec", f"--enqueue=p1:{a}=hello", f"--enqueue=p2:{b}=hi", "--id=cli-1",
             "--protocol=3pc")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["cli-1 COMMITTED", f"  p1:{a} sequence 1",
                                     f"  p2:{b} sequence 1"]
    r = _cli(cluster, "exec", f"--enqueue=p1:{a}=x", "--enqueue=p2:missing=y")
    assert r.returncode == 1 and "ABORTED" in r.stdout and "missing" in r.stdout
    r = _cli(cluster, "send", "p1", a, "second", "--producer-id=cli", "--producer-sequence=1")
    assert r.stdout.strip() == "sequence 2"
    r = _cli(cluster, "receive", "p1", a, "--max=1", "--no-ack")
    seq, token, payload = r.stdout.split()
    assert (seq, payload) == ("1", "hello")
    r = _cli(cluster, "exec", f"--ack=p1:{a}:{seq}:{token}", f"--enqueue=p2:{b}=moved")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _cli(cluster, "receive", "p1", a, "--max=5", "--wait=1", "--json")  # and acks
    assert '"payload": "second"' in r.stdout
    assert _cli(cluster, "receive", "p1", a).stdout == ""
    assert drain(client, "p2", b) == [b"hi", b"moved"]
    assert _cli(cluster, "receive", "p1", "no-such-queue").returncode == 2
    assert _cli(cluster, "exec").returncode == 2


# -- asyncio ------------------------------------------------------------------

def test_async_client(cluster):
    import asyncio

    import atomq.aio

    async def main():
        async with atomq.aio.AsyncClient(cluster.coordinator, cluster.participants,
                                         token="t") as client:
            sync = atomq.Client(cluster.coordinator, cluster.participants)
            a, b = fresh(sync, "p1"), fresh(sync, "p2")
            results = await asyncio.gather(*[
                client.execute(enqueue=[("p1", a, f"m{i}"), ("p2", b, f"a{i}")])
                for i in range(20)])
            assert sorted(r.sequences[0] for r in results) == list(range(1, 21))
            again = await client.execute(enqueue=[("p1", a, "m0"), ("p2", b, "a0")],
                                         txn_id=results[0].txn_id)
            assert again == results[0]
            with pytest.raises(atomq.Aborted):
                await client.execute(enqueue=[("p1", a, "x"), ("p2", "missing", "y")])
            with pytest.raises(atomq.InvalidArgument):
                await client.send("p9", a, b"x")
            first = await client.send("p2", b, b"s", producer_id="aio", producer_sequence=1)
            retry = await client.send("p2", b, b"s", producer_id="aio", producer_sequence=1)
            assert retry.duplicate and retry.sequence == first.sequence
            got = await client.receive("p1", a, max_messages=2, wait=1)
            moved = await client.move(got[0], enqueue=[("p2", b, b"moved")])
            assert moved.txn_id == got[0].move_id
            await got[1].ack()
            assert await (await client.receive("p1", a))[0].nack() is False
            with pytest.raises(atomq.NotFound):
                await client.receive("p1", "no-such-queue")
            assert sync.queue_info("p1", a).ready == 18
            c = fresh(sync, "p2")
            await client.send("p2", c, b"x")
            looked = await client.peek("p2", c, max_messages=10)
            assert [d.payload for d in looked] == [b"x"] and not looked[0].lease_token
            assert await client.purge_queue("p2", c) == 1
            assert await client.peek("p2", c) == []
            sync.close()

    asyncio.run(main())
