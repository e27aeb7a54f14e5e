"""job tags carry their job's seq: a list filtered by a tag reads the index (tag, seq) newest
first, a page of rows whatever the tag's share of the jobs (issue 13, item 5)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 02:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_tags", sa.Column("seq", sa.Integer(), nullable=True))
    # The existing tags take the seq of their job (every tag has one: ON DELETE CASCADE).
    op.execute(
        "UPDATE job_tags SET seq = (SELECT jobs.seq FROM jobs WHERE jobs.id = job_tags.job_id)"
    )
    op.execute("DELETE FROM job_tags WHERE seq IS NULL")
    with op.batch_alter_table("job_tags", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_index(batch_op.f("ix_job_tags_tag_job_id"))
        batch_op.create_index(batch_op.f("ix_job_tags_tag_seq"), ["tag", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_tags_tag_seq"))
        batch_op.create_index(batch_op.f("ix_job_tags_tag_job_id"), ["tag", "job_id"], unique=False)
        batch_op.drop_column("seq")
