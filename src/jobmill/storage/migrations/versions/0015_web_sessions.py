"""web sessions and one-time sign-in links in the database, shared by every process of a site
(``jobmill serve --workers``) and kept across restarts: hashes of the session ids and link
codes, and the token row each was opened with, never a token (issue 13, item 1)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 03:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["tokens.id"],
            name=op.f("fk_web_sessions_token_id_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_web_sessions")),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_expires_at"), ["expires_at"])
        batch_op.create_index(batch_op.f("ix_web_sessions_token_id"), ["token_id"])
    op.create_table(
        "web_signin_links",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["tokens.id"],
            name=op.f("fk_web_signin_links_token_id_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_web_signin_links")),
    )
    with op.batch_alter_table("web_signin_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_signin_links_expires_at"), ["expires_at"])


def downgrade() -> None:
    op.drop_table("web_signin_links")
    op.drop_table("web_sessions")
