"""Typed errors of the atomq client.

Each class says what the caller should do, as the server's status codes do:
``Unavailable`` retry the same call (the client already retried it for
``Client.retry_for`` seconds where that was safe), ``Aborted`` the
transaction did nothing (retry it as a new one), ``FailedPrecondition`` do
not retry until the state changes (a stale lease, a transaction decided the
other way), ``InvalidArgument`` fix the request.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class AtomqError(Exception):
    """Any error from an atomq call; ``code`` is the gRPC status code."""

    code: Optional[grpc.StatusCode] = None

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Aborted(AtomqError):
    """The transaction aborted: nothing of it was applied anywhere.

    ``reason`` is the coordinator's explanation, e.g. ``p2 voted NO: queue
    "audit" does not exist``; ``txn_id`` the transaction's id.
    """

    code = grpc.StatusCode.ABORTED

    def __init__(self, reason: str, txn_id: str = "") -> None:
        super().__init__(f"transaction {txn_id} aborted: {reason}")
        self.reason = reason
        self.txn_id = txn_id


class Unavailable(AtomqError):
    """A server could not be reached, or is shutting down or recovering.

    For a transaction the outcome is unknown: retry with the same id, which
    returns the first outcome.
    """

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(Unavailable):
    """The call's deadline passed before the answer came (outcome unknown)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InvalidArgument(AtomqError):
    """The request is malformed: a bad id, an unknown participant, sizes."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AtomqError):
    """The queue (or transaction) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AtomqError):
    """The id or name is in use, e.g. a transaction id reused with other ops."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(AtomqError):
    """The state does not allow it: a stale lease, an expired transaction."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(AtomqError):
    """A server limit was reached (transactions in flight, disk, waiters)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(AtomqError):
    """The server did not accept the credentials (token or certificate)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AtomqError):
    """The identity may not make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


_BY_CODE: Dict[grpc.StatusCode, Type[AtomqError]] = {
    cls.code: cls
    for cls in (Unavailable, DeadlineExceeded, InvalidArgument, NotFound, AlreadyExists,
                FailedPrecondition, ResourceExhausted, Unauthenticated, PermissionDenied)
}


def from_code(code: grpc.StatusCode, message: str) -> AtomqError:
    """The typed error for a gRPC status code (``AtomqError`` for the rest)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return AtomqError(f"{code.name}: {message}", code)
    return cls(message)


def from_rpc_error(err: grpc.RpcError, what: str) -> AtomqError:
    """The typed error for a failed call; ``what`` names the call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return from_code(code, f"{what}: {details}")


_NUMERIC = {c.value[0]: c for c in grpc.StatusCode}


def from_numeric(code: int, message: str) -> AtomqError:
    """The typed error for a google.rpc code number (as streams report them)."""
    return from_code(_NUMERIC.get(code, grpc.StatusCode.UNKNOWN), message)
