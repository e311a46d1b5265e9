"""Reprocess and resend from the dashboard: thin calls into the worker's own actions.

The worker owns what these mean (state checks, new generation, enqueueing, audit rows); the
dashboard only names the acting user. Imported lazily so the dashboard runs without the worker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from fastapi import HTTPException

from sonopacs.worker import actions

if TYPE_CHECKING:
    from sonopacs.config import Settings

log = logging.getLogger(__name__)

Action = Literal["resend", "reprocess"]


def run_action(settings: Settings, action: Action, study_uid: str, actor: str) -> Any:
    """Call the worker's resend/reprocess action; 404 for an unknown study, 409 when refused."""
    fn = {"resend": actions.resend_study, "reprocess": actions.reprocess_study}[action]
    try:
        result = fn(settings, study_uid, actor=actor)
    except LookupError as exc:
        raise HTTPException(404, "study not found") from exc
    except (ValueError, RuntimeError) as exc:
        # The worker refuses, e.g. resend without results or while the study is being processed.
        raise HTTPException(409, f"{action} refused: {exc}") from exc
    log.info("%s requested by %s (study id only in the audit trail)", action, actor)
    return result
