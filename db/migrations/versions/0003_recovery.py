"""no study left behind: task heartbeats, one recovery per generation, export retries in the database

Revision ID: 0003_recovery
Revises: 0002_dashboard_session
Create Date: 2026-12-04 23:05:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_recovery"
down_revision: str | None = "0002_dashboard_session"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recovered_generation", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("export_next_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("export_next_try", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("export_pending", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("export_reason", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_study_export_next_at"), ["export_next_at"], unique=False)
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("worker", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("worker")
        batch_op.drop_column("heartbeat_at")
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_export_next_at"))
        batch_op.drop_column("export_reason")
        batch_op.drop_column("export_pending")
        batch_op.drop_column("export_next_try")
        batch_op.drop_column("export_next_at")
        batch_op.drop_column("recovered_generation")
