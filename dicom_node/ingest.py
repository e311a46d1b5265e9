"""One received instance: file it durably, then record Study/Series/Instance and audit rows in one
transaction, and only then report success.

Duplicates (same SOP Instance UID as a committed instance) never replace what was accepted first:
- same bytes (same SHA-256): Success, no new row, an ``instance_duplicate`` audit row;
- different bytes: the original file and row are kept, the new bytes are NOT stored, the answer is
  still Success (a failure would make the PACS retry the same conflicting object for ever), and an
  ``instance_duplicate_conflict`` audit row records both hashes for a person to look at.
Neither kind reopens the study: an identical re-send is not new work.

Every new instance (re)opens its study: ``state = receiving`` (a ``study_state`` audit row when it
changes), ``last_received_at = now``, and ``generation + 1`` when the current generation was already
enqueued, so the worker's stability monitor (which compares ``enqueued_generation`` with
``generation``) enqueues exactly one more run. This module never imports the worker.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from sonopacs.db.audit import record, set_study_state
from sonopacs.db.models import Instance, InstanceState, Series, Study, StudyState, utcnow
from sonopacs.db.session import Database
from sonopacs.dicom_node import status
from sonopacs.dicom_node.eligibility import OWN_RESULT_REASON, has_our_marks
from sonopacs.dicom_node.header import InstanceHeader
from sonopacs.dicom_node.status import StoreOutcome
from sonopacs.dicom_node.storage import InstanceStore, StorageError

log = logging.getLogger(__name__)

ACTOR = "listener"
_LOCK_STRIPES = 64
_ATTEMPTS = 3


@dataclass(frozen=True)
class Received:
    """The encoded instance as it will be written, and who sent it."""

    data: bytes
    calling_ae: str
    sha256: str

    @classmethod
    def of(cls, data: bytes, calling_ae: str) -> Received:
        return cls(data=data, calling_ae=calling_ae, sha256=hashlib.sha256(data).hexdigest())


class Ingestor:
    """Files instances and keeps the database in step; safe to call from many association threads."""

    def __init__(
        self, database: Database, store: InstanceStore, io_threads: int = 4, uid_root: str | None = None
    ) -> None:
        self.database = database
        self.store = store
        # Our own results coming back from the PACS are filed but never reopen their study (no loops).
        self.uid_root = uid_root
        # Striped locks: two copies of one SOP Instance UID are never filed at the same time.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="sonopacs-fsync")

    def close(self) -> None:
        self._io.shutdown(wait=True)

    def ingest(self, header: InstanceHeader, received: Received) -> StoreOutcome:
        lock = self._locks[hash(header.sop_instance_uid) % _LOCK_STRIPES]
        with lock:
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    return self._ingest_once(header, received)
                except IntegrityError as exc:
                    # Another association created the same study/series first: go again, it exists now.
                    if attempt == _ATTEMPTS:
                        log.error(
                            "instance %s: integrity error after retries: %s", header.sop_instance_uid, exc
                        )
                        return self.refuse(
                            status.OUT_OF_RESOURCES_DATABASE, "database conflict, retry", header, received
                        )
                except StorageError as exc:
                    log.error("instance %s not stored: %s", header.sop_instance_uid, exc)
                    return self.refuse(status.OUT_OF_RESOURCES_STORAGE, str(exc), header, received)
                except SQLAlchemyError as exc:
                    log.error("instance %s: database unavailable: %s", header.sop_instance_uid, exc)
                    return self.refuse(
                        status.OUT_OF_RESOURCES_DATABASE,
                        f"database unavailable: {type(exc).__name__}",
                        header,
                        received,
                    )
        raise AssertionError("unreachable")  # pragma: no cover

    def refuse(
        self,
        code: int,
        reason: str,
        header: InstanceHeader | None,
        received: Received | None,
        *,
        sop_instance_uid: str | None = None,
    ) -> StoreOutcome:
        """Answer a failure and leave an audit row; when the database is down, the log is the record."""
        outcome = status.refused(code, reason)
        sop = header.sop_instance_uid if header is not None else sop_instance_uid
        detail = f"status=0x{code:04X} reason={reason}"
        if received is not None:
            detail += f" calling_ae={received.calling_ae} size={len(received.data)} sha256={received.sha256}"
        self.audit(
            outcome.event,
            sop_instance_uid=sop,
            study_instance_uid=header.study_instance_uid if header is not None else None,
            detail=detail,
        )
        return outcome

    def audit(
        self,
        event: str,
        *,
        sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
        detail: str | None = None,
    ) -> None:
        """A standalone audit row (its own transaction); never raises."""
        try:
            with self.database.session() as session:
                study_id = None
                if study_instance_uid:
                    study_id = session.scalar(
                        select(Study.id).where(Study.study_instance_uid == study_instance_uid)
                    )
                record(
                    session,
                    event,
                    ACTOR,
                    study_id=study_id,
                    study_instance_uid=_clip(study_instance_uid),
                    sop_instance_uid=_clip(sop_instance_uid),
                    detail=detail,
                )
        except SQLAlchemyError as exc:
            log.error("audit row %s not written (database unavailable: %s); detail: %s", event, exc, detail)

    # ------------------------------------------------------------------------------------------
    def _ingest_once(self, header: InstanceHeader, received: Received) -> StoreOutcome:
        path = self.store.path_for(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        with self.database.session() as session:
            existing = session.scalar(
                select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
            )
            if existing is not None:
                return self._duplicate(session, existing, received)

            # The file is written and fsync'ed on an I/O thread while the rows are prepared here; the
            # commit waits for it, so a committed row always points at a durable file.
            pending = self._io.submit(self.store.write, path, received.data)
            try:
                self._add_rows(session, header, received, path)
            finally:
                wait([pending])
            pending.result()  # raises StorageError: the transaction rolls back, nothing is committed
        return StoreOutcome(status.SUCCESS, "instance_received")

    def _add_rows(self, session: Session, header: InstanceHeader, received: Received, path: Path) -> None:
        """Study (created or reopened), Series, Instance and the audit row, flushed but not committed."""
        study = session.scalar(select(Study).where(Study.study_instance_uid == header.study_instance_uid))
        series = session.scalar(
            select(Series).where(Series.series_instance_uid == header.series_instance_uid)
        )
        now = utcnow()
        if study is None:
            study = _new_study(header, now)
            session.add(study)
            session.flush()
            record(
                session,
                "study_state",
                ACTOR,
                study=study,
                to_state=StudyState.RECEIVING.value,
                detail="first instance received",
            )
            reopened = ""
        elif self._is_our_result(header):
            reopened = " sonopacs result: study not reopened"
        else:
            reopened = _reopen(session, study, now)
        if series is None:
            series = Series(
                study_id=study.id,
                series_instance_uid=header.series_instance_uid,
                modality=header.modality,
                series_number=header.series_number,
                series_description=header.series_description,
                manufacturer=header.manufacturer,
            )
            session.add(series)
            session.flush()
        ours = self._is_our_result(header)
        session.add(
            Instance(
                # Our own results are filed but never count as new work for a run (no loops, and a
                # later reprocess is not mistaken for "only our results arrived").
                state=InstanceState.SKIPPED if ours else InstanceState.RECEIVED,
                state_reason=OWN_RESULT_REASON if ours else None,
                series_id=series.id,
                study_id=study.id,
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                transfer_syntax_uid=header.transfer_syntax_uid,
                instance_number=header.instance_number,
                number_of_frames=header.number_of_frames,
                path=str(path),
                size_bytes=len(received.data),
                sha256=received.sha256,
                calling_ae=received.calling_ae[:16],
                received_at=now,
            )
        )
        record(
            session,
            "instance_received",
            ACTOR,
            study=study,
            sop_instance_uid=header.sop_instance_uid,
            detail=(
                f"calling_ae={received.calling_ae} size={len(received.data)} sha256={received.sha256} "
                f"transfer_syntax={header.transfer_syntax_uid}{reopened}"
            ),
        )
        session.flush()

    def _is_our_result(self, header: InstanceHeader) -> bool:
        return self.uid_root is not None and has_our_marks(
            self.uid_root,
            uids=(header.sop_instance_uid, header.series_instance_uid),
            manufacturer=header.manufacturer,
            series_description=header.series_description,
        )

    def _duplicate(self, session: Session, existing: Instance, received: Received) -> StoreOutcome:
        detail = f"calling_ae={received.calling_ae} size={len(received.data)} sha256={received.sha256}"
        if existing.sha256 == received.sha256:
            path = Path(existing.path)
            if not self.store.holds(path, existing.size_bytes, existing.sha256):
                # The row is committed but the file is gone or damaged: these are the same bytes, heal it.
                self.store.write(path, received.data)
                detail += " file restored"
            record(
                session,
                "instance_duplicate",
                ACTOR,
                study_id=existing.study_id,
                sop_instance_uid=existing.sop_instance_uid,
                detail=detail + " identical to the stored instance",
            )
            return StoreOutcome(status.SUCCESS, "instance_duplicate")
        log.warning(
            "instance %s re-sent with different content by %s: kept the original (sha256 %s), discarded %s",
            existing.sop_instance_uid,
            received.calling_ae,
            existing.sha256,
            received.sha256,
        )
        record(
            session,
            "instance_duplicate_conflict",
            ACTOR,
            study_id=existing.study_id,
            sop_instance_uid=existing.sop_instance_uid,
            detail=f"{detail} differs from stored sha256={existing.sha256}; original kept, new bytes discarded",
        )
        return StoreOutcome(status.SUCCESS, "instance_duplicate_conflict", "different content, original kept")


def _new_study(header: InstanceHeader, now: datetime) -> Study:
    return Study(
        study_instance_uid=header.study_instance_uid,
        patient_id=header.patient_id,
        patient_name=header.patient_name,
        accession_number=header.accession_number,
        study_date=header.study_date,
        study_description=header.study_description,
        generation=1,
        enqueued_generation=0,
        first_received_at=now,
        last_received_at=now,
    )


def _reopen(session: Session, study: Study, now: datetime) -> str:
    """Mark the study as receiving again; bump its generation if that generation was already enqueued.

    The UPDATE comes first so this transaction holds the row (PostgreSQL row lock, SQLite write lock)
    before reading generation/enqueued_generation: the stability monitor cannot slip in between.
    """
    state, generation, enqueued = session.execute(
        update(Study)
        .where(Study.id == study.id)
        .values(last_received_at=now)
        .returning(Study.state, Study.generation, Study.enqueued_generation)
        .execution_options(synchronize_session=False)
    ).one()
    if state == StudyState.RECEIVING and enqueued < generation:
        return ""  # the usual case: still receiving, this generation not yet enqueued
    session.refresh(study)  # under the lock now: the values to decide on
    note = ""
    if study.enqueued_generation >= study.generation:
        study.generation += 1
        note = f" reopened study: generation {study.generation - 1}->{study.generation}"
    if study.state != StudyState.RECEIVING:
        set_study_state(session, study, StudyState.RECEIVING, ACTOR, detail=f"new instance arrived{note}")
    return note


def _clip(value: str | None, limit: int = 64) -> str | None:
    return value[:limit] if value is not None else None
