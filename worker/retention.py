"""Retention: PHI stays on our disk only as long as the policy in `retention.*` says.

Only studies whose results reached the PACS (state `exported`) and that no admin pinned are ever
purged: their received originals and cleaned copies `originals_days` after the export, our own
result files `results_days` after it. Database rows (study, instances, results, audit) stay, so the
dashboard still shows what happened; every deletion is an audit row with what went and how much.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import func, select

from sonopacs.config import Settings
from sonopacs.db import Database, ExportAttempt, Instance, ResultObject, Study, StudyState
from sonopacs.db.audit import record
from sonopacs.db.models import as_utc, utcnow

log = logging.getLogger(__name__)

ACTOR = "retention"
Part = Literal["originals", "results"]


@dataclass
class PurgeItem:
    """One part of one study that is due: the files that would go and since when it is due."""

    study_id: int
    study_instance_uid: str
    part: Part
    exported_at: datetime
    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(_size(p) for p in self.files) + sum(_tree_size(d) for d in self.folders)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tree_size(folder: Path) -> int:
    return sum(_size(p) for p in folder.rglob("*") if p.is_file())


def _inside(root: Path, rel: str) -> Path | None:
    """A stored relative path under the storage root; None for anything that would leave it."""
    path = (root / rel).resolve()
    return path if path.is_relative_to(root) else None


def plan(settings: Settings, db: Database, now: datetime | None = None) -> list[PurgeItem]:
    """What the policy would delete now (nothing is touched)."""
    now = now or utcnow()
    policy = settings.retention
    root = settings.storage.root.resolve()
    exported_at = (
        select(ExportAttempt.study_id, func.max(ExportAttempt.finished_at).label("at"))
        .where(ExportAttempt.success.is_(True))
        .group_by(ExportAttempt.study_id)
        .subquery()
    )
    items: list[PurgeItem] = []
    with db.session() as session:
        rows = session.execute(
            select(Study, exported_at.c.at)
            .join(exported_at, exported_at.c.study_id == Study.id)
            .where(Study.state == StudyState.EXPORTED, Study.pinned.is_(False))
            .order_by(exported_at.c.at)
        ).all()
        for study, at in rows:
            at = as_utc(at)  # a raw aggregate: naive on SQLite
            if study.originals_purged_at is None and now - at >= timedelta(days=policy.originals_days):
                paths = session.execute(select(Instance.path).where(Instance.study_id == study.id)).scalars()
                items.append(
                    PurgeItem(
                        study.id,
                        study.study_instance_uid,
                        "originals",
                        at,
                        files=[p for p in (_inside(root, str(raw)) for raw in paths) if p is not None],
                        folders=[p for p in [_inside(root, f"pipeline/{study.study_instance_uid}")] if p],
                    )
                )
            if study.results_purged_at is None and now - at >= timedelta(days=policy.results_days):
                paths = session.execute(
                    select(ResultObject.path).where(ResultObject.study_id == study.id)
                ).scalars()
                items.append(
                    PurgeItem(
                        study.id,
                        study.study_instance_uid,
                        "results",
                        at,
                        files=[p for p in (_inside(root, str(raw)) for raw in paths) if p is not None],
                    )
                )
    return items


def purge(settings: Settings, db: Database, now: datetime | None = None) -> list[PurgeItem]:
    """Delete what is due; one audit row per study part, written with the purge time."""
    done = []
    for item in plan(settings, db, now):
        size = item.bytes
        removed = _remove(item.files, item.folders)
        with db.session() as session:
            study = session.get(Study, item.study_id)
            if study is None or study.pinned or study.state != StudyState.EXPORTED:
                continue  # pinned or reprocessed meanwhile: what is gone is gone, the rest stays
            stamp = utcnow()
            if item.part == "originals":
                study.originals_purged_at = stamp
            else:
                study.results_purged_at = stamp
            record(
                session,
                f"purge_{item.part}",
                ACTOR,
                study=study,
                detail=f"deleted {removed} files ({size} bytes), exported {item.exported_at:%Y-%m-%d %H:%M} UTC",
            )
        log.info("retention: study %s %s purged (%d files)", item.study_id, item.part, removed)
        done.append(item)
    return done


def _remove(files: Iterable[Path], folders: Iterable[Path]) -> int:
    removed = 0
    for path in files:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:  # a file we cannot delete stays listed for the next run
            log.warning("retention: cannot delete %s: %s", path.name, exc)
    for folder in folders:
        if folder.is_dir():
            removed += sum(1 for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
    return removed


def disk_usage(settings: Settings) -> dict[str, int]:
    """Bytes used under the storage root by part, and what the file system has free."""
    root = settings.storage.root
    usage = {name: _tree_size(root / name) for name in ("received", "pipeline", "results")}
    root.mkdir(parents=True, exist_ok=True)
    usage["free"] = shutil.disk_usage(root).free
    return usage
