"""Small helpers for tests that talk over real sockets."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable

_HANDED_OUT: set[int] = set()
# pytest-xdist runs test files in several processes: each takes its ports from its own block, below
# the kernel's ephemeral range (32768-60999), so neither another test process nor an outgoing
# connection is handed the same port. (A split by port parity failed: bind(0) hands out odd ports only.)
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % _WORKERS
_BLOCK = 12000 // _WORKERS
_FIRST = 20000 + _WORKER * _BLOCK
_next = _FIRST + random.randrange(_BLOCK)  # another pytest run on the machine starts elsewhere


def free_port() -> int:
    """A port nothing is bound to now, never one this process was given before, and never one
    another test process of this run may be given.

    The kernel may hand the same free port to two binds in a row once the first socket is closed:
    an Orthanc once got it for both its DICOM and its HTTP server, and failed to start. Across
    processes the same can happen between one's bind(0) and its server's own bind."""
    global _next
    for _ in range(_BLOCK):
        port, _next = _next, _FIRST + (_next - _FIRST + 1) % _BLOCK
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))  # every address: a server on any one of them holds the port
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {_FIRST}-{_FIRST + _BLOCK - 1}")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def wait_until(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.2) -> object:
    """Poll until predicate() is truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
