"""job dependencies and sub-job links (issue: workflows)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_links",
        sa.Column("child", sa.String(length=36), nullable=False),
        sa.Column("parent", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["child"], ["jobs.id"], name=op.f("fk_job_links_child_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent"], ["jobs.id"], name=op.f("fk_job_links_parent_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("child", "parent", name=op.f("pk_job_links")),
    )
    with op.batch_alter_table("job_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_links_parent"), ["parent"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("upstream_pending", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("on_parent_failure", sa.String(length=8), nullable=True))
        batch_op.add_column(
            sa.Column("children_pending", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("stage", sa.String(length=8), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_token_hash"), ["token_hash"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_token_hash"))
        batch_op.drop_index(batch_op.f("ix_jobs_parent_id"))
        batch_op.drop_column("stage")
        batch_op.drop_column("children_pending")
        batch_op.drop_column("on_parent_failure")
        batch_op.drop_column("upstream_pending")
    with op.batch_alter_table("job_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_links_parent"))
    op.drop_table("job_links")
