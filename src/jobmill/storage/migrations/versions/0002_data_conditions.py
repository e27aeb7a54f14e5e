"""data conditions: what jobs waiting for data wait for

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 23:22:23.077633
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_conditions",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("paths", sa.JSON(), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("marker", sa.Boolean(), nullable=False),
        sa.Column("stable_seconds", sa.Float(), nullable=True),
        sa.Column("timeout", sa.Float(), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("key_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_data_conditions_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_data_conditions")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_data_conditions_key_hash")),
    )


def downgrade() -> None:
    op.drop_table("data_conditions")
