"""Durable files for received instances: nothing is acknowledged that a power cut could take back.

Each file is written to a temporary name in its final folder, fsync'ed, renamed into place, and the
folder is fsync'ed too (and every folder this call created, up to the root), so the name survives.
Paths are built from the Study/Series/SOP Instance UIDs, but a UID is used as a path component only
when it is a well-formed UID (digits and dots); anything else is replaced by a hash of it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
from pathlib import Path

_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
RECEIVED_DIR = "received"


class StorageError(OSError):
    """The instance could not be made durable (disk full, read-only, not a folder, ...)."""


def safe_component(uid: str) -> str:
    """A file-name-safe form of a UID: itself when well formed, else ``x`` + its SHA-256 prefix."""
    if len(uid) <= 64 and _SAFE_UID.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def stored_file(root: Path, stored: str) -> Path:
    """The file a database row points at: a relative path lies under the storage root (so the root
    can move), an absolute one is taken as recorded."""
    path = Path(stored)
    return path if path.is_absolute() else root / path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Make ``path`` hold exactly ``data`` (temp name, fsync, rename, fsync of the folder and of every
    folder created); raises StorageError and leaves no temp file. The one durable write of the project."""
    tmp: Path | None = None
    try:
        make_dirs_durably(path.parent)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(exc.errno or errno.EIO, f"cannot store {path.name}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def make_dirs_durably(folder: Path) -> None:
    """mkdir -p, then fsync the parent of each folder created so the new names are durable."""
    missing: list[Path] = []
    probe = folder
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:
            if not created.is_dir():
                raise
        fsync_dir(created.parent)


class InstanceStore:
    """Files of received instances under ``root/received/<study>/<series>/<sop>.dcm``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / RECEIVED_DIR
            / safe_component(study_uid)
            / safe_component(series_uid)
            / f"{safe_component(sop_uid)}.dcm"
        )

    def write(self, path: Path, data: bytes) -> None:
        """Make ``path`` hold exactly ``data``, durably; raises StorageError and leaves no temp file.

        The caller holds the per-instance lock and has checked that no committed row points here,
        so a file already at ``path`` is a leftover of an unacknowledged attempt and is replaced.
        """
        write_durably(path, data)

    def holds(self, path: Path, size: int, sha256: str) -> bool:
        """Whether ``path`` already holds the bytes with this size and hash."""
        try:
            if path.stat().st_size != size:
                return False
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest() == sha256
        except OSError:
            return False
