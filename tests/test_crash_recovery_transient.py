"""Transient trouble is retried with backoff, not left for a human: a stage that hits a full disk
(ENOSPC on a real, deliberately full tmpfs) retries and completes once space is back."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sonopacs.config import Settings
from sonopacs.db import Database, JobState, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.worker.stability import enqueue_stable_studies
from tests.support.dicom_factory import write_ct_instance
from tests.support.net import wait_until
from tests.support.worker_proc import add_instance, add_study, worker_process, write_config
from tests.test_crash_recovery import RECOVERY, jobs, study


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (needs the right to mount; skipped where it is missing)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a ballast file until the file system says ENOSPC."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


def test_disk_full_in_a_stage_is_retried_with_backoff(
    small_disk: Path, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        "sqlite",
        storage={"root": small_disk},
        recovery={**RECOVERY, "stuck_seconds": 600, "transient_backoff_max_seconds": 1},
    )
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, _ = add_study(db)
    add_instance(db, study_id, write_ct_instance(tmp_path / "ct.dcm"))  # outside the small disk
    (small_disk / "pipeline").mkdir()
    ballast = fill(small_disk / "pipeline")
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker.log", concurrency=1):
            assert enqueue_stable_studies(settings, db) == [study_id]
            wait_until(
                lambda: sum(j.state == JobState.RETRYING for j in jobs(db, study_id, "clean")) >= 2, timeout=60
            )
            assert study(db, study_id).state == StudyState.PROCESSING  # waiting, not failed
            ballast.unlink()  # space is back
            wait_until(lambda: study(db, study_id).state == StudyState.RESULTS_READY, timeout=60)
        clean = jobs(db, study_id, "clean")
        assert clean[-1].state == JobState.SUCCEEDED
        retried = [j for j in clean if j.state == JobState.RETRYING]
        assert retried and all("No space left on device" in (j.error or "") for j in retried)
    finally:
        db.dispose()
