#!/usr/bin/env python3
"""The work queue's producer (RabbitMQ tutorial 2's new_task.py, for atomq).

    python3 examples/python/new_task.py "A task that takes three seconds..."

Sends one task to the durable queue `tasks` on participant p1 (created if
missing). `send` returns once the message is on disk. Each dot in the task
is a second of work for examples/python/worker.py.
"""

import sys
from pathlib import Path

try:
    import atomq
except ImportError:  # run from a checkout: the package beside the examples
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
    import atomq

client = atomq.Client.from_env()  # ATOMQ_COORDINATOR / ATOMQ_PARTICIPANTS, or up.sh's cluster
client.create_queue("p1", "tasks", exist_ok=True)  # durable: every queue is

message = " ".join(sys.argv[1:]) or "Hello World!"
sent = client.send("p1", "tasks", message)
print(f" [x] Sent {message!r} (tasks sequence {sent.sequence})")
client.close()
