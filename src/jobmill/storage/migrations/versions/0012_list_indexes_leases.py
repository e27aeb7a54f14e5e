"""job list indexes: lists filtered by phase alone (phase, seq) and by phase for one owner
(owner, phase, seq), newest first without a sort; the lease of each executor's engine

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 23:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=256), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_engine_leases")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_phase_seq"), ["phase", "seq"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_jobs_owner_phase_seq"), ["owner", "phase", "seq"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_owner_phase_seq"))
        batch_op.drop_index(batch_op.f("ix_jobs_phase_seq"))
    op.drop_table("engine_leases")
