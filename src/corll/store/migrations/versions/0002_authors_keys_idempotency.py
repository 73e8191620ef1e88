"""Feedback authors, admin / expiring / revocable keys, idempotent feedback writes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
        table.add_column(sa.Column("prefix", sa.String(16), nullable=True))
        table.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("feedback_events") as table:
        table.add_column(sa.Column("author", sa.String(128), nullable=True))  # NULL: logged before authors
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(260), primary_key=True),  # tenant/user of the key that sent it
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("feedback_events") as table:
        table.drop_column("author")
    with op.batch_alter_table("api_keys") as table:
        for column in ("revoked_at", "expires_at", "prefix", "admin"):
            table.drop_column(column)
