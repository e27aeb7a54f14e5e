"""PipelineJobs curation status, history and event ids (issue: PipelineJobs)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_jobs",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("curation", sa.String(length=16), nullable=True),
        sa.Column("last_event", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("indexer_job", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_pipeline_jobs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_pipeline_jobs")),
    )
    with op.batch_alter_table("pipeline_jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pipeline_jobs_indexer_job"), ["indexer_job"], unique=False
        )
    op.create_table(
        "pipeline_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_pipeline_events")),
        sa.UniqueConstraint("uuid", name=op.f("uq_pipeline_events_uuid")),
    )
    with op.batch_alter_table("pipeline_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pipeline_events_job_id_seq"), ["job_id", "seq"], unique=False
        )

    op.create_table(
        "pipeline_nonces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("nonce_hash", sa.String(length=64), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_pipeline_nonces_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_nonces")),
        sa.UniqueConstraint("nonce_hash", name=op.f("uq_pipeline_nonces_nonce_hash")),
    )
    with op.batch_alter_table("pipeline_nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pipeline_nonces_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pipeline_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_nonces_job_id"))
    op.drop_table("pipeline_nonces")
    with op.batch_alter_table("pipeline_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_events_job_id_seq"))
    op.drop_table("pipeline_events")
    with op.batch_alter_table("pipeline_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_jobs_indexer_job"))
    op.drop_table("pipeline_jobs")
