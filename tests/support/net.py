"""Small helpers for tests that talk over real sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

_HANDED_OUT: set[int] = set()
# pytest-xdist runs test files in several processes: each takes only the ports of its own residue.
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_RESIDUE = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % _WORKERS


def free_port() -> int:
    """A port nothing listens on now, never one this process was given before, and never one
    another test process of this run may be given.

    The kernel may hand the same free port to two binds in a row once the first socket is closed:
    an Orthanc once got it for both its DICOM and its HTTP server, and failed to start. Across
    processes the same can happen between one's bind(0) and its server's own bind."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port % _WORKERS == _RESIDUE and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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
