"""Storage and Verification SCU: sends files to a peer AE (export, `sonopacs send`, `sonopacs echo`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
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
    """C-STORE each file as stored (no re-encoding), one association per group of 128 contexts."""
    report = SendReport()
    datasets = []
    for raw in paths:
        path = Path(raw)
        try:
            ds = dcmread(path)
            ds.file_meta.MediaStorageSOPClassUID  # noqa: B018 - must exist to be sent
        except (InvalidDicomError, OSError, AttributeError, ValueError) as exc:
            report.failed[path] = f"not a readable DICOM file: {exc}"
            continue
        datasets.append((path, ds))

    for chunk in _chunks_by_context(datasets):
        _send_chunk(chunk, peer, calling_ae, timeout, report)
    return report


def _chunks_by_context(datasets: list[tuple[Path, object]]) -> Iterable[list[tuple[Path, object]]]:
    chunk: list[tuple[Path, object]] = []
    contexts: set[tuple[str, str]] = set()
    for path, ds in datasets:
        key = (str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID))  # type: ignore[attr-defined]
        if key not in contexts and len(contexts) >= MAX_CONTEXTS:
            yield chunk
            chunk, contexts = [], set()
        contexts.add(key)
        chunk.append((path, ds))
    if chunk:
        yield chunk


def _send_chunk(
    chunk: list[tuple[Path, object]], peer: Peer, calling_ae: str, timeout: float, report: SendReport
) -> None:
    ae = _make_ae(calling_ae, timeout)
    keys = sorted(
        {(str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in chunk}  # type: ignore[attr-defined]
    )
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in keys]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not reachable"
        for path, _ in chunk:
            report.failed[path] = f"association with {peer} {reason}"
        return
    try:
        for path, ds in chunk:
            if not assoc.is_established:
                report.failed[path] = f"association with {peer} ended early"
                continue
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:
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
