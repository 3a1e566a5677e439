"""The examples run to completion against a real cluster, output checked."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import atomq
from cluster import BIN

ROOT = Path(__file__).resolve().parents[3]
PY = ROOT / "examples" / "python"
SH = ROOT / "examples" / "shell"


def env(cluster):
    """The examples find the cluster through ATOMQ_* variables (up.sh's ports otherwise)."""
    e = cluster.env()
    for p, addr in cluster.participants.items():
        e[f"ATOMQ_{p.upper()}"] = addr
    e["ATOMQCTL"] = str(BIN / "atomqctl")
    e["PYTHONUNBUFFERED"] = "1"
    return e


def run(cluster, *cmd, timeout=60):
    r = subprocess.run([str(c) for c in cmd], env=env(cluster), capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    return r


def python(cluster, script, *args, timeout=60):
    r = run(cluster, sys.executable, PY / script, *args, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def drain(client, participant, queue):
    out = []
    while got := client.receive(participant, queue, max_messages=100):
        for d in got:
            out.append(d.text)
            d.ack()
    return out


@pytest.fixture
def client(cluster):
    with atomq.Client(cluster.coordinator, cluster.participants) as c:
        yield c


def test_work_queue(cluster, client):
    for task in ["first.", "second..", "third"]:
        out = python(cluster, "new_task.py", task)
        assert re.fullmatch(rf" \[x\] Sent '{re.escape(task)}' \(tasks sequence \d+\)\n", out)
    out = python(cluster, "worker.py", "--idle=1.5", "--dot-seconds=0.05")
    assert out.count(" [x] Done") == 3
    for task in ["first.", "second..", "third"]:
        assert f" [x] Received '{task}' (delivery 1)" in out
    assert client.queue_info("p1", "tasks").ready == 0


def test_killed_workers_task_is_delivered_again(cluster, client):
    python(cluster, "new_task.py", "slow.........")
    worker = subprocess.Popen([sys.executable, str(PY / "worker.py"), "--dot-seconds=1"],
                              env=env(cluster), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in worker.stdout:
            if "Received 'slow.........'" in line:
                break
        os.kill(worker.pid, signal.SIGKILL)  # in the middle of the work
    finally:
        worker.kill()
        worker.wait()
    out = python(cluster, "worker.py", "--idle=2", "--dot-seconds=0.05")
    assert "Received 'slow.........'" in out and " [x] Done" in out
    assert client.queue_info("p1", "tasks").ready == 0


def test_atomic_order(cluster, client):
    out = python(cluster, "atomic_order.py", "7").splitlines()
    assert re.fullmatch(r"py-\w+ committed: orders #\d+, audit #\d+", out[0]), out
    assert out[1] == 'aborted as expected: p2 voted NO: queue "no-such-queue" does not exist on p2'
    assert out[2] == "orders unchanged by the abort: True"
    assert re.fullmatch(r"py-\w+ committed \(3pc, interactive\): sequences \[\d+, \d+\]", out[3])
    assert drain(client, "p1", "orders") == ["order-7", "order-7-2"]
    assert drain(client, "p2", "audit") == ["order-7 created", "order-7-2 created"]


def test_pipeline(cluster, client):
    client.create_queue("p1", "orders", exist_ok=True)
    for i in range(5):
        client.send("p1", "orders", f"order-{i}")
    out = python(cluster, "pipeline.py", "--idle=1").splitlines()
    assert out[-1] == "moved 5 messages", out
    assert all(line.startswith("moved orders#") for line in out[:-1])
    assert drain(client, "p3", "billing") == [f"invoice for order-{i}" for i in range(5)]
    assert client.queue_info("p1", "orders").ready == 0


def test_shell_work_queue(cluster, client):
    r = run(cluster, "bash", SH / "work_queue.sh")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" [x] Done") == 3
    assert " [x] Received second task.." in r.stdout
    assert client.queue_info("p1", "tasks").ready + client.queue_info("p1", "tasks").leased == 0


def test_shell_atomic_order_and_pipeline(cluster, client):
    r = run(cluster, "bash", SH / "atomic_order.sh", "9")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith(" COMMITTED") and "p2:audit sequence" in lines[2]
    assert "ABORTED: p2 voted NO" in r.stdout and "exit status 1" in r.stdout
    assert drain(client, "p2", "audit") == ["order-9 created"]
    r = run(cluster, "bash", SH / "pipeline.sh")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" COMMITTED") == 1
    assert drain(client, "p3", "billing") == ["invoice for order-9"]
    assert client.queue_info("p1", "orders").ready == 0
