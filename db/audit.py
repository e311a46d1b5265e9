"""Audit trail and state transitions: one place that changes a state and writes its row."""

from __future__ import annotations

from sqlalchemy.orm import Session

from sonopacs.db.models import AuditEvent, Instance, InstanceState, Study, StudyState, utcnow


def record(
    session: Session,
    event: str,
    actor: str,
    *,
    study: Study | None = None,
    study_id: int | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    detail: str | None = None,
) -> AuditEvent:
    row = AuditEvent(
        time=utcnow(),
        actor=actor,
        event=event,
        study_id=study.id if study is not None else study_id,
        study_instance_uid=study.study_instance_uid if study is not None else study_instance_uid,
        sop_instance_uid=sop_instance_uid,
        from_state=from_state,
        to_state=to_state,
        detail=detail,
    )
    session.add(row)
    return row


def set_study_state(
    session: Session, study: Study, to: StudyState, actor: str, detail: str | None = None
) -> None:
    """Move a study to a new state and write the audit row in the same transaction."""
    previous = study.state
    study.state = to
    study.state_reason = detail if to in (StudyState.FAILED, StudyState.EXPORT_FAILED) else None
    record(
        session,
        "study_state",
        actor,
        study=study,
        from_state=previous.value if previous is not None else None,
        to_state=to.value,
        detail=detail,
    )


def set_instance_state(
    session: Session, instance: Instance, to: InstanceState, actor: str, reason: str | None = None
) -> None:
    previous = instance.state
    instance.state = to
    instance.state_reason = reason
    record(
        session,
        "instance_state",
        actor,
        study_id=instance.study_id,
        sop_instance_uid=instance.sop_instance_uid,
        from_state=previous.value if previous is not None else None,
        to_state=to.value,
        detail=reason,
    )
