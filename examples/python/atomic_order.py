#!/usr/bin/env python3
"""An order and its audit record, on two nodes, in one transaction.

    python3 examples/python/atomic_order.py 42

The order goes to `orders` on p1 and the audit record to `audit` on p2:
both are enqueued or neither is. Then the same with an audit queue that
does not exist: the transaction aborts and the order is not enqueued
either. Last, the interactive form, for when the ops are not known up
front (a `with` block that rolls back if it raises).
"""

import sys
from pathlib import Path

try:
    import atomq
except ImportError:  # run from a checkout: the package beside the examples
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
    import atomq

order = sys.argv[1] if len(sys.argv) > 1 else "42"
client = atomq.Client.from_env()
client.create_queue("p1", "orders", exist_ok=True)
client.create_queue("p2", "audit", exist_ok=True)

# 1. One call, one atomic transaction across p1 and p2.
result = client.execute(enqueue=[("p1", "orders", f"order-{order}"),
                                 ("p2", "audit", f"order-{order} created")])
print(f"{result.txn_id} committed: orders #{result.sequences[0]}, audit #{result.sequences[1]}")

# 2. One op cannot apply (no such queue): nothing is applied anywhere.
before = client.queue_info("p1", "orders").version
try:
    client.execute(enqueue=[("p1", "orders", f"order-{order}-bis"),
                            ("p2", "no-such-queue", f"order-{order}-bis created")])
except atomq.Aborted as aborted:
    print(f"aborted as expected: {aborted.reason}")
after = client.queue_info("p1", "orders").version
print(f"orders unchanged by the abort: {before == after}")

# 3. Interactive: stage as you go, commit at the end of the block.
with client.transaction(protocol="3pc") as txn:
    txn.enqueue("p1", "orders", f"order-{order}-2")
    txn.enqueue("p2", "audit", f"order-{order}-2 created")
print(f"{txn.txn_id} committed (3pc, interactive): sequences {txn.result.sequences}")
client.close()
