"""python3 -m atomq: a tiny CLI for scripts (exec, send, receive).

Addresses come from --coordinator / --participants, or ATOMQ_COORDINATOR /
ATOMQ_PARTICIPANTS, or default to deploy/local/up.sh's cluster. Exit status:
0 done (committed), 1 the transaction aborted, 2 usage error or failed call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from atomq import errors
from atomq.client import Client, Delivery, Message, TLS, parse_participants


def _enqueue(spec: str) -> Message:
    where, sep, payload = spec.partition("=")
    participant, colon, queue = where.partition(":")
    if not sep or not colon or not participant or not queue:
        raise argparse.ArgumentTypeError(f"--enqueue is PARTICIPANT:QUEUE=PAYLOAD, not {spec!r}")
    return Message(participant, queue, payload.encode())


def _ack(spec: str) -> Delivery:
    parts = spec.split(":", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        raise argparse.ArgumentTypeError(f"--ack is PARTICIPANT:QUEUE:SEQ:TOKEN, not {spec!r}")
    return Delivery(parts[0], parts[1], int(parts[2]), b"", {}, 0, parts[3], 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m atomq",
        description="Atomic enqueues and acks across atomq queue nodes, from the shell.",
        epilog="Exit status: 0 done (committed), 1 the transaction aborted, "
               "2 usage error or failed call.")
    p.add_argument("--coordinator", help="coordinator host:port (env ATOMQ_COORDINATOR)")
    p.add_argument("--participants", help="p1=host:port,p2=... (env ATOMQ_PARTICIPANTS)")
    p.add_argument("--token", help="bearer token sent with every call (env ATOMQ_TOKEN)")
    p.add_argument("--tls-ca", help="PEM of the servers' CA: use TLS")
    p.add_argument("--tls-cert", help="client certificate (mTLS)")
    p.add_argument("--tls-key", help="client key (mTLS)")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("exec", help="run one atomic transaction",
                       description="Enqueue and ack atomically; prints the id, the outcome "
                                   "and each enqueue's sequence.")
    e.add_argument("--enqueue", action="append", type=_enqueue, default=[],
                   metavar="PARTICIPANT:QUEUE=PAYLOAD")
    e.add_argument("--ack", action="append", type=_ack, default=[],
                   metavar="PARTICIPANT:QUEUE:SEQ:TOKEN")
    e.add_argument("--protocol", choices=["2pc", "3pc"])
    e.add_argument("--id", help="transaction id (a retry with it returns the first outcome)")
    e.add_argument("--timeout", type=float, help="seconds the votes may take")

    s = sub.add_parser("send", help="enqueue one message outside a transaction")
    s.add_argument("participant")
    s.add_argument("queue")
    s.add_argument("payload")
    s.add_argument("--producer-id")
    s.add_argument("--producer-sequence", type=int)

    r = sub.add_parser("receive", help="receive messages from a queue")
    r.add_argument("participant")
    r.add_argument("queue")
    r.add_argument("--max", type=int, default=1, help="messages at most")
    r.add_argument("--wait", type=float, default=0.0, help="seconds to long-poll")
    r.add_argument("--lease", type=float, help="lease seconds (with --no-ack)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--no-ack", action="store_true",
                      help="leave them leased and print the lease tokens")
    mode.add_argument("--auto-ack", action="store_true",
                      help="deleted by the participant before it answers")
    r.add_argument("--json", action="store_true", help="one JSON object per message")
    return p


def _client(args: argparse.Namespace) -> Client:
    env = Client.from_env()
    tls = env._tls  # ATOMQ_TLS_* from the environment, unless flags say otherwise
    if args.tls_ca or args.tls_cert:
        tls = TLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    return Client(args.coordinator or env.coordinator,
                  parse_participants(args.participants) if args.participants
                  else env.participants, tls=tls,
                  token=args.token or os.environ.get("ATOMQ_TOKEN") or None)


def _exec(client: Client, args: argparse.Namespace) -> int:
    if not args.enqueue and not args.ack:
        print("exec needs at least one --enqueue or --ack", file=sys.stderr)
        return 2
    try:
        r = client.execute(args.enqueue, args.ack, protocol=args.protocol, txn_id=args.id,
                           timeout=args.timeout)
    except errors.Aborted as a:
        print(f"{a.txn_id} ABORTED: {a.reason}")
        return 1
    print(f"{r.txn_id} COMMITTED")
    for m, seq in zip(args.enqueue, r.sequences):
        print(f"  {m.participant}:{m.queue} sequence {seq}")
    return 0


def _receive(client: Client, args: argparse.Namespace) -> int:
    got = client.receive(args.participant, args.queue, max_messages=args.max, wait=args.wait,
                         lease=args.lease, auto_ack=args.auto_ack)
    for d in got:
        if args.json:
            print(json.dumps({"participant": d.participant, "queue": d.queue,
                              "sequence": d.sequence, "payload": d.payload.decode(errors="replace"),
                              "headers": d.headers, "delivery_count": d.delivery_count,
                              "lease_token": d.lease_token}))
        elif args.no_ack:
            print(f"{d.sequence} {d.lease_token} {d.payload.decode(errors='replace')}")
        else:
            print(f"{d.sequence} {d.payload.decode(errors='replace')}")
        if not args.no_ack and not args.auto_ack:
            d.ack()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        with _client(args) as client:
            if args.command == "exec":
                return _exec(client, args)
            if args.command == "send":
                r = client.send(args.participant, args.queue, args.payload,
                                producer_id=args.producer_id,
                                producer_sequence=args.producer_sequence)
                print(f"sequence {r.sequence}" + (" duplicate" if r.duplicate else ""))
                return 0
            return _receive(client, args)
    except errors.AtomqError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
