"""Online canaries: a candidate that passed the offline gate serves a share of its lineage's drafts until
its users' edits decide; every look at the evidence is kept.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "canaries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=False),
        sa.Column("control_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=True),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("alpha", sa.Float, nullable=False),
        sa.Column("budget", sa.Integer, nullable=False),
        sa.Column("seen_through", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_canaries_lineage", "canaries", ["tenant", "user", "state"])
    op.create_table(
        "canary_looks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("canary_id", sa.Integer, sa.ForeignKey("canaries.id"), nullable=False),
        sa.Column("candidate", sa.Integer, nullable=False),
        sa.Column("control", sa.Integer, nullable=False),
        sa.Column("wins", sa.Integer, nullable=False),
        sa.Column("losses", sa.Integer, nullable=False),
        sa.Column("ties", sa.Integer, nullable=False),
        sa.Column("better", sa.Float, nullable=False),
        sa.Column("worse", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_canary_looks_canary_id", "canary_looks", ["canary_id"])


def downgrade() -> None:
    op.drop_index("ix_canary_looks_canary_id", "canary_looks")
    op.drop_table("canary_looks")
    op.drop_index("ix_canaries_lineage", "canaries")
    op.drop_table("canaries")
