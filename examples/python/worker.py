#!/usr/bin/env python3
"""The work queue's worker (RabbitMQ tutorial 2's worker.py, for atomq).

    python3 examples/python/worker.py            # Ctrl-C to stop
    python3 examples/python/worker.py --idle 5   # stop after 5 s without a task

Takes one task at a time (prefetch=1, like basic_qos(prefetch_count=1)),
sleeps a second per dot, and acks only once the work is done. Kill a worker
in the middle of a task and the task is delivered to another worker: its
stream ends, so the participant returns its unacked message to the queue at
once (a worker that hangs instead loses its lease after `--lease` seconds).
"""

import argparse
import sys
import time
from pathlib import Path

try:
    import atomq
except ImportError:  # run from a checkout: the package beside the examples
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
    import atomq

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--idle", type=float, help="exit after this many seconds without a task")
parser.add_argument("--lease", type=float, default=30.0, help="seconds a task may take")
parser.add_argument("--dot-seconds", type=float, default=1.0, help="work per dot")
args = parser.parse_args()

client = atomq.Client.from_env()
client.create_queue("p1", "tasks", exist_ok=True)
print(" [*] Waiting for tasks. To exit press CTRL+C", flush=True)
consumer = client.consumer("p1", "tasks", prefetch=1, lease=args.lease,
                           inactivity_timeout=args.idle)
try:
    for task in consumer:
        print(f" [x] Received {task.text!r} (delivery {task.delivery_count})", flush=True)
        time.sleep(task.text.count(".") * args.dot_seconds)
        task.ack()  # after the work: a crash before this line means the task comes again
        print(" [x] Done", flush=True)
except KeyboardInterrupt:
    pass
finally:
    consumer.close()
    client.close()
