"""job indexes: the engine's claim (phase, executor, reason, seq) and phase-filtered job lists
(type, phase, seq); (phase, executor) is a prefix of the first and goes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 02:20:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_jobs_phase_executor_reason_seq"),
            ["phase", "executor", "reason", "seq"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_jobs_type_phase_seq"), ["type", "phase", "seq"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_jobs_phase_executor"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_jobs_phase_executor"), ["phase", "executor"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_jobs_type_phase_seq"))
        batch_op.drop_index(batch_op.f("ix_jobs_phase_executor_reason_seq"))
