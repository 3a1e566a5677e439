"""atomq: atomic enqueues and acks across queue nodes, from Python.

    import atomq
    client = atomq.Client(coordinator="127.0.0.1:7100",
                          participants={"p1": "127.0.0.1:7101", "p2": "127.0.0.1:7102"})
    client.execute(enqueue=[("p1", "orders", b"order-42"), ("p2", "audit", b"created 42")])

See ``Client`` for every call, ``atomq.aio.AsyncClient`` for asyncio. The gRPC stubs are generated from the
project's ``proto/`` when the package is installed (``pip install
./clients/python``) or by the CMake build (``build/python``), never kept in
the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path


def _find_stubs() -> None:
    """Makes ``atomq.v1`` importable: installed beside this file, or the build tree's."""
    here = Path(__file__).resolve().parent
    if (here / "v1" / "coordinator_pb2.py").exists():
        return
    candidates = []
    if os.environ.get("ATOMQ_PY_STUBS"):
        candidates.append(Path(os.environ["ATOMQ_PY_STUBS"]))
    # Run from a checkout: clients/python/atomq -> <root>/build/python.
    candidates.append(here.parents[2] / "build" / "python")
    for c in candidates:
        if (c / "atomq" / "v1" / "coordinator_pb2.py").exists():
            __path__.append(str(c / "atomq"))  # type: ignore[name-defined]
            return
    raise ImportError(
        "atomq: the generated gRPC stubs (atomq.v1) were not found; build them with "
        "`cmake --build build --target atomq_python_stubs`, set ATOMQ_PY_STUBS to the "
        "directory holding atomq/v1, or `pip install --no-deps ./clients/python`")


_find_stubs()

from atomq.errors import (  # noqa: E402
    Aborted, AlreadyExists, AtomqError, DeadlineExceeded, FailedPrecondition, InvalidArgument,
    NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable)
from atomq.client import (  # noqa: E402
    TLS, Client, Delivery, Message, QueueInfo, Result, SendResult, Transaction)
from atomq.consumer import Consumer  # noqa: E402

__all__ = [
    "Aborted", "AlreadyExists", "AtomqError", "Client", "Consumer", "DeadlineExceeded",
    "Delivery", "FailedPrecondition", "InvalidArgument", "Message", "NotFound",
    "PermissionDenied", "QueueInfo", "ResourceExhausted", "Result", "SendResult", "TLS",
    "Transaction", "Unauthenticated", "Unavailable",
]
