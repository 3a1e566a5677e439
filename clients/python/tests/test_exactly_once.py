"""The exactly-once pipeline example under SIGKILLs of every process.

examples/python/pipeline.py moves N messages from p1:in to p2:out while
this test SIGKILLs and restarts the coordinator, both participants and the
pipeline itself at random points of progress; afterwards `out` holds each
message exactly once and `in` is empty. ATOMQ_PY_PIPELINE_SEED replays a run.
"""

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import atomq
from cluster import Cluster

ROOT = Path(__file__).resolve().parents[3]
N = int(os.environ.get("ATOMQ_PY_PIPELINE_MESSAGES", "150"))
SEED = int(os.environ.get("ATOMQ_PY_PIPELINE_SEED", "20261201"))


class Pipeline:
    """pipeline.py as a child process, restartable, counting its moves."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.moved = 0
        self.output = []
        self.proc = None
        self.reader = None

    def start(self) -> None:
        env = {**self.cluster.env(), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "python" / "pipeline.py"),
             "--from=p1:in", "--to=p2:out", "--idle=3", "--lease=2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self.reader.start()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.output.append(line.rstrip())
            if line.startswith("moved in#"):
                self.moved += 1


def test_pipeline_moves_each_message_once_under_kills():
    rng = random.Random(SEED)
    print(f"seed {SEED}, {N} messages (replay: ATOMQ_PY_PIPELINE_SEED={SEED})")
    cluster = Cluster(participants=2).start_all()
    try:
        client = atomq.Client(cluster.coordinator, cluster.participants)
        client.create_queue("p1", "in")
        client.create_queue("p2", "out")
        payloads = [f"msg-{1000 + i}" for i in range(N)]
        for p in payloads:
            client.send("p1", "in", p)

        pipeline = Pipeline(cluster)
        pipeline.start()
        victims = ["c1", "p1", "p2", "pipeline", rng.choice(["c1", "p1", "p2"])]
        rng.shuffle(victims)
        thresholds = sorted(rng.randrange(N // 10, N * 8 // 10) for _ in victims)
        last = 0
        for victim, threshold in zip(victims, thresholds):
            end = time.monotonic() + 60
            # Each kill after some progress since the last restart, so that
            # none lands on a pipeline still reconnecting.
            threshold = max(threshold, last + 5)
            while pipeline.moved < threshold and pipeline.proc.poll() is None:
                assert time.monotonic() < end, "\n".join(pipeline.output[-20:])
                time.sleep(0.005)
            time.sleep(rng.random() * 0.05)
            print(f"SIGKILL {victim} at {pipeline.moved} moved")
            last = pipeline.moved
            if victim == "pipeline":
                pipeline.kill()
                pipeline.start()
                continue
            cluster.kill(victim)
            time.sleep(0.1 + rng.random() * 0.3)
            if victim == "c1":
                cluster.start_coordinator()
            else:
                cluster.start_participant(victim)

        assert pipeline.proc.wait(timeout=90) == 0, "\n".join(pipeline.output[-20:])
        skipped = sum(line.startswith("skipped ") for line in pipeline.output)
        unknown = sum(line.startswith("unknown outcome ") for line in pipeline.output)
        print(f"{pipeline.moved} moves reported, {skipped} skipped, {unknown} unknown outcomes")
        assert pipeline.output[-1].startswith("moved "), pipeline.output[-5:]
        out = []
        while got := client.receive("p2", "out", max_messages=100):
            for d in got:
                out.append(d.text)
                d.ack()
        counts = collections.Counter(out)
        expected = {f"invoice for {p}" for p in payloads}
        duplicated = {p: k for p, k in counts.items() if k > 1}
        lost = expected - set(counts)
        assert not duplicated, f"arrived more than once: {duplicated}"
        assert not lost, f"lost: {sorted(lost)}"
        assert set(counts) == expected
        info = client.queue_info("p1", "in")
        assert info.ready + info.leased + info.pending_in_txn == 0
        client.close()
    except BaseException:
        print(cluster.logs())
        cluster.stop(keep=True)
        raise
    cluster.stop()
