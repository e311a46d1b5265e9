"""Database: SQLAlchemy 2 models, sessions, repository functions and Alembic migrations."""

from sonopacs.db.models import (
    AuditEvent,
    Base,
    ExportAttempt,
    Instance,
    InstanceState,
    Job,
    JobState,
    ResultObject,
    Series,
    Study,
    StudyState,
    User,
)
from sonopacs.db.session import Database, make_engine

__all__ = [
    "AuditEvent",
    "Base",
    "Database",
    "ExportAttempt",
    "Instance",
    "InstanceState",
    "Job",
    "JobState",
    "ResultObject",
    "Series",
    "Study",
    "StudyState",
    "User",
    "make_engine",
]
