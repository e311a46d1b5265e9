"""dashboard sessions kept server-side, so logout revokes a copied cookie

Revision ID: 0002_dashboard_session
Revises: 0001
Create Date: 2026-12-04 23:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_dashboard_session"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dashboard_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["app_user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    with op.batch_alter_table("dashboard_session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dashboard_session_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_dashboard_session_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dashboard_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_session_expires_at"))
        batch_op.drop_index(batch_op.f("ix_dashboard_session_user_id"))
    op.drop_table("dashboard_session")
