"""Loopback ports for the Python tests (the client's suites, the console's
browser test), as common/free_port.h gives the C++ ones."""

import random
import socket
from pathlib import Path

_RESERVED = []


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low if low > 11000 else 32768


def free_port() -> int:
    """A loopback port below the kernel's ephemeral range that no other
    caller, here or in the C++ tests, is given while this process lives:
    each is reserved by holding an abstract Unix socket named after it."""
    while True:
        port = random.randrange(10000, _ephemeral_low())
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0atomq-port-{port}")
        except OSError:
            lock.close()
            continue
        _RESERVED.append(lock)
        return port
