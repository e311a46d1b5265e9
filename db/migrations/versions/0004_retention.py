"""retention: studies an admin pinned, and when a study's originals and results were purged

Revision ID: 0004_retention
Revises: 0003_recovery
Create Date: 2026-12-04 23:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_retention"
down_revision: str | None = "0003_recovery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("originals_purged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("results_purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_column("results_purged_at")
        batch_op.drop_column("originals_purged_at")
        batch_op.drop_column("pinned")
