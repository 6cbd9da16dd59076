"""Watches (checkpoint sources scanned on a schedule) and the checkpoints each has submitted.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watches",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("source_kind", sa.String(8), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("pattern", sa.String(255), nullable=True),
        sa.Column("pattern_kind", sa.String(8), nullable=False),
        sa.Column("tasks", sa.JSON, nullable=False),
        sa.Column("template", sa.JSON, nullable=False),
        sa.Column("interval_s", sa.Float, nullable=True),
        sa.Column("cron", sa.String(128), nullable=True),
        sa.Column("quiet_s", sa.Float, nullable=False),
        sa.Column("marker", sa.String(128), nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("next_run_at", sa.Float, nullable=False),
        sa.Column("last_run_at", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_watches_due", "watches", ["enabled", "next_run_at"])
    op.create_table(
        "watch_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("watch_id", sa.String(36), sa.ForeignKey("watches.id", ondelete="CASCADE"), nullable=False),
        sa.Column("checkpoint", sa.String(255), nullable=False),
        sa.Column("step", sa.Integer, nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("watch_id", "fingerprint", "task", name="uq_watch_checkpoints_key"),
    )
    op.create_index("ix_watch_checkpoints_watch_id", "watch_checkpoints", ["watch_id"])


def downgrade() -> None:
    op.drop_table("watch_checkpoints")
    op.drop_table("watches")
