"""The atomq client: transactions at the coordinator, queues at participants."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, Iterable, List, Mapping,
                    Optional, Tuple, TypeVar, Union)

import grpc

from atomq import errors
from atomq.v1 import coordinator_pb2 as cpb
from atomq.v1 import coordinator_pb2_grpc as cgrpc
from atomq.v1 import participant_pb2 as ppb
from atomq.v1 import participant_pb2_grpc as pgrpc
from atomq.v1 import types_pb2 as tpb

if TYPE_CHECKING:
    from atomq.consumer import Consumer

Payload = Union[bytes, str]
# (participant, queue, payload) or (participant, queue, payload, headers).
EnqueueSpec = Union["Message", Tuple[str, str, Payload], Tuple[str, str, Payload, Mapping[str, str]]]
T = TypeVar("T")

_PROTOCOLS = {None: tpb.PROTOCOL_UNSPECIFIED, "2pc": tpb.TWO_PC, "3pc": tpb.THREE_PC}
_ID_ALPHABET = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _bytes(payload: Payload) -> bytes:
    return payload.encode() if isinstance(payload, str) else bytes(payload)


def _protocol(protocol: Optional[str]) -> int:
    try:
        return _PROTOCOLS[protocol.lower() if protocol else None]
    except KeyError:
        raise errors.InvalidArgument(f'protocol must be "2pc" or "3pc", not {protocol!r}') from None


def new_txn_id(prefix: str = "py") -> str:
    """A fresh transaction id, minted here so that a retry can reuse it."""
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Message:
    """One message to enqueue: on ``queue`` of participant ``participant``."""

    participant: str
    queue: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def of(spec: EnqueueSpec) -> "Message":
        """A ``Message`` from a ``(participant, queue, payload[, headers])`` tuple."""
        if isinstance(spec, Message):
            return spec
        if len(spec) not in (3, 4):
            raise errors.InvalidArgument(
                f"an enqueue is (participant, queue, payload[, headers]), not {spec!r}")
        headers = spec[3] if len(spec) == 4 else {}  # type: ignore[misc]
        return Message(spec[0], spec[1], _bytes(spec[2]), dict(headers))

    def op(self) -> tpb.Op:
        """The protobuf op."""
        return tpb.Op(participant=self.participant,
                      enqueue=tpb.Enqueue(queue=self.queue, payload=self.payload,
                                          headers=dict(self.headers)))


@dataclass
class Delivery:
    """A message received under a lease; ``ack()`` or ``nack()`` it once done.

    ``lease_token`` is empty for auto-acked deliveries (already deleted).
    """

    participant: str
    queue: str
    sequence: int
    payload: bytes
    headers: Dict[str, str]
    delivery_count: int
    lease_token: str
    lease_expires_unix_ms: int
    _settler: Any = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode()

    @property
    def move_id(self) -> str:
        """The transaction id that moves this delivery (``Client.move``).

        Derived from where the message is and its lease, as README
        recommends: a retry after a lost reply returns the first outcome, and
        a redelivery (a new lease) gets a new id.
        """
        mid = f"mv-{self.participant}:{self.queue}:{self.sequence}:{self.lease_token}"
        if _ID_ALPHABET.match(mid):
            return mid
        digest = hashlib.sha256(
            "\0".join([self.participant, self.queue, str(self.sequence),
                       self.lease_token]).encode()).hexdigest()
        return f"mv-{self.sequence}-{digest[:40]}"

    def op(self) -> tpb.Op:
        """The protobuf op that acks this delivery inside a transaction."""
        if not self.lease_token:
            raise errors.InvalidArgument(
                f"{self.participant}:{self.queue}:{self.sequence} has no lease (auto-acked)")
        return tpb.Op(participant=self.participant,
                      ack=tpb.Ack(queue=self.queue, sequence=self.sequence,
                                  lease_token=self.lease_token))

    def ack(self) -> Optional[Awaitable[None]]:
        """Deletes the message; returns once the deletion is durable (await
        it for a delivery of ``atomq.aio.AsyncClient``).

        Raises ``FailedPrecondition`` when the lease is no longer current
        (it expired, or the consumer's stream ended): the message will be, or
        was, delivered again.
        """
        return self._require_settler().settle_ack(self)

    def nack(self, dead_letter: bool = False, reason: str = "") -> Union[bool, Awaitable[bool]]:
        """Returns the message to its queue now, or (``dead_letter``) moves it
        to the queue's dead-letter queue. Returns whether it was dead-lettered
        (from a stream consumer: whether that was asked for; a requeue of a
        message at the queue's ``max_deliveries`` dead-letters it too)."""
        return self._require_settler().settle_nack(self, dead_letter, reason)

    def _require_settler(self) -> Any:
        if self._settler is None:
            raise errors.InvalidArgument("this delivery was not received through a Client")
        return self._settler

    @staticmethod
    def from_proto(participant: str, d: ppb.Delivery, settler: Any) -> "Delivery":
        """A ``Delivery`` from the protobuf one."""
        return Delivery(participant, d.queue, d.sequence, d.payload, dict(d.headers),
                        d.delivery_count, d.lease_token, d.lease_expires_unix_ms, settler)


@dataclass
class Result:
    """A committed transaction.

    ``sequences`` holds the sequence each enqueue got in its queue, in the
    order the enqueues were given (0 where the reply came before the
    participant applied the commit, e.g. with ``reply_at_decision``);
    ``staged`` (interactive transactions) the sequences per participant.
    """

    txn_id: str
    outcome: str
    sequences: List[int]
    staged: Dict[str, List[int]] = field(default_factory=dict)

    @property
    def committed(self) -> bool:
        """Always true for a returned result (an abort raises ``Aborted``)."""
        return self.outcome == "COMMITTED"


@dataclass
class SendResult:
    """The answer to ``Client.send``: the message's sequence, or ``duplicate``
    when a producer sequence at or below the last seen one enqueued nothing."""

    sequence: int
    duplicate: bool


@dataclass
class QueueInfo:
    """A queue's counters and options (see ``QueueInfo`` in participant.proto)."""

    name: str
    version: int
    ready: int
    leased: int
    pending_in_txn: int
    max_deliveries: int
    dead_letter_queue: str

    @staticmethod
    def from_proto(q: ppb.QueueInfo) -> "QueueInfo":
        """A ``QueueInfo`` from the protobuf one."""
        return QueueInfo(q.name, q.version, q.ready, q.leased, q.pending_in_txn,
                         q.max_deliveries, q.dead_letter_queue)


@dataclass(frozen=True)
class TLS:
    """TLS for every channel, as the security issue defines it (``--tls_ca``,
    ``--tls_cert``, ``--tls_key`` on the servers).

    ``ca``: PEM file (or bytes) of the CA that signed the servers'
    certificates; None uses the system's roots. ``cert`` and ``key``: the
    client's certificate and key, for servers that require mTLS.
    ``server_name`` overrides the name checked in the servers' certificates.
    """

    ca: Union[str, bytes, None] = None
    cert: Union[str, bytes, None] = None
    key: Union[str, bytes, None] = None
    server_name: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials."""
        if (self.cert is None) != (self.key is None):
            raise errors.InvalidArgument("TLS needs both cert and key, or neither")
        return grpc.ssl_channel_credentials(root_certificates=_pem(self.ca),
                                            private_key=_pem(self.key),
                                            certificate_chain=_pem(self.cert))


def _pem(v: Union[str, bytes, None]) -> Optional[bytes]:
    if v is None or isinstance(v, bytes):
        return v
    return Path(v).read_bytes()


class _Connection:
    """What a blocking and an asyncio client share: addresses, credentials,
    channels (from ``_grpc``: ``grpc`` or ``grpc.aio``) and stubs."""

    _grpc: Any = grpc

    def __init__(self, coordinator: Optional[str] = None,
                 participants: Optional[Mapping[str, str]] = None, *,
                 tls: Union[None, bool, TLS] = None, token: Optional[str] = None,
                 call_timeout: float = 10.0, retry_for: float = 30.0) -> None:
        self.coordinator = coordinator
        self.participants: Dict[str, str] = dict(participants or {})
        self.call_timeout = call_timeout
        self.retry_for = retry_for
        self._tls: Optional[TLS] = TLS() if tls is True else (tls or None)
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._lock = threading.Lock()
        self._channels: Dict[str, Any] = {}
        self._leaders: Dict[str, str] = {}  # a group's participant id ("": coordinator) -> member

    @property
    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        """The metadata sent with every call (the bearer token, if any)."""
        return self._metadata

    def _coordinator(self) -> str:
        if not self.coordinator:
            raise errors.InvalidArgument("this Client has no coordinator address")
        return self.coordinator

    def _address(self, participant: str) -> str:
        try:
            return self.participants[participant]
        except KeyError:
            raise errors.InvalidArgument(
                f'participant "{participant}" is not one of this Client\'s '
                f"({', '.join(sorted(self.participants)) or 'none given'})") from None

    def _channel(self, address: str) -> Any:
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = _open_channel(self._grpc, address, self._tls)
                self._channels[address] = ch
            return ch

    def _queue(self, participant: str) -> pgrpc.QueueStub:
        return self._stub(participant, pgrpc.QueueStub)

    def _txn(self, participant: str) -> pgrpc.ParticipantTxnStub:
        return self._stub(participant, pgrpc.ParticipantTxnStub)

    def _stub(self, participant: str, kind: Any) -> Any:
        address = self._address(participant)
        if "|" not in address:
            return kind(self._channel(address))
        return _GroupStub(self, participant, address.split("|"), kind)

    def _member(self, participant: str, members: List[str]) -> str:
        """The member of a group to call now: the last that served, else the first."""
        with self._lock:
            return self._leaders.get(participant, members[0])

    def _moved(self, participant: str, members: List[str], address: str) -> None:
        """A call to ``address`` failed UNAVAILABLE (a follower, or down): the
        next call goes to the next member, unless another call moved on
        already."""
        with self._lock:
            if self._leaders.get(participant, members[0]) == address:
                self._leaders[participant] = members[(members.index(address) + 1) % len(members)]

    def _coordinator_stub(self) -> Any:
        address = self._coordinator()
        if "|" not in address:
            return cgrpc.CoordinatorStub(self._channel(address))
        # A coordinator group: its leader is found as a participant group's is.
        return _GroupStub(self, "", address.split("|"), cgrpc.CoordinatorStub)

    def _txn_call_timeout(self, timeout: Optional[float]) -> float:
        # The coordinator answers by the votes' deadline; leave room past it.
        return max(self.call_timeout, (timeout or 0) + 5.0)


class _GroupStub:
    """A stub for a participant or coordinator that is a group of replicas ("a|b|c"): each
    call goes to the member that last served; one refused UNAVAILABLE (a
    follower, which names the leader, or a member that is down) moves the
    next call on, so the caller's retry finds the leader within a few
    tries. A stream opens at the member of the moment; its reader calls
    ``failed`` when it ends UNAVAILABLE."""

    def __init__(self, conn: _Connection, participant: str, members: List[str],
                 kind: Any) -> None:
        self._conn, self._participant, self._members, self._kind = (
            conn, participant, members, kind)
        self._streamed = ""

    def failed(self) -> None:
        if self._streamed:
            self._conn._moved(self._participant, self._members, self._streamed)

    def _method(self, name: str) -> Tuple[str, Any]:
        address = self._conn._member(self._participant, self._members)
        return address, getattr(self._kind(self._conn._channel(address)), name)

    def __getattr__(self, name: str) -> Any:
        if name == "Subscribe":
            self._streamed, method = self._method(name)
            return method
        conn, participant, members = self._conn, self._participant, self._members
        if conn._grpc is grpc:
            def call(request: Any, **kwargs: Any) -> Any:
                address, method = self._method(name)
                try:
                    return method(request, **kwargs)
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        conn._moved(participant, members, address)
                    raise
            return call

        async def acall(request: Any, **kwargs: Any) -> Any:
            address, method = self._method(name)
            try:
                return await method(request, **kwargs)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    conn._moved(participant, members, address)
                raise
        return acall


class Client(_Connection):
    """A connection to an atomq cluster: one coordinator and its participants.

    ``coordinator``: host:port of ``atomq-coordinator`` (for ``execute``,
    ``move`` and ``transaction``; a group of replicas as ``a|b|c``, whose
    leader is found the same way). ``participants``: participant id ->
    host:port (a group of replicas: its members' host:port joined by ``|``,
    as the coordinator's ``--participants`` names it; calls go to its
    leader), the same ids the coordinator was started with (for
    consumers, ``send``, staging and queue administration). ``tls``: None
    for plaintext, True for TLS with the system's roots, or a ``TLS``.
    ``token``: a bearer token sent as ``authorization: Bearer <token>`` on
    every call. ``call_timeout``: seconds one call may take. ``retry_for``:
    how long calls that are safe to repeat are retried while a server is
    unavailable (a transaction keeps its id, so a retry returns the first
    outcome). Thread-safe; close it (or use ``with``) when done.
    """

    @staticmethod
    def from_env() -> "Client":
        """A client for ``ATOMQ_COORDINATOR`` and ``ATOMQ_PARTICIPANTS``
        (``p1=host:port,p2=...``); without them, the cluster of
        ``deploy/local/up.sh`` (ports from ``ATOMQ_BASE_PORT``, 7100). TLS
        from ``ATOMQ_TLS_CA``, ``ATOMQ_TLS_CERT`` and ``ATOMQ_TLS_KEY`` (as
        atomqctl takes them; up.sh prints them), else plaintext."""
        base = int(os.environ.get("ATOMQ_BASE_PORT", "7100"))
        coordinator = os.environ.get("ATOMQ_COORDINATOR", f"127.0.0.1:{base}")
        spec = os.environ.get("ATOMQ_PARTICIPANTS",
                              ",".join(f"p{i}=127.0.0.1:{base + i}" for i in (1, 2, 3)))
        ca, cert, key = (os.environ.get(f"ATOMQ_TLS_{k}") or None for k in ("CA", "CERT", "KEY"))
        tls = TLS(ca=ca, cert=cert, key=key) if ca or cert else None
        return Client(coordinator, parse_participants(spec), tls=tls,
                      token=os.environ.get("ATOMQ_TOKEN") or None)

    # -- transactions ---------------------------------------------------------

    def execute(self, enqueue: Iterable[EnqueueSpec] = (), ack: Iterable[Delivery] = (), *,
                protocol: Optional[str] = None, txn_id: Optional[str] = None,
                timeout: Optional[float] = None, reply_at_decision: bool = False) -> Result:
        """Runs one atomic transaction: every enqueue and ack, or none.

        ``enqueue``: ``(participant, queue, payload[, headers])`` tuples or
        ``Message``s. ``ack``: deliveries to delete in the same transaction.
        ``protocol``: "2pc" or "3pc" (None: the coordinator's default).
        ``txn_id``: None mints one here; a retry with the same id returns
        the first outcome. ``timeout``: seconds the votes may take.
        Returns a ``Result`` with the enqueues' sequences. Raises
        ``Aborted`` (with the reason), ``InvalidArgument``,
        ``AlreadyExists`` (the id was used with other ops), ``Unavailable``
        (still unreachable after ``retry_for``: the outcome is unknown,
        retry with the same id).
        """
        call = _ExecuteCall(enqueue, ack, protocol, txn_id, timeout, reply_at_decision)
        response = self._call("Execute", self._coordinator_stub().Execute, call.request,
                              retry=True, timeout=self._txn_call_timeout(timeout))
        return call.result(response)

    def move(self, delivery: Delivery, enqueue: Iterable[EnqueueSpec], *,
             protocol: Optional[str] = None, timeout: Optional[float] = None) -> Result:
        """Consume-transform-produce exactly once: acks ``delivery`` and
        enqueues ``enqueue`` in one transaction whose id is
        ``delivery.move_id``.

        Only one transaction can ever commit the ack of a message, so
        however often this is retried, crashed or redelivered, the message
        moves once. Raises ``Aborted`` when the lease was stale or the move
        committed under another lease already (skip the delivery: it comes
        again if it was not moved), and the errors of ``execute``.
        """
        return self.execute(enqueue, [delivery], protocol=protocol, txn_id=delivery.move_id,
                            timeout=timeout)

    def transaction(self, *, protocol: Optional[str] = None, txn_id: Optional[str] = None,
                    timeout: float = 30.0) -> "Transaction":
        """An interactive transaction, for ops not known up front::

            with client.transaction() as txn:
                txn.ack(delivery)
                txn.enqueue("p2", "audit", b"done")
            print(txn.result.sequences)

        It begins on entry, commits on a normal exit (raising ``Aborted``
        if it aborts) and rolls back when the block raises. ``timeout``:
        seconds it may stay open (staged work is dropped after that).
        """
        return Transaction(self, protocol, txn_id, timeout)

    # -- queues ---------------------------------------------------------------

    def send(self, participant: str, queue: str, payload: Payload, *,
             headers: Optional[Mapping[str, str]] = None, producer_id: Optional[str] = None,
             producer_sequence: Optional[int] = None) -> SendResult:
        """Enqueues one message outside any transaction (durable on return).

        With ``producer_id`` and ``producer_sequence`` it is deduplicated:
        per (queue, producer) the highest sequence is remembered, a send at
        or below it enqueues nothing and answers ``duplicate``; such a send
        is also retried while the participant is unavailable. Sequences
        must rise with each new message (gaps are fine).
        """
        request = _send_request(queue, payload, headers, producer_id, producer_sequence)
        r = self._call("Send", self._queue(participant).Send, request,
                       retry=producer_id is not None)
        return SendResult(r.sequence, r.duplicate)

    def receive(self, participant: str, queue: str, *, max_messages: int = 1,
                wait: float = 0.0, lease: Optional[float] = None,
                auto_ack: bool = False) -> List[Delivery]:
        """Leases up to ``max_messages`` ready messages (possibly none).

        ``wait``: seconds to long-poll when none is ready. ``lease``:
        seconds before an unacked message is delivered again (None: the
        participant's default). ``auto_ack``: the messages are deleted before
        the reply (at most once).
        """
        request = _receive_request(queue, max_messages, wait, lease, auto_ack)
        r = self._call("Receive", self._queue(participant).Receive, request, retry=not auto_ack,
                       timeout=self.call_timeout + wait)
        settler = _UnarySettler(self, participant)
        return [Delivery.from_proto(participant, d, settler) for d in r.deliveries]

    def peek(self, participant: str, queue: str, *, max_messages: int = 1) -> List[Delivery]:
        """Looks at up to ``max_messages`` ready messages without receiving them.

        Nothing changes: no lease, no delivery counted, they stay ready (the
        deliveries carry no lease token and cannot be acked or nacked).
        """
        request = ppb.ReceiveRequest(queue=queue, max_messages=max_messages, peek=True)
        r = self._call("Receive", self._queue(participant).Receive, request, retry=True)
        return [Delivery.from_proto(participant, d, None) for d in r.deliveries]

    def consumer(self, participant: str, queue: str, *, prefetch: int = 10,
                 lease: Optional[float] = None, auto_ack: bool = False, stream: bool = True,
                 inactivity_timeout: Optional[float] = None) -> "Consumer":
        """A consumer of ``queue`` on ``participant``; iterate it for deliveries::

            for delivery in client.consumer("p1", "tasks", prefetch=1):
                work(delivery.payload)
                delivery.ack()

        ``prefetch``: deliveries outstanding at most (like ``basic_qos``).
        ``lease``: seconds a delivery may stay unacked before it is
        delivered again. ``auto_ack``: deleted on delivery. ``stream``: a
        ``Subscribe`` stream (True) or long-polled ``Receive`` calls.
        ``inactivity_timeout``: the iteration ends after that many seconds
        without a delivery (None: never). It reconnects by itself after a
        participant restart (deliveries leased before it come again).
        """
        from atomq.consumer import Consumer
        return Consumer(self, participant, queue, prefetch=prefetch, lease=lease,
                        auto_ack=auto_ack, stream=stream, inactivity_timeout=inactivity_timeout)

    def create_queue(self, participant: str, name: str, *, max_deliveries: int = 0,
                     dead_letter_queue: str = "", exist_ok: bool = False) -> QueueInfo:
        """Creates a durable queue (``exist_ok``: an existing one is fine).

        ``max_deliveries`` (with ``dead_letter_queue``, an existing queue on
        the same participant): deliveries after which a message is
        dead-lettered instead of delivered again.
        """
        request = ppb.CreateQueueRequest(name=name, max_deliveries=max_deliveries,
                                         dead_letter_queue=dead_letter_queue)
        try:
            r = self._call("CreateQueue", self._queue(participant).CreateQueue, request, retry=True)
            return QueueInfo.from_proto(r.queue)
        except errors.AlreadyExists:
            if not exist_ok:
                raise
            return self.queue_info(participant, name)

    def delete_queue(self, participant: str, name: str) -> None:
        """Deletes a queue and its messages (``NotFound`` when missing)."""
        self._call("DeleteQueue", self._queue(participant).DeleteQueue,
                   ppb.DeleteQueueRequest(name=name), retry=False)

    def purge_queue(self, participant: str, name: str) -> int:
        """Removes a queue's ready messages (not those leased or in a
        transaction), durably; returns how many (``NotFound`` when missing)."""
        r = self._call("PurgeQueue", self._queue(participant).PurgeQueue,
                       ppb.PurgeQueueRequest(name=name), retry=False)
        return r.purged

    def list_queues(self, participant: str) -> List[QueueInfo]:
        """Every queue of a participant."""
        r = self._call("ListQueues", self._queue(participant).ListQueues,
                       ppb.ListQueuesRequest(), retry=True)
        return [QueueInfo.from_proto(q) for q in r.queues]

    def queue_info(self, participant: str, name: str) -> QueueInfo:
        """One queue's counters (``NotFound`` when missing)."""
        for q in self.list_queues(participant):
            if q.name == name:
                return q
        raise errors.NotFound(f'queue "{name}" does not exist on {participant}')

    # -- plumbing -------------------------------------------------------------

    def close(self) -> None:
        """Closes every channel."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for c in channels:
            c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, method: Callable[..., T], request: Any, *, retry: bool,
              timeout: Optional[float] = None) -> T:
        """Calls ``method``; with ``retry``, UNAVAILABLE and DEADLINE_EXCEEDED
        are retried with the same request (backoff 50 ms to 1 s) for
        ``retry_for`` seconds. Raises the typed error."""
        backoff = Backoff(self.retry_for if retry else 0.0)
        while True:
            try:
                return method(request, timeout=timeout or self.call_timeout,
                              metadata=self._metadata)
            except grpc.RpcError as e:
                delay = backoff.after(errors.from_rpc_error(e, what))
            time.sleep(delay)


class Backoff:
    """When to retry a call that is safe to repeat: after UNAVAILABLE or
    DEADLINE_EXCEEDED, 50 ms doubling to 1 s, for ``retry_for`` seconds."""

    def __init__(self, retry_for: float) -> None:
        self._give_up = time.monotonic() + retry_for
        self._delay = 0.05

    def after(self, err: errors.AtomqError) -> float:
        """The delay before the next try; raises ``err`` when there is none."""
        delay = self._delay
        if not isinstance(err, errors.Unavailable) or time.monotonic() + delay > self._give_up:
            raise err from None
        self._delay = min(delay * 2, 1.0)
        return delay


def _open_channel(module: Any, address: str, tls: Optional[TLS]) -> Any:
    """A channel from ``grpc`` or ``grpc.aio`` (``module``), TLS or not."""
    # A restarted server is found again within a second, not after gRPC's
    # default backoff of up to two minutes. (The minimum backoff is also each
    # connection attempt's deadline: it keeps its default of 20 s.)
    options = [("grpc.initial_reconnect_backoff_ms", 100),
               ("grpc.max_reconnect_backoff_ms", 1000)]
    if tls is None:
        return module.insecure_channel(address, options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return module.secure_channel(address, tls.credentials(), options)


class _ExecuteCall:
    """An Execute request built from the client's arguments, and its answer."""

    def __init__(self, enqueue: Iterable[EnqueueSpec], ack: Iterable[Delivery],
                 protocol: Optional[str], txn_id: Optional[str], timeout: Optional[float],
                 reply_at_decision: bool) -> None:
        self.messages = [Message.of(e) for e in enqueue]
        self.acks = list(ack)
        self.request = cpb.ExecuteRequest(
            txn_id=txn_id or new_txn_id(), protocol=_protocol(protocol),
            ops=[m.op() for m in self.messages] + [d.op() for d in self.acks],
            timeout_ms=int((timeout or 0) * 1000), reply_at_decision=reply_at_decision)

    def result(self, response: cpb.ExecuteResponse) -> Result:
        """The ``Result``, or ``Aborted``."""
        if response.outcome != tpb.COMMITTED:
            raise errors.Aborted(response.reason, response.txn_id)
        for d in self.acks:
            _settled_by_transaction(d)
        return Result(response.txn_id, "COMMITTED",
                      [r.sequence for r in response.results[:len(self.messages)]])


def _send_request(queue: str, payload: Payload, headers: Optional[Mapping[str, str]],
                  producer_id: Optional[str], producer_sequence: Optional[int]) -> ppb.SendRequest:
    if (producer_id is None) != (producer_sequence is None):
        raise errors.InvalidArgument("give producer_id and producer_sequence together")
    return ppb.SendRequest(queue=queue, payload=_bytes(payload), headers=dict(headers or {}),
                           producer_id=producer_id or "", producer_sequence=producer_sequence or 0)


def _receive_request(queue: str, max_messages: int, wait: float, lease: Optional[float],
                     auto_ack: bool) -> ppb.ReceiveRequest:
    return ppb.ReceiveRequest(queue=queue, max_messages=max_messages,
                              lease_ms=int((lease or 0) * 1000), wait_ms=int(wait * 1000),
                              auto_ack=auto_ack, consumer="python")


def parse_participants(spec: str) -> Dict[str, str]:
    """``p1=host:port,p2=host:port`` -> a dict."""
    out: Dict[str, str] = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        pid, sep, addr = part.partition("=")
        if not sep or not pid or not addr:
            raise errors.InvalidArgument(f"participants are id=host:port, not {part!r}")
        out[pid] = addr
    return out


def _settled_by_transaction(d: Delivery) -> None:
    """Tells the delivery's consumer that a transaction deleted it."""
    hook = getattr(d._settler, "settled_by_transaction", None)
    if hook is not None:
        hook(d)


class _UnarySettler:
    """Acks and nacks with the participant's unary Ack and Nack calls."""

    def __init__(self, client: Client, participant: str) -> None:
        self._client = client
        self._participant = participant

    def settle_ack(self, d: Delivery) -> None:
        self._client._call("Ack", self._client._queue(self._participant).Ack, ack_request(d),
                           retry=False)

    def settle_nack(self, d: Delivery, dead_letter: bool, reason: str) -> bool:
        r = self._client._call("Nack", self._client._queue(self._participant).Nack,
                               nack_request(d, dead_letter, reason), retry=False)
        return r.dead_lettered


def ack_request(d: Delivery) -> ppb.AckRequest:
    """The participant's AckRequest for a delivery."""
    return ppb.AckRequest(queue=d.queue, sequence=d.sequence, lease_token=d.lease_token)


def nack_request(d: Delivery, dead_letter: bool, reason: str) -> ppb.NackRequest:
    """The participant's NackRequest for a delivery."""
    return ppb.NackRequest(queue=d.queue, sequence=d.sequence, lease_token=d.lease_token,
                           dead_letter=dead_letter, reason=reason)


class Transaction:
    """An interactive transaction (``Client.transaction``): Begin at the
    coordinator, each ``enqueue``/``ack`` staged at its participant at once
    (validated there: a missing queue or stale lease raises now), then
    ``commit`` or ``rollback``. Staged work is in memory only: a participant
    or coordinator restart makes the commit abort, never commit part of it.
    """

    def __init__(self, client: Client, protocol: Optional[str], txn_id: Optional[str],
                 timeout: float) -> None:
        self._client = client
        self._protocol = _protocol(protocol)
        self._timeout = timeout
        self.txn_id: str = txn_id or new_txn_id()
        self.expires_unix_ms = 0
        self.result: Optional[Result] = None
        self._begun = False
        self._done = False
        self._staged: Dict[str, int] = {}  # participant -> ops staged
        self._batches: Dict[str, int] = {}  # participant -> Stage calls
        self._enqueues: List[Tuple[str, int]] = []  # (participant, index of its op)
        self._acks: List[Delivery] = []

    def begin(self) -> "Transaction":
        """Opens the transaction at the coordinator (``with`` does this)."""
        if self._begun:
            return self
        r = self._client._call(
            "Begin", self._client._coordinator_stub().Begin,
            cpb.BeginTxnRequest(txn_id=self.txn_id, protocol=self._protocol,
                                timeout_ms=int(self._timeout * 1000)), retry=True)
        self.expires_unix_ms = r.expires_unix_ms
        self._begun = True
        return self

    def enqueue(self, participant: str, queue: str, payload: Payload,
                headers: Optional[Mapping[str, str]] = None) -> None:
        """Stages one message; visible only once the transaction commits."""
        m = Message(participant, queue, _bytes(payload), dict(headers or {}))
        self._stage(participant, m.op())
        self._enqueues.append((participant, self._staged[participant] - 1))

    def ack(self, delivery: Delivery) -> None:
        """Stages the ack of a delivery; the message is pinned (not
        redelivered, not acked by anyone else) until the transaction ends."""
        self._stage(delivery.participant, delivery.op())
        self._acks.append(delivery)

    def commit(self) -> Result:
        """Commits what was staged; raises ``Aborted`` (with the reason) if it
        aborts. After ``Unavailable`` the outcome is unknown: call ``commit``
        again (a repeated Commit returns the first outcome)."""
        self._check_open()
        if not self._staged:
            self._rollback_quietly()
            raise errors.InvalidArgument(f"transaction {self.txn_id} staged nothing")
        request = cpb.CommitTxnRequest(
            txn_id=self.txn_id,
            participants=[cpb.TxnParticipant(participant=p, staged_ops=n)
                          for p, n in self._staged.items()])
        r = self._client._call("Commit", self._client._coordinator_stub().Commit, request,
                               retry=True, timeout=self._client._txn_call_timeout(self._timeout))
        self._done = True
        if r.outcome != tpb.COMMITTED:
            raise errors.Aborted(r.reason, self.txn_id)
        staged = {s.participant: list(s.sequences) for s in r.staged}

        def sequence(participant: str, i: int) -> int:
            got = staged.get(participant, [])
            return got[i] if i < len(got) else 0  # not yet applied there

        for d in self._acks:
            _settled_by_transaction(d)
        self.result = Result(self.txn_id, "COMMITTED",
                             [sequence(p, i) for p, i in self._enqueues], staged)
        return self.result

    def rollback(self) -> None:
        """Aborts the transaction; the participants drop what was staged."""
        self._check_open()
        self._send_rollback(retry=True)

    def __enter__(self) -> "Transaction":
        return self.begin()

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self._rollback_quietly()

    def _rollback_quietly(self) -> None:
        # The block's own exception matters more; an unreachable coordinator
        # aborts the transaction at its expiry anyway.
        try:
            self._send_rollback(retry=False)
        except errors.AtomqError:
            pass

    def _send_rollback(self, retry: bool) -> None:
        self._done = True
        request = cpb.RollbackTxnRequest(
            txn_id=self.txn_id,
            participants=[cpb.TxnParticipant(participant=p) for p in self._staged])
        self._client._call("Rollback", self._client._coordinator_stub().Rollback, request,
                           retry=retry)

    def _check_open(self) -> None:
        if not self._begun:
            self.begin()
        if self._done:
            raise errors.FailedPrecondition(f"transaction {self.txn_id} has ended")

    def _stage(self, participant: str, op: tpb.Op) -> None:
        self._check_open()
        batch = self._batches.get(participant, 0) + 1
        request = ppb.StageRequest(txn_id=self.txn_id, ops=[op],
                                   expires_unix_ms=self.expires_unix_ms, batch=batch)
        r = self._client._call("Stage", self._client._txn(participant).Stage, request, retry=True)
        self._batches[participant] = batch
        self._staged[participant] = r.ops_staged
