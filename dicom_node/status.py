"""C-STORE response statuses (PS3.4 B.2.3, PS3.7 C) and the reason text sent with them.

Out of Resources (0xA7xx) means "try again later": a PACS retries. The 0xC1xx family means the
object itself is unusable, so retrying the same bytes would fail again.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

SUCCESS = 0x0000
OUT_OF_RESOURCES_STORAGE = 0xA700  # disk full or storage not writable
OUT_OF_RESOURCES_DATABASE = 0xA701  # database unreachable or failing
OUT_OF_RESOURCES_SHUTTING_DOWN = 0xA702  # the listener is stopping; send again later
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND_UNPARSEABLE = 0xC100  # truncated or not DICOM
CANNOT_UNDERSTAND_MISSING_ATTRIBUTE = 0xC101  # a required UID is missing or invalid
CANNOT_UNDERSTAND_NO_PIXEL_DATA = 0xC102
CANNOT_UNDERSTAND_TOO_LARGE = 0xC103  # pixel matrix or instance over the configured limit
CANNOT_UNDERSTAND_UID_MISMATCH = 0xC104  # command and data set disagree on the SOP Instance UID
CANNOT_UNDERSTAND_PIXEL_LENGTH = 0xC105  # native Pixel Data length differs from Rows x Columns x ...
PROCESSING_FAILURE = 0x0110  # a bug of ours; logged with a traceback

_COMMENT_MAX = 64  # (0000,0902) Error Comment is LO: 64 characters


@dataclass(frozen=True)
class StoreOutcome:
    """What the SCP answers for one C-STORE, plus the audit event name it leaves."""

    status: int
    event: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    @property
    def retryable(self) -> bool:
        return (self.status & 0xFF00) == 0xA700

    def as_dataset(self) -> Dataset:
        """The status as pynetdicom sends it; failures carry the reason as Error Comment."""
        ds = Dataset()
        ds.Status = self.status
        if not self.ok and self.reason:
            ds.ErrorComment = _ascii(self.reason)[:_COMMENT_MAX]
        return ds


def refused(status: int, reason: str) -> StoreOutcome:
    return StoreOutcome(status=status, event="instance_refused", reason=reason)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\\", "/")
