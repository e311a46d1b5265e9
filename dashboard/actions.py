"""Reprocess and resend from the dashboard: thin calls into the worker's own actions.

The worker owns what these mean (state checks, new generation, enqueueing, audit rows); the
dashboard only names the acting user. Imported lazily so the dashboard runs without the worker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from fastapi import HTTPException

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger(__name__)

Action = Literal["resend", "reprocess"]


def run_action(settings: Settings, action: Action, study_uid: str, actor: str) -> Any:
    """Call worker.actions.<action>_study; 503 when the worker is not installed, 409 when refused."""
    try:
        from worker import actions
    except ImportError as exc:
        raise HTTPException(503, "worker not installed: reprocess/resend are unavailable") from exc
    fn = getattr(actions, f"{action}_study", None)
    if fn is None:
        raise HTTPException(503, f"worker has no {action} action yet")
    try:
        result = fn(settings, study_uid, actor=actor)
    except LookupError as exc:
        raise HTTPException(404, "study not found") from exc
    except (ValueError, RuntimeError) as exc:
        # The worker refuses, e.g. resend without results or while the study is being processed.
        raise HTTPException(409, f"{action} refused: {exc}") from exc
    log.info("%s requested by %s (study id only in the audit trail)", action, actor)
    return result
