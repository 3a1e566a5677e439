#!/usr/bin/env python3
"""Consume, transform, produce exactly once: orders on p1 become invoices on p3.

    python3 examples/python/pipeline.py --idle 3

Each order is acked and its invoice enqueued in one transaction
(`client.move`), whose id is derived from the delivery: a retry after a lost
reply returns the first outcome, and only one transaction can ever commit
the ack of a message. So whatever crashes (this process, the coordinator, a
node) every order becomes exactly one invoice. `--from` / `--to` pick other
queues (PARTICIPANT:QUEUE).
"""

import argparse
import sys
from pathlib import Path

try:
    import atomq
except ImportError:  # run from a checkout: the package beside the examples
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
    import atomq

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--from", dest="source", default="p1:orders", help="PARTICIPANT:QUEUE")
parser.add_argument("--to", dest="target", default="p3:billing", help="PARTICIPANT:QUEUE")
parser.add_argument("--idle", type=float,
                    help="exit once the source is empty and nothing came for this many seconds")
parser.add_argument("--lease", type=float, default=5.0, help="seconds to move one message")
args = parser.parse_args()
src_node, src_queue = args.source.split(":", 1)
dst_node, dst_queue = args.target.split(":", 1)


def transform(order: bytes) -> bytes:
    return b"invoice for " + order


def source_empty(client: atomq.Client) -> bool:
    try:
        q = client.queue_info(src_node, src_queue)
    except atomq.Unavailable:
        return False
    return q.ready + q.leased + q.pending_in_txn == 0


client = atomq.Client.from_env()
client.create_queue(src_node, src_queue, exist_ok=True)
client.create_queue(dst_node, dst_queue, exist_ok=True)
moved = 0
with client.consumer(src_node, src_queue, prefetch=8, lease=args.lease,
                     inactivity_timeout=args.idle) as consumer:
    while True:
        for order in consumer:
            try:
                result = client.move(order, enqueue=[(dst_node, dst_queue, transform(order.payload))])
            except atomq.Aborted as aborted:  # stale lease, or moved already: it comes again if not
                print(f"skipped {src_queue}#{order.sequence}: {aborted.reason}", flush=True)
                continue
            except atomq.Unavailable as e:  # outcome unknown: a redelivery settles it
                print(f"unknown outcome for {src_queue}#{order.sequence}: {e}", flush=True)
                continue
            moved += 1
            print(f"moved {src_queue}#{order.sequence} -> {dst_queue}#{result.sequences[0]}: "
                  f"{order.text}", flush=True)
        if args.idle is None or source_empty(client):
            break
print(f"moved {moved} messages", flush=True)
client.close()
