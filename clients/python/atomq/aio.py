"""asyncio variants of the client's one-shot calls (``grpc.aio``).

    async with atomq.aio.AsyncClient(coordinator, participants) as client:
        r = await client.execute(enqueue=[("p1", "orders", b"o"), ("p2", "audit", b"a")])
        for d in await client.receive("p1", "orders", max_messages=10, wait=5):
            await client.move(d, enqueue=[("p3", "billing", d.payload)])

The same arguments, results, errors and retries as ``atomq.Client``;
deliveries from ``receive`` are settled with ``await d.ack()`` /
``await d.nack()``. Consumers and interactive transactions are in the
blocking ``Client`` only.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable, List, Mapping, Optional

import grpc
import grpc.aio

from atomq import errors
from atomq.client import (Backoff, Delivery, EnqueueSpec, Payload, Result, SendResult,
                          _Connection, _ExecuteCall, _receive_request, _send_request,
                          ack_request, nack_request)
from atomq.v1 import participant_pb2 as ppb


class AsyncClient(_Connection):
    """``atomq.Client`` for asyncio: ``execute``, ``move``, ``send``,
    ``receive``, ``peek`` and ``purge_queue`` as coroutines, with the same constructor (see ``Client``).
    Create and use it inside one event loop."""

    _grpc = grpc.aio

    async def execute(self, enqueue: Iterable[EnqueueSpec] = (), ack: Iterable[Delivery] = (), *,
                      protocol: Optional[str] = None, txn_id: Optional[str] = None,
                      timeout: Optional[float] = None, reply_at_decision: bool = False) -> Result:
        """One atomic transaction, as ``Client.execute``."""
        call = _ExecuteCall(enqueue, ack, protocol, txn_id, timeout, reply_at_decision)
        response = await self._call("Execute", self._coordinator_stub().Execute, call.request,
                                    retry=True, timeout=self._txn_call_timeout(timeout))
        return call.result(response)

    async def move(self, delivery: Delivery, enqueue: Iterable[EnqueueSpec], *,
                   protocol: Optional[str] = None, timeout: Optional[float] = None) -> Result:
        """Acks ``delivery`` and enqueues ``enqueue`` exactly once, as ``Client.move``."""
        return await self.execute(enqueue, [delivery], protocol=protocol,
                                  txn_id=delivery.move_id, timeout=timeout)

    async def send(self, participant: str, queue: str, payload: Payload, *,
                   headers: Optional[Mapping[str, str]] = None, producer_id: Optional[str] = None,
                   producer_sequence: Optional[int] = None) -> SendResult:
        """One message outside a transaction, as ``Client.send``."""
        request = _send_request(queue, payload, headers, producer_id, producer_sequence)
        r = await self._call("Send", self._queue(participant).Send, request,
                             retry=producer_id is not None)
        return SendResult(r.sequence, r.duplicate)

    async def receive(self, participant: str, queue: str, *, max_messages: int = 1,
                      wait: float = 0.0, lease: Optional[float] = None,
                      auto_ack: bool = False) -> List[Delivery]:
        """Leases up to ``max_messages`` messages, as ``Client.receive``."""
        request = _receive_request(queue, max_messages, wait, lease, auto_ack)
        r = await self._call("Receive", self._queue(participant).Receive, request,
                             retry=not auto_ack, timeout=self.call_timeout + wait)
        settler = _AsyncSettler(self, participant)
        return [Delivery.from_proto(participant, d, settler) for d in r.deliveries]

    async def peek(self, participant: str, queue: str, *,
                   max_messages: int = 1) -> List[Delivery]:
        """Looks at ready messages without receiving them, as ``Client.peek``."""
        request = ppb.ReceiveRequest(queue=queue, max_messages=max_messages, peek=True)
        r = await self._call("Receive", self._queue(participant).Receive, request, retry=True)
        return [Delivery.from_proto(participant, d, None) for d in r.deliveries]

    async def purge_queue(self, participant: str, name: str) -> int:
        """Removes a queue's ready messages, as ``Client.purge_queue``."""
        r = await self._call("PurgeQueue", self._queue(participant).PurgeQueue,
                             ppb.PurgeQueueRequest(name=name), retry=False)
        return r.purged

    async def close(self) -> None:
        """Closes every channel."""
        channels, self._channels = list(self._channels.values()), {}
        for c in channels:
            await c.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, what: str, method: Callable[..., Any], request: Any, *, retry: bool,
                    timeout: Optional[float] = None) -> Any:
        backoff = Backoff(self.retry_for if retry else 0.0)
        while True:
            try:
                return await method(request, timeout=timeout or self.call_timeout,
                                    metadata=self._metadata)
            except grpc.RpcError as e:
                delay = backoff.after(errors.from_rpc_error(e, what))
            await asyncio.sleep(delay)


class _AsyncSettler:
    """Acks and nacks of ``AsyncClient.receive``'s deliveries (awaitable)."""

    def __init__(self, client: AsyncClient, participant: str) -> None:
        self._client = client
        self._participant = participant

    async def settle_ack(self, d: Delivery) -> None:
        await self._client._call("Ack", self._client._queue(self._participant).Ack,
                                 ack_request(d), retry=False)

    async def settle_nack(self, d: Delivery, dead_letter: bool, reason: str) -> bool:
        r = await self._client._call("Nack", self._client._queue(self._participant).Nack,
                                     nack_request(d, dead_letter, reason), retry=False)
        return r.dead_lettered
