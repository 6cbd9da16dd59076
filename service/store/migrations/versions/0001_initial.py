"""The first schema: jobs and their events, circuits with nodes/edges/labels, artifacts, API tokens.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("max_active_jobs", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "jobs",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("revision", sa.String(255), nullable=True),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("callback_url", sa.String(2048), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
        sa.Column("not_before", sa.Float, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("circuit_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )
    op.create_index("ix_jobs_claim", "jobs", ["status", "not_before", "seq"])
    op.create_index("ix_jobs_owner_status", "jobs", ["owner", "status"])
    op.create_index("ix_jobs_lease", "jobs", ["status", "lease_expires_at"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])
    op.create_table(
        "artifacts",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("encoding", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "circuits",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=False, unique=True),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("revision", sa.String(255), nullable=True),
        sa.Column("model_type", sa.String(64), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("task_hash", sa.String(64), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("code_version", sa.String(128), nullable=False),
        sa.Column("n_edges", sa.Integer, nullable=False),
        sa.Column("n_nodes", sa.Integer, nullable=False),
        sa.Column("faithfulness", sa.Float, nullable=True),
        sa.Column("labeled", sa.Boolean, nullable=False),
        sa.Column("artifact_sha256", sa.String(64), sa.ForeignKey("artifacts.sha256"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_circuits_lookup", "circuits", ["model", "revision", "task", "method"])
    op.create_table(
        "circuit_nodes",
        sa.Column("circuit_id", sa.String(36), sa.ForeignKey("circuits.id"), primary_key=True),
        sa.Column("node", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("layer", sa.Integer, nullable=True),
        sa.Column("head", sa.Integer, nullable=True),
        sa.Column("in_circuit", sa.Boolean, nullable=False),
    )
    op.create_index("ix_circuit_nodes_node", "circuit_nodes", ["node", "in_circuit"])
    op.create_table(
        "circuit_edges",
        sa.Column("circuit_id", sa.String(36), sa.ForeignKey("circuits.id"), primary_key=True),
        sa.Column("name", sa.String(96), primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("slot", sa.String(8), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
    )
    op.create_index("ix_circuit_edges_source_target", "circuit_edges", ["source", "target"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("circuit_id", sa.String(36), sa.ForeignKey("circuits.id"), nullable=False),
        sa.Column("component", sa.String(64), nullable=False),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("role_tags", sa.JSON, nullable=False),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("record", sa.JSON, nullable=False),
    )
    op.create_index("ix_labels_circuit_id", "labels", ["circuit_id"])


def downgrade() -> None:
    for table in ("labels", "circuit_edges", "circuit_nodes", "circuits", "artifacts", "job_events", "jobs",
                  "api_tokens"):
        op.drop_table(table)
