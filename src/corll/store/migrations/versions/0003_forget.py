"""Forgetting a user: retired policy versions, and a log of what each forget removed.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("policy_versions") as table:
        table.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("retired_reason", sa.Text, nullable=True))
    op.create_table(
        "forget_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("removed", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("forget_log")
    with op.batch_alter_table("policy_versions") as table:
        table.drop_column("retired_reason")
        table.drop_column("retired_at")
