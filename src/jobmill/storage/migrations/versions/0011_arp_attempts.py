"""ARP: re-applying a definition to a run keeps the history (attempts); experiment ids

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("name", name=op.f("uq_experiments_name")),
    )
    # every experiment already known gets its id, in the order it first appeared
    op.execute(
        """
        INSERT INTO experiments (name, created_at)
        SELECT experiment, MIN(created_at) FROM (
            SELECT experiment, created_at FROM experiment_definitions
            UNION ALL
            SELECT experiment, created_at FROM experiment_applications
            UNION ALL
            SELECT experiment, COALESCE(started_at, ended_at, CURRENT_TIMESTAMP)
            FROM experiment_runs
        ) AS known
        GROUP BY experiment
        ORDER BY MIN(created_at), experiment
        """
    )
    with op.batch_alter_table("experiment_applications") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
        batch.drop_constraint(
            "uq_experiment_applications_experiment_run_definition", type_="unique"
        )
        batch.create_unique_constraint(
            "uq_experiment_applications_experiment_run_definition_attempt",
            ["experiment", "run", "definition", "attempt"],
        )


def downgrade() -> None:
    # only the latest attempt of each (experiment, run, definition) stays in the run view
    op.execute(
        """
        DELETE FROM experiment_applications WHERE attempt < (
            SELECT MAX(a.attempt) FROM experiment_applications AS a
            WHERE a.experiment = experiment_applications.experiment
              AND a.run = experiment_applications.run
              AND a.definition = experiment_applications.definition
        )
        """
    )
    with op.batch_alter_table("experiment_applications") as batch:
        batch.drop_constraint(
            "uq_experiment_applications_experiment_run_definition_attempt", type_="unique"
        )
        batch.create_unique_constraint(
            "uq_experiment_applications_experiment_run_definition",
            ["experiment", "run", "definition"],
        )
        batch.drop_column("attempt")
    op.drop_table("experiments")
