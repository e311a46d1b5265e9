"""Helpers for tests that talk to the sonopacs listener over real sockets."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, _config, build_context
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db.migrate import upgrade
from sonopacs.db.models import AuditEvent
from sonopacs.db.session import Database
from sonopacs.dicom_node.listener import Listener


def dcmtk(name: str) -> str:
    """The DCMTK binary: pynetdicom installs Python apps with the same names (storescu, echoscu, ...)."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError(name)


@contextmanager
def running_listener(settings: Settings, migrate: bool = True) -> Iterator[Listener]:
    if migrate:
        upgrade(settings.database_url)
    listener = Listener(settings)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop(grace=5)


def audit_rows(settings: Settings, event: str | None = None) -> list[AuditEvent]:
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if event is not None:
                query = query.where(AuditEvent.event == event)
            return list(session.scalars(query))
    finally:
        db.dispose()


def dataset_body(data: bytes) -> bytes:
    """The data set of a Part 10 file, without preamble and file meta (which each writer makes its own)."""
    assert data[128:132] == b"DICM"
    # (0002,0000) UL, explicit VR little endian: tag 4 + VR 2 + length 2 + value 4.
    (group_length,) = struct.unpack_from("<I", data, 132 + 8)
    return data[132 + 12 + group_length :]


@dataclass
class StoreResult:
    status: int | None
    comment: str | None


def raw_c_store(
    port: int, path: Path, calling_ae: str = "TESTSCU", called_ae: str = "SONOPACS", host: str = "127.0.0.1"
) -> StoreResult:
    """C-STORE a file's bytes exactly as they are after its file meta (no decoding, no re-encoding),
    so broken data sets reach the SCP unchanged. The context comes from the file meta."""
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.requested_contexts = [build_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])]
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError("association not established")
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        rsp = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc.is_established:
            assoc.release()
    if not rsp:
        return StoreResult(None, None)
    return StoreResult(int(rsp.Status), str(rsp.get("ErrorComment", "")) or None)
