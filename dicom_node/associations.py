"""Association-level audit: who connected, what was accepted or refused, and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from pynetdicom.association import Association

from sonopacs.config.settings import DicomSettings
from sonopacs.dicom_node.sop_classes import describe


@dataclass
class AssociationTally:
    """Per-association counts, written to the audit row when the association ends."""

    calling_ae: str
    peer: str
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, event: str) -> None:
        self.outcomes[event] = self.outcomes.get(event, 0) + 1

    def summary(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())) or "no C-STORE"
        return f"calling_ae={self.calling_ae} peer={self.peer} {counts}"


def peer_of(assoc: Association) -> str:
    return f"{assoc.requestor.address}:{assoc.requestor.port}"


def calling_ae_of(assoc: Association) -> str:
    return str(assoc.requestor.ae_title or "").strip()


def called_ae_of(assoc: Association) -> str:
    primitive = assoc.requestor.primitive
    return str(getattr(primitive, "called_ae_title", "") or "").strip()


def rejection_reasons(assoc: Association, dicom: DicomSettings, active_acceptors: int) -> str:
    """Why pynetdicom refused the association, reconstructed from the same rules it applied.

    Not read from pynetdicom: its EVT_REJECTED is triggered with no data (acse.py), so the reason is lost.
    """
    reasons = []
    calling, called = calling_ae_of(assoc), called_ae_of(assoc)
    if dicom.allowed_calling_aes and calling not in dicom.allowed_calling_aes:
        reasons.append(f"calling AE {calling!r} not in allowed_calling_aes")
    if dicom.require_called_ae and called != dicom.ae_title:
        reasons.append(f"called AE {called!r} is not {dicom.ae_title!r}")
    if active_acceptors > dicom.max_associations:
        reasons.append(f"too many associations (max_associations={dicom.max_associations})")
    return "; ".join(reasons) or "rejected during negotiation"


def rejected_context_names(assoc: Association) -> list[str]:
    return sorted({describe(str(cx.abstract_syntax), with_uid=False) for cx in assoc.rejected_contexts})
