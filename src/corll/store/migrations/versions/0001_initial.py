"""The first schema: API keys, policy versions, interactions, feedback events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=True),
        sa.Column("adapter_path", sa.Text, nullable=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "interactions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("policy_version_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=True),
        sa.Column("sampling", sa.JSON, nullable=False),
        sa.Column("response_logprob", sa.Float, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_interactions_tenant_created", "interactions", ["tenant", "created_at"])
    op.create_table(
        "feedback_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("interaction_id", sa.String(64), sa.ForeignKey("interactions.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("edit", sa.Text, nullable=True),
        sa.Column("reaction", sa.String(16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_feedback_events_interaction_id", "feedback_events", ["interaction_id"])


def downgrade() -> None:
    op.drop_table("feedback_events")
    op.drop_table("interactions")
    op.drop_table("policy_versions")
    op.drop_table("api_keys")
