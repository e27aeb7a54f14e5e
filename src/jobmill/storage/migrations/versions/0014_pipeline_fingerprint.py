"""PipelineJobs fingerprints: a UUID5 of what makes two creates the same job (its owner, type,
parameters and parents), unique, so a second create of the same job is reported as a duplicate
and two racing creates cannot both win; ``superseded_by`` names the re-run a fingerprint was
handed over to (issue 11). PipelineJobs created before have no fingerprint.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 02:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("superseded_by", sa.String(length=36), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_pipeline_jobs_fingerprint"), ["fingerprint"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("pipeline_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_jobs_fingerprint"))
        batch_op.drop_column("superseded_by")
        batch_op.drop_column("fingerprint")
