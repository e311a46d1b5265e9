"""Storage and Verification SCU: sends files to a peer AE (export, `sonopacs send`, `sonopacs echo`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

log = logging.getLogger(__name__)

# pynetdicom allows 128 presentation contexts per association.
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    ae_title: str

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class SendReport:
    """Outcome of one C-STORE run: per-file status, so a caller can retry only what failed."""

    sent: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


class AssociationError(ConnectionError):
    """The peer could not be reached or rejected/aborted the association."""


def _make_ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def echo(peer: Peer, calling_ae: str = "SONOPACS", timeout: float = 10) -> int:
    """C-ECHO the peer; returns the DIMSE status (0x0000 is success)."""
    ae = _make_ae(calling_ae, timeout)
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise AssociationError(f"association with {peer} was not established")
    try:
        status = assoc.send_c_echo()
        if not status:
            raise AssociationError(f"no C-ECHO response from {peer}")
        return int(status.Status)
    finally:
        assoc.release()


def send_files(
    paths: Sequence[Path | str],
    peer: Peer,
    calling_ae: str = "SONOPACS",
    timeout: float = 30,
) -> SendReport:
    """C-STORE each file's stored bytes (no decoding), one association per group of 128 contexts."""
    report = SendReport()
    files: list[tuple[Path, tuple[str, str]]] = []
    for raw in paths:
        path = Path(raw)
        try:
            meta = read_file_meta_info(path)
            key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except (InvalidDicomError, OSError, AttributeError, ValueError) as exc:
            report.failed[path] = f"not a readable DICOM file: {exc}"
            continue
        files.append((path, key))

    for chunk in _chunks_by_context(files):
        _send_chunk(chunk, peer, calling_ae, timeout, report)
    return report


def _chunks_by_context(
    files: list[tuple[Path, tuple[str, str]]],
) -> Iterable[list[tuple[Path, tuple[str, str]]]]:
    chunk: list[tuple[Path, tuple[str, str]]] = []
    contexts: set[tuple[str, str]] = set()
    for path, key in files:
        if key not in contexts and len(contexts) >= MAX_CONTEXTS:
            yield chunk
            chunk, contexts = [], set()
        contexts.add(key)
        chunk.append((path, key))
    if chunk:
        yield chunk


def _send_chunk(
    chunk: list[tuple[Path, tuple[str, str]]], peer: Peer, calling_ae: str, timeout: float, report: SendReport
) -> None:
    ae = _make_ae(calling_ae, timeout)
    keys = sorted({key for _, key in chunk})
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in keys]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not reachable"
        for path, _ in chunk:
            report.failed[path] = f"association with {peer} {reason}"
        return
    try:
        for path, _ in chunk:
            if not assoc.is_established:
                report.failed[path] = f"association with {peer} ended early"
                continue
            try:
                # A path is sent as its stored bytes: no decode, no re-encode.
                status = assoc.send_c_store(path)
            except (ValueError, RuntimeError, OSError, InvalidDicomError) as exc:
                report.failed[path] = f"C-STORE could not be sent: {exc}"
                continue
            code = int(status.Status) if status else None
            if code is None:
                report.failed[path] = "no C-STORE response (timeout or abort)"
            elif code == 0x0000 or (code & 0xF000) == 0xB000:
                report.sent.append(path)
            else:
                report.failed[path] = f"C-STORE status 0x{code:04X}"
    finally:
        if assoc.is_established:
            assoc.release()
