"""Tenants: admin tokens (see every owner's jobs, circuits and watches) and each token's secret for
signing its jobs' callbacks.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("callback_secret", sa.String(128), nullable=True))
    op.create_index("ix_jobs_owner_seq", "jobs", ["owner", "seq"])
    op.create_index("ix_watches_owner", "watches", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_watches_owner", "watches")
    op.drop_index("ix_jobs_owner_seq", "jobs")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("callback_secret")
        batch.drop_column("admin")
