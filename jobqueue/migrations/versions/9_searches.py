"""Searches and their trials; a job may belong to a search and pause at an epoch limit (its
trial's rung) until the search resumes or ends it.

Revision 9, after 8.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "9"
down_revision = "8"
branch_labels = None
depends_on = None

_time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "searches",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _time, nullable=False),
        sa.Column("finished_at", _time, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("confirmations", sa.JSON(), nullable=True),
        sa.Column("seeds", sa.JSON(), nullable=True),
        sa.Index("ix_searches_created_id", "created_at", "id"),
        sa.Index("ix_searches_owner_created_id", "owner", "created_at", "id"),
        sa.Index("ix_searches_status", "status"),
    )
    op.create_table(
        "search_trials",
        sa.Column(
            "search_id",
            sa.String(32),
            sa.ForeignKey("searches.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("number", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(32), nullable=True, unique=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("sampler_attrs", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rung", sa.Integer(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _time, nullable=False),
    )
    # Plain ADD COLUMN: a batch rebuild of jobs would drop the job-count triggers.
    op.add_column("jobs", sa.Column("epoch_limit", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("search_id", sa.String(32), nullable=True))
    op.create_index("ix_jobs_search", "jobs", ["search_id"])


def downgrade() -> None:
    raise NotImplementedError("tricklab does not downgrade: restore a backup instead")
