"""events outlive jobs: no foreign key from events to jobs, so deleting a job keeps its history

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_events_job_id_jobs"), type_="foreignkey")


def downgrade() -> None:
    # The key cannot hold the kept history of deleted jobs: it goes, as it did before.
    op.execute("DELETE FROM events WHERE job_id NOT IN (SELECT id FROM jobs)")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_foreign_key(
            op.f("fk_events_job_id_jobs"), "jobs", ["job_id"], ["id"], ondelete="CASCADE"
        )
