"""Free-space watermark: answer Out of Resources (0xA700) while there is still room to breathe.

Why before the disk is full: a full disk also breaks the database, the broker and the cleaned images
of studies already accepted; refusing new instances a little early keeps those working, and the
PACS retries Out of Resources by itself once space is back.
"""

from __future__ import annotations

import os
from pathlib import Path

_MIB = 1024 * 1024


def free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on the file system holding ``path`` (None if unknown)."""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def below_watermark(root: Path, min_free_mb: int, incoming: int = 0) -> str | None:
    """The refusal reason when writing ``incoming`` bytes would leave less than ``min_free_mb``."""
    if min_free_mb <= 0:
        return None
    free = free_bytes(root)
    if free is None:
        return None  # the write itself will tell (and be answered 0xA700 too)
    if free - incoming < min_free_mb * _MIB:
        return f"free space {free // _MIB} MiB under storage.min_free_mb {min_free_mb}"
    return None
