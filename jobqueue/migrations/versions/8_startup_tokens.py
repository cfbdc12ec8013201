"""The admin's start-up tokens are marked as such (tokens.startup_source) instead of being told
apart by their name, which any token may have; dashboard sessions are found by when they were
revoked, so that old ones are deleted through an index.

Revision 8, after 7.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "8"
down_revision = "7"
branch_labels = None
depends_on = None

# accounts.ADMIN_TOKEN_SOURCES and models.ADMIN as they stand at this revision.
_SOURCES = ("TRICKLAB_ADMIN_TOKEN", "admin-token file")
_ADMIN = "admin"


def upgrade() -> None:
    op.add_column("tokens", sa.Column("startup_source", sa.String(length=32), nullable=True))
    op.create_index("ix_sessions_revoked_at", "sessions", ["revoked_at"])
    # Until now the admin's tokens named after a start-up source were taken for ones: marking
    # them keeps the next start replacing them, so that a value changed along with this upgrade
    # still ends the old token.
    tokens = sa.table(
        "tokens", sa.column("user_id"), sa.column("name"), sa.column("startup_source")
    )
    users = sa.table("users", sa.column("id"), sa.column("name"))
    admin = sa.select(users.c.id).where(users.c.name == _ADMIN).scalar_subquery()
    op.execute(
        tokens.update()
        .where(tokens.c.name.in_(_SOURCES), tokens.c.user_id == admin)
        .values(startup_source=tokens.c.name)
    )


def downgrade() -> None:
    raise NotImplementedError("tricklab does not downgrade: restore a backup instead")
