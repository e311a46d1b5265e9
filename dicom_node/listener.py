"""The DICOM listener: Verification SCP and Storage SCP for ultrasound and secondary-capture images.

Each C-STORE is answered only after its bytes are durably on disk and its rows are committed
(see ``ingest``); failures are answered with statuses a PACS understands (``status``). What could not
be processed later is refused at the door (``header``, ``limits``), the disk is kept above a free-space
watermark (``watermark``), and hostile or broken peers cannot hold connections (``connection_guard``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from sonopacs.config.settings import Settings
from sonopacs.db.session import Database
from sonopacs.dicom_node import status
from sonopacs.dicom_node.associations import (
    AssociationTally,
    called_ae_of,
    calling_ae_of,
    peer_of,
    rejected_context_names,
    rejection_reasons,
)
from sonopacs.dicom_node.connection_guard import ConnectionGuard, GuardedAE, GuardedServer, max_pdu_bytes
from sonopacs.dicom_node.header import HeaderError, parse_header
from sonopacs.dicom_node.ingest import Ingestor, Received
from sonopacs.dicom_node.limits import PixelLimits
from sonopacs.dicom_node.sop_classes import (
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION,
    describe,
    register_storage_classes,
)
from sonopacs.dicom_node.status import StoreOutcome
from sonopacs.dicom_node.storage import InstanceStore
from sonopacs.dicom_node.tls import server_context
from sonopacs.dicom_node.watermark import below_watermark

log = logging.getLogger(__name__)


class Listener:
    """A Storage/Verification SCP. ``start()`` returns at once; ``port`` is the port actually bound."""

    def __init__(self, settings: Settings, database: Database | None = None) -> None:
        self.settings = settings
        self._owns_database = database is None
        self.database = database or _database_for(settings)
        self.store = InstanceStore(Path(settings.storage.root))
        self.ingestor = Ingestor(
            self.database,
            self.store,
            io_threads=settings.dicom.max_associations,
            uid_root=settings.pipeline.uid_root,
        )
        self.port: int = settings.dicom.port
        self.limits = PixelLimits.of(settings.dicom)
        self.guard: ConnectionGuard | None = None
        self._server: GuardedServer | None = None
        self._ae: GuardedAE | None = None
        # Guard audit rows are written off the accept loop: a slow database must not stall accepting.
        self._reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonopacs-guard-audit")
        self._draining = False
        self._in_flight = 0
        self._idle = threading.Condition()
        self._tallies: dict[Association, AssociationTally] = {}
        self._tally_lock = threading.Lock()

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        dicom = self.settings.dicom
        ssl_context = server_context(dicom)
        register_storage_classes()
        ae = GuardedAE(ae_title=dicom.ae_title)
        ae.maximum_associations = dicom.max_associations
        ae.maximum_pdu_size = dicom.max_pdu_size
        ae.require_called_aet = dicom.require_called_ae
        ae.require_calling_aet = list(dicom.allowed_calling_aes)
        ae.acse_timeout = dicom.acse_timeout
        ae.dimse_timeout = dicom.dimse_timeout
        ae.network_timeout = dicom.network_timeout
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, STORAGE_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION, UNCOMPRESSED_TRANSFER_SYNTAXES)
        if not dicom.allowed_calling_aes:
            log.warning(
                "dicom.allowed_calling_aes is empty: any calling AE may store instances "
                "(set SONOPACS_DICOM__ALLOWED_CALLING_AES to restrict)"
            )
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]
        self._store_ready()
        self.guard = ConnectionGuard(
            max_half_open=dicom.max_half_open,
            max_per_address=dicom.max_connections_per_address,
            pdu_timeout=dicom.pdu_timeout,
            request_timeout=dicom.acse_timeout,
            max_pdu_bytes=max_pdu_bytes(dicom.max_pdu_size),
            notify=self._guard_event,
        )
        server = ae.start_guarded_server(
            (dicom.host, dicom.port), self.guard, evt_handlers=handlers, ssl_context=ssl_context
        )
        self._server, self._ae = server, ae
        self.port = int(server.server_address[1])
        log.info(
            "listening as %s on %s:%d%s; storage %s",
            dicom.ae_title,
            dicom.host,
            self.port,
            " (TLS)" if ssl_context else "",
            self.store.root,
        )

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; give open associations ``grace`` seconds; never cut a C-STORE being filed."""
        server, self._server = self._server, None
        if server is None:
            return
        self._draining = True  # C-STOREs from now on get 0xA702 (retry later)
        server.shutdown()
        # Established associations get `grace` to finish; bare TCP connections (health probes, peers
        # that never sent A-ASSOCIATE-RQ) are not waited for.
        deadline = time.monotonic() + grace
        while any(a.is_established for a in server.active_associations) and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=max(grace, 30.0))
        remaining = server.active_associations
        established = [a for a in remaining if a.is_established]
        for assoc in remaining:
            assoc.abort()
        join_until = time.monotonic() + 2.0
        for assoc in established:  # daemon threads: a straggler does not keep the process alive
            assoc.join(timeout=max(0.0, join_until - time.monotonic()))
        if self._ae is not None:
            self._ae.shutdown()
        if self.guard is not None:
            self.guard.flush()
        self._reporter.shutdown(wait=True)
        self.ingestor.close()
        if self._owns_database:
            self.database.dispose()
        log.info("listener stopped")

    def __enter__(self) -> Listener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _store_ready(self) -> None:
        """Create the storage root at start, so a misconfigured root shows in the log at once."""
        try:
            self.store.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error(
                "storage root %s is not usable (%s): C-STOREs will be refused with 0xA700",
                self.store.root,
                exc,
            )

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    # event handlers (run in association threads) -------------------------------------------
    def _on_c_store(self, event: Event) -> Dataset:
        with self._tracked():
            try:
                outcome = self._handle_store(event)
            except Exception:  # a bug of ours must not become a Success or kill the association
                log.exception("C-STORE handler failed")
                outcome = self.ingestor.refuse(
                    status.PROCESSING_FAILURE,
                    "internal error",
                    None,
                    None,
                    sop_instance_uid=_str(getattr(event.request, "AffectedSOPInstanceUID", None)),
                )
        with self._tally_lock:
            tally = self._tallies.get(event.assoc)
        if tally is not None:
            tally.count(outcome.event)
        return outcome.as_dataset()

    def _handle_store(self, event: Event) -> StoreOutcome:
        request = cast(C_STORE, event.request)
        calling_ae = calling_ae_of(event.assoc)
        command_class = _str(request.AffectedSOPClassUID)
        command_instance = _str(request.AffectedSOPInstanceUID)
        if self._draining:
            return self.ingestor.refuse(
                status.OUT_OF_RESOURCES_SHUTTING_DOWN,
                "listener shutting down, send again later",
                None,
                None,
                sop_instance_uid=command_instance,
            )
        received = Received.of(event.encoded_dataset(include_meta=True), calling_ae)
        limits = self.settings.storage
        if len(received.data) > limits.max_instance_bytes:
            return self.ingestor.refuse(
                status.CANNOT_UNDERSTAND_TOO_LARGE,
                f"instance of {len(received.data)} bytes over max_instance_bytes",
                None,
                received,
                sop_instance_uid=command_instance,
            )
        try:
            header = parse_header(received.data, self.limits)
        except HeaderError as exc:
            return self.ingestor.refuse(
                exc.code,
                exc.reason,
                None,
                received,
                sop_instance_uid=exc.sop_instance_uid or command_instance,
            )
        if header.sop_class_uid != command_class or header.sop_class_uid not in STORAGE_SOP_CLASSES:
            return self.ingestor.refuse(
                status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"data set is {describe(header.sop_class_uid)}, command says {describe(command_class)}",
                header,
                received,
            )
        if header.sop_instance_uid != command_instance:
            return self.ingestor.refuse(
                status.CANNOT_UNDERSTAND_UID_MISMATCH,
                "SOP Instance UID differs between command and data set",
                header,
                received,
            )
        low = below_watermark(self.store.root, limits.min_free_mb, len(received.data))
        if low is not None:
            log.warning("C-STORE refused with 0xA700: %s", low)
            return self.ingestor.refuse(status.OUT_OF_RESOURCES_STORAGE, low, header, received)
        return self.ingestor.ingest(header, received)

    def _on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        tally = AssociationTally(calling_ae=calling_ae_of(assoc), peer=peer_of(assoc))
        with self._tally_lock:
            self._tallies[assoc] = tally
        rejected = rejected_context_names(assoc)
        detail = (
            f"calling_ae={tally.calling_ae} called_ae={called_ae_of(assoc)} peer={tally.peer} "
            f"accepted_contexts={len(assoc.accepted_contexts)}"
        )
        self.ingestor.audit("association_accepted", detail=detail)
        if rejected:
            # Many SCUs (storescu among them) propose every storage class they know: not an error by itself.
            log.debug("refused presentation contexts from %s: %s", tally.calling_ae, ", ".join(rejected))
            self.ingestor.audit(
                "presentation_context_rejected",
                detail=f"calling_ae={tally.calling_ae} abstract syntax not supported: {', '.join(rejected)}",
            )

    def _guard_event(self, event: str, peer: str, count: int, detail: str) -> None:
        self._reporter.submit(self.ingestor.audit, event, detail=f"peer={peer} count={count} {detail}")

    def _on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        ae = self._ae
        active = len([a for a in ae.active_associations if a.is_acceptor]) if ae else 0
        reason = rejection_reasons(assoc, self.settings.dicom, active)
        log.warning("association from %s (%s) rejected: %s", calling_ae_of(assoc), peer_of(assoc), reason)
        self.ingestor.audit(
            "association_rejected",
            detail=f"calling_ae={calling_ae_of(assoc)} called_ae={called_ae_of(assoc)} peer={peer_of(assoc)} "
            f"reason={reason}",
        )

    def _on_conn_close(self, event: Event) -> None:
        with self._tally_lock:
            tally = self._tallies.pop(event.assoc, None)
        if tally is None:
            return  # never accepted: already audited as rejected (or a bare TCP probe)
        how = "aborted" if event.assoc.is_aborted else "released"
        self.ingestor.audit("association_ended", detail=f"{how} {tally.summary()}")


def _str(value: Any) -> str:
    return str(value or "").strip("\x00 ")


def _database_for(settings: Settings) -> Database:
    url = settings.database_url
    kwargs: dict[str, Any] = {"pool_size": settings.dicom.max_associations + 2, "max_overflow": 4}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 5}
    return Database(url, **kwargs)


def run_listener(settings: Settings) -> int:
    """``sonopacs listener``: migrate, serve until SIGTERM/SIGINT, then drain in-flight C-STOREs."""
    from sonopacs.db.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:  # noqa: BLE001 - keep serving: stores answer 0xA701 until the DB is back
        log.error("database migration failed (%s); C-STOREs will be refused with 0xA701 until it works", exc)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # it logs every PDU at INFO
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    listener = Listener(settings)
    try:
        listener.start()
        while not stop.wait(1.0):
            pass
    finally:
        listener.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
