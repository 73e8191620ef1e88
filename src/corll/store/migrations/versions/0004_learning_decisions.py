"""Learning while serving: the learner's decisions (promoted, rejected, rollback) and workers' states.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("seen_through", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_decisions_lineage", "decisions", ["tenant", "user"])
    op.create_table(
        "worker_states",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_states")
    op.drop_index("ix_decisions_lineage", "decisions")
    op.drop_table("decisions")
