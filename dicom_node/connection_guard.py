"""Connection hygiene at the listener: peers that hog connections cannot starve the PACS.

pynetdicom bounds idle time (ARTIM, network timeout) but not three things a hostile or broken peer
can do, so this module adds them where pynetdicom has no hook:

- a PDU that trickles in a byte at a time, or declares 4 GB and goes silent, blocks pynetdicom's
  read for ever: ``DeadlineSocket`` gives each PDU ``pdu_timeout`` seconds (and the association
  request the ACSE timeout from connect), and refuses a declared length over what we accept;
- every open TCP connection counts against ``maximum_associations``, so 300 connections that never
  send an A-ASSOCIATE-RQ lock the PACS out: ``GuardedAE`` counts only associations past that point,
  and ``ConnectionGuard`` bounds the half-open ones (the oldest is closed when a new one arrives)
  and the connections per remote address;
- a TLS handshake runs in pynetdicom's accept loop, so one silent TLS peer stalls every other
  connection: ``GuardedServer`` does the handshake in the connection's own thread, with a timeout.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)

# pynetdicom state-machine states of an acceptor before its A-ASSOCIATE-RQ has been read (PS3.8 9.2).
_BEFORE_REQUEST = {"Sta1", "Sta2"}
_REPORT_EVERY = 10.0  # seconds: at most one log line / audit row per (what, peer) in this interval
_MIB = 1024 * 1024
_MAX_TRACKED = 4096  # (event, peer) pairs kept for rate-limited reporting

Notify = Callable[[str, str, int, str], None]  # (event, peer address, count, detail)


@dataclass(eq=False)
class _Connection:
    address: str
    sock: socket.socket
    opened: float = field(default_factory=time.monotonic)
    assoc: Association | None = None

    @property
    def is_open(self) -> bool:
        return self.sock.fileno() != -1

    @property
    def half_open(self) -> bool:
        return self.assoc is None or self.assoc.dul.state_machine.current_state in _BEFORE_REQUEST

    def close(self) -> None:
        """Shut the socket down: pynetdicom's reader sees end-of-stream and ends the association."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class ConnectionGuard:
    """Which TCP connections are open, from where, and whether they have asked for an association."""

    def __init__(
        self,
        *,
        max_half_open: int,
        max_per_address: int,
        pdu_timeout: float,
        request_timeout: float,
        max_pdu_bytes: int,
        notify: Notify | None = None,
    ) -> None:
        self.max_half_open = max_half_open
        self.max_per_address = max_per_address
        self.pdu_timeout = pdu_timeout
        self.request_timeout = request_timeout
        self.max_pdu_bytes = max_pdu_bytes
        self._notify = notify
        self._lock = threading.Lock()
        self._conns: list[_Connection] = []
        self._pending: dict[tuple[str, str], tuple[int, float, str]] = {}  # (event, peer) -> count, since, detail

    # bookkeeping ---------------------------------------------------------------------------
    def admit(self, sock: socket.socket, address: str) -> bool:
        """Called on accept: False closes the connection at once (too many from that address)."""
        evicted: list[_Connection] = []
        with self._lock:
            self._conns = [c for c in self._conns if c.is_open]
            if sum(1 for c in self._conns if c.address == address) >= self.max_per_address:
                refused = True
            else:
                refused = False
                half = sorted((c for c in self._conns if c.half_open), key=lambda c: c.opened)
                while len(half) >= self.max_half_open:
                    oldest = half.pop(0)
                    self._conns.remove(oldest)
                    evicted.append(oldest)
                self._conns.append(_Connection(address, sock))
        if refused:
            self.report(
                "connection_refused", address, f"more than {self.max_per_address} connections from one address"
            )
            return False
        for conn in evicted:
            conn.close()
            self.report(
                "connection_evicted",
                conn.address,
                f"no A-ASSOCIATE-RQ after {time.monotonic() - conn.opened:.0f}s while "
                f"{self.max_half_open} connections waited for one",
            )
        return True

    def wrap(self, raw: socket.socket, wrap: Callable[[socket.socket], socket.socket]) -> socket.socket:
        """Swap a connection's socket for its TLS wrapper (which detaches ``raw``) without it ever
        looking closed to ``admit``; ``wrap`` must not handshake (that may take long)."""
        with self._lock:
            wrapped = wrap(raw)
            for conn in self._conns:
                if conn.sock is raw:
                    conn.sock = wrapped
        return wrapped

    def attach(self, sock: socket.socket, assoc: Association) -> _Connection | None:
        with self._lock:
            for conn in self._conns:
                if conn.sock is sock:
                    conn.assoc = assoc
                    return conn
        return None

    def counts(self) -> tuple[int, int]:
        """(open connections, half-open ones)."""
        with self._lock:
            live = [c for c in self._conns if c.is_open]
            return len(live), sum(1 for c in live if c.half_open)

    # reporting (rate-limited: 300 hostile connections make one line, not 300) -------------
    def report(self, event: str, address: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            count, since, _ = self._pending.get((event, address), (0, 0.0, detail))
            count += 1
            due = now - since >= _REPORT_EVERY
            self._pending[(event, address)] = (0, now, detail) if due else (count, since, detail)
            if len(self._pending) > _MAX_TRACKED:  # many source addresses: forget the quiet ones
                for key in [k for k, v in self._pending.items() if v[0] == 0]:
                    del self._pending[key]
        if due:
            self._emit(event, address, count, detail)

    def flush(self) -> None:
        """Report what is still counted (at shutdown)."""
        with self._lock:
            pending = [(k, v) for k, v in self._pending.items() if v[0]]
            self._pending.clear()
        for (event, address), (count, _, detail) in pending:
            self._emit(event, address, count, detail)

    def _emit(self, event: str, address: str, count: int, detail: str) -> None:
        log.warning("%s: peer %s (%d time(s)): %s", event, address, count, detail)
        if self._notify is not None:
            try:
                self._notify(event, address, count, detail)
            except Exception:  # noqa: BLE001 - reporting must never break the accept loop
                log.exception("could not record %s", event)


class DeadlineSocket(AssociationSocket):
    """pynetdicom's socket, with a deadline per PDU and a cap on the length a peer may declare.

    pynetdicom reads the 6-byte PDU header, then blocks until the declared length has arrived; its
    ARTIM and network timers are only looked at between PDUs, so a trickle never trips them.
    Returning short makes pynetdicom close the connection (Evt17) as for a peer that hung up.
    """

    guard: ConnectionGuard
    request_deadline: float

    def recv(self, nr_bytes: int) -> bytearray:
        raw = self.socket
        assoc = self.assoc
        peer = str(assoc.requestor.address)
        if raw is None:
            return bytearray()
        if nr_bytes > self.guard.max_pdu_bytes:
            self.guard.report(
                "pdu_refused", peer, f"declared a {nr_bytes}-byte PDU, over {self.guard.max_pdu_bytes}"
            )
            return bytearray()
        deadline = time.monotonic() + self.guard.pdu_timeout
        if assoc.dul.state_machine.current_state in _BEFORE_REQUEST:
            deadline = min(deadline, self.request_deadline)
        previous = raw.gettimeout()
        out = bytearray()
        try:
            while len(out) < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                raw.settimeout(remaining)
                chunk = raw.recv(min(65536, nr_bytes - len(out)))
                if not chunk:
                    break
                out += chunk
        except TimeoutError:
            self.guard.report(
                "pdu_timeout", peer, f"PDU not complete in time ({len(out)} of {nr_bytes} bytes); connection closed"
            )
        finally:
            if raw.fileno() != -1:
                raw.settimeout(previous)
        if len(out) < nr_bytes and assoc.dul.state_machine.current_state in _BEFORE_REQUEST:
            # pynetdicom's acceptor waits acse_timeout for an A-ASSOCIATE-RQ even after the
            # connection is gone (two threads and a socket each); wake it: it then closes and exits.
            cast("queue.Queue[Any]", assoc.dul.to_user_queue).put(None)
        return out


class GuardedRequestHandler(RequestHandler):
    """Attaches each new association to its connection record and gives it a DeadlineSocket."""

    server: GuardedServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        guard = self.server.guard
        conn = guard.attach(cast(socket.socket, self.request), assoc)
        sock = assoc.dul.socket
        assert sock is not None
        # pynetdicom builds the AssociationSocket inline with no way to pass a class: change its class.
        sock.__class__ = DeadlineSocket
        dsock = cast(DeadlineSocket, sock)
        dsock.guard = guard
        opened = conn.opened if conn is not None else time.monotonic()
        dsock.request_deadline = opened + guard.request_timeout
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the guard at accept, and TLS handshakes off the accept loop."""

    # socketserver's listen backlog is 5: a burst of hostile SYNs would make the PACS's connect wait.
    request_queue_size = 128
    # A connection thread may sit in a TLS handshake (bounded): stopping must not wait for it.
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        self.guard = guard
        kwargs["request_handler"] = GuardedRequestHandler
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only; the TLS handshake happens in the connection's thread (process_request_thread)."""
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.guard.admit(request, str(client_address[0]))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        context = self.ssl_context
        if context is not None:
            try:
                wrapped = self.guard.wrap(
                    request, lambda raw: context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                )
            except (OSError, ValueError) as exc:
                self.guard.report("tls_handshake_failed", str(client_address[0]), type(exc).__name__)
                self.shutdown_request(request)
                return
            try:
                wrapped.settimeout(self.guard.request_timeout)  # a silent TLS peer is a half-open one
                cast(ssl.SSLSocket, wrapped).do_handshake()
                wrapped.settimeout(None)
            except (OSError, ValueError) as exc:
                self.guard.report("tls_handshake_failed", str(client_address[0]), type(exc).__name__)
                self.shutdown_request(wrapped)
                return
            request = wrapped
        super().process_request_thread(request, client_address)


class GuardedAE(AE):
    """An AE whose association limit counts associations, not bare TCP connections.

    pynetdicom's ACSE compares ``active_associations`` with ``maximum_associations`` and counts every
    acceptor thread, including connections that have not sent an A-ASSOCIATE-RQ; those are bounded
    by ConnectionGuard instead.
    """

    @property
    def active_associations(self) -> list[Association]:
        return [
            a
            for a in super().active_associations
            if not (a.is_acceptor and a.dul.state_machine.current_state in _BEFORE_REQUEST)
        ]

    def start_guarded_server(
        self,
        address: tuple[str, int],
        guard: ConnectionGuard,
        *,
        evt_handlers: list[Any],
        ssl_context: Any = None,
    ) -> GuardedServer:
        """``start_server(block=False)`` with our server class (pynetdicom's make_server takes one)."""
        server = cast(
            GuardedServer,
            self.make_server(
                address,
                ssl_context=ssl_context,
                evt_handlers=evt_handlers,
                server_class=GuardedServer,
                guard=guard,
            ),
        )
        thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
        thread.start()
        self._servers.append(server)  # AE.shutdown() and server.shutdown() expect it listed here
        return server


def max_pdu_bytes(maximum_pdu_size: int) -> int:
    """The largest PDU length a peer may declare: what we told it, but never under 1 MiB (an
    A-ASSOCIATE-RQ proposing every storage class is tens of KB); 0 (unlimited) means 64 MiB."""
    if maximum_pdu_size <= 0:
        return 64 * _MIB
    return max(maximum_pdu_size, _MIB)
