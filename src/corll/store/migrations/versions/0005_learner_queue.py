"""The learner pool's queue: an index to read one lineage's edits, and what each worker reports
(the lineage it trains, the queue it sees).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("ix_interactions_tenant_user", "interactions", ["tenant", "user"])
    with op.batch_alter_table("worker_states") as table:
        table.add_column(sa.Column("lineage", sa.String(260), nullable=True))
        table.add_column(sa.Column("queue", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_states") as table:
        table.drop_column("queue")
        table.drop_column("lineage")
    op.drop_index("ix_interactions_tenant_user", "interactions")
