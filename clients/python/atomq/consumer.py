"""Consumers: a Subscribe stream with a credit window, or long-polled Receives."""

from __future__ import annotations

import queue as _queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

import grpc

from atomq import errors
from atomq.client import Delivery, _UnarySettler
from atomq.v1 import participant_pb2 as ppb

if TYPE_CHECKING:
    from atomq.client import Client

_CLOSE = object()


class Consumer:
    """Deliveries from one queue of one participant (``Client.consumer``).

    Iterate it, or call ``get``. Ack or nack each delivery (unless
    ``auto_ack``), or ack it inside a transaction (``Client.move``,
    ``Transaction.ack``). A delivery's lease ends with the stream that
    carried it: after a reconnect, deliveries not yet acked come again with
    new leases, so acking an old one raises ``FailedPrecondition``.
    """

    def __init__(self, client: "Client", participant: str, queue: str, *, prefetch: int,
                 lease: Optional[float], auto_ack: bool, stream: bool,
                 inactivity_timeout: Optional[float]) -> None:
        client._address(participant)  # fail now on an unknown participant
        self._client = client
        self.participant = participant
        self.queue = queue
        self._prefetch = max(1, prefetch)
        self._lease_ms = int((lease or 0) * 1000)
        self._auto_ack = auto_ack
        self._stream = stream
        self.inactivity_timeout = inactivity_timeout
        self._closed = threading.Event()
        self._buffer: "_queue.Queue[Tuple[int, object]]" = _queue.Queue()
        self._lock = threading.Lock()
        self._generation = 0  # of the current stream; deliveries of older ones are stale
        self._requests: Optional["_queue.Queue[object]"] = None
        self._call: Optional[grpc.RpcContext] = None
        self._pending: Dict[Tuple[int, bool], Future] = {}
        self._fatal: Optional[errors.AtomqError] = None
        self._unary = _UnarySettler(client, participant)
        self._reader: Optional[threading.Thread] = None
        if stream:
            self._reader = threading.Thread(target=self._read_streams, daemon=True,
                                            name=f"atomq-consumer-{participant}-{queue}")
            self._reader.start()

    def __iter__(self) -> Iterator[Delivery]:
        """Deliveries as they come; ends after ``inactivity_timeout`` seconds
        without one (never, when None) or once closed."""
        while not self._closed.is_set():
            d = self.get(timeout=self.inactivity_timeout)
            if d is None:
                if self.inactivity_timeout is not None or self._closed.is_set():
                    return
                continue
            yield d

    def get(self, timeout: Optional[float] = None) -> Optional[Delivery]:
        """The next delivery, or None after ``timeout`` seconds (None: wait
        until one comes or the consumer is closed). Raises ``NotFound`` when
        the queue does not exist."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._closed.is_set():
            left = None if end is None else max(0.0, end - time.monotonic())
            if self._fatal is not None:
                raise self._fatal
            if not self._stream and self._buffer.empty():
                self._poll(left)
            try:
                generation, item = self._buffer.get(timeout=0.5 if left is None else min(left, 0.5))
            except _queue.Empty:
                if end is not None and time.monotonic() >= end:
                    return None
                continue
            if item is _CLOSE:
                if self._fatal is not None:
                    raise self._fatal
                return None
            assert isinstance(item, Delivery)
            if self._stream and generation != self._generation:
                continue  # its stream ended: the participant gave it back to the queue
            if self._stream and self._auto_ack:
                self._grant_credit()
            return item
        return None

    def close(self) -> None:
        """Ends the stream (its unacked deliveries return to the queue at once)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._buffer.put((0, _CLOSE))
        with self._lock:
            call, requests = self._call, self._requests
        if requests is not None:
            requests.put(_CLOSE)
        if call is not None:
            call.cancel()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- settling -------------------------------------------------------------

    def settle_ack(self, d: Delivery) -> None:
        """Acks on the delivery's stream (or with a unary Ack when polling)."""
        if not self._stream:
            return self._unary.settle_ack(d)
        self._settle_on_stream(d, False, ppb.SubscribeRequest(
            ack=ppb.AckRequest(queue=d.queue, sequence=d.sequence, lease_token=d.lease_token)))

    def settle_nack(self, d: Delivery, dead_letter: bool, reason: str) -> bool:
        """Nacks on the delivery's stream (or with a unary Nack when polling)."""
        if not self._stream:
            return self._unary.settle_nack(d, dead_letter, reason)
        # The stream's SettleResult does not say whether it was dead-lettered:
        # a nack asking for it succeeds only by dead-lettering.
        self._settle_on_stream(d, True, ppb.SubscribeRequest(nack=ppb.NackRequest(
            queue=d.queue, sequence=d.sequence, lease_token=d.lease_token,
            dead_letter=dead_letter, reason=reason)))
        return dead_letter

    def settled_by_transaction(self, d: Delivery) -> None:
        """A committed transaction deleted ``d``: its slot of the window
        comes back only through credit, which this grants."""
        if self._stream and not self._auto_ack:
            self._grant_credit()

    def _grant_credit(self) -> None:
        # A stream that ended meanwhile opens again with a full window.
        try:
            self._send(ppb.SubscribeRequest(credit=1))
        except errors.Unavailable:
            pass

    def _settle_on_stream(self, d: Delivery, nack: bool, request: ppb.SubscribeRequest) -> None:
        fut: Future = Future()
        with self._lock:
            self._pending[(d.sequence, nack)] = fut
        self._send(request)
        try:
            code, message = fut.result(timeout=self._client.call_timeout)
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"{'Nack' if nack else 'Ack'} of {self.queue}/{d.sequence}: no answer") from None
        finally:
            with self._lock:
                self._pending.pop((d.sequence, nack), None)
        if code != 0:
            raise errors.from_numeric(code, f"{'Nack' if nack else 'Ack'} of "
                                            f"{self.queue}/{d.sequence}: {message}")

    # -- the stream -----------------------------------------------------------

    def _send(self, request: ppb.SubscribeRequest) -> None:
        with self._lock:
            requests = self._requests
        if requests is None:
            raise errors.Unavailable(f"the stream of {self.participant}:{self.queue} is down")
        requests.put(request)

    def _read_streams(self) -> None:
        """Keeps one Subscribe stream open, reopening it with backoff."""
        delay = 0.05
        while not self._closed.is_set():
            requests: "_queue.Queue[object]" = _queue.Queue()
            requests.put(ppb.SubscribeRequest(open=ppb.SubscribeOpen(
                queue=self.queue, prefetch=self._prefetch, lease_ms=self._lease_ms,
                auto_ack=self._auto_ack, consumer="python")))
            stub = self._client._queue(self.participant)
            call = stub.Subscribe(_drain(requests), metadata=self._client.metadata)
            with self._lock:
                self._generation += 1
                generation = self._generation
                self._requests, self._call = requests, call
            try:
                for response in call:
                    delay = 0.05
                    self._dispatch(generation, response)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and hasattr(stub, "failed"):
                    stub.failed()  # a group's follower, or a member that is down
                err = errors.from_rpc_error(e, f"Subscribe to {self.queue}")
                if isinstance(err, (errors.NotFound, errors.InvalidArgument,
                                    errors.Unauthenticated, errors.PermissionDenied)):
                    self._fatal = err
                    self._buffer.put((0, _CLOSE))
                    return
            with self._lock:
                self._requests, self._call = None, None
                pending, self._pending = list(self._pending.values()), {}
            requests.put(_CLOSE)
            for fut in pending:
                if not fut.done():
                    fut.set_result((grpc.StatusCode.UNAVAILABLE.value[0], "the stream ended"))
            self._closed.wait(delay)
            delay = min(delay * 2, 1.0)

    def _dispatch(self, generation: int, response: ppb.SubscribeResponse) -> None:
        if response.HasField("delivery"):
            self._buffer.put((generation, Delivery.from_proto(self.participant,
                                                              response.delivery, self)))
            return
        s = response.settled
        with self._lock:
            fut = self._pending.get((s.sequence, s.nack))
        if fut is not None and not fut.done():
            fut.set_result((s.code, s.message))

    # -- long-poll ------------------------------------------------------------

    def _poll(self, left: Optional[float]) -> None:
        wait = 5.0 if left is None else min(left, 5.0)
        try:
            got: List[Delivery] = self._client.receive(
                self.participant, self.queue, max_messages=self._prefetch, wait=wait,
                lease=self._lease_ms / 1000 or None, auto_ack=self._auto_ack)
        except errors.Unavailable:
            self._closed.wait(0.2)
            return
        for d in got:
            self._buffer.put((0, d))


def _drain(requests: "_queue.Queue[object]") -> Iterator[ppb.SubscribeRequest]:
    while True:
        item = requests.get()
        if item is _CLOSE:
            return
        assert isinstance(item, ppb.SubscribeRequest)
        yield item
