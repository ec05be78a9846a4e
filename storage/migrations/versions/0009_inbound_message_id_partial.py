"""only inbound items that have a Message-ID are in the Message-ID index

Call events and mails without a Message-ID were each an entry of the index with a NULL
that no question asks for (every question names a Message-ID: "= ?" or "IN (...)", which
both SQLite and PostgreSQL know only a row with one can answer). Each such entry was one
more page for every commit of the webhooks' group commit to write.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_ONE = sa.text("message_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_inbound_message_id", table_name="inbound")
    op.create_index(
        "ix_inbound_message_id",
        "inbound",
        ["message_id", "source"],
        sqlite_where=HAS_ONE,
        postgresql_where=HAS_ONE,
    )


def downgrade() -> None:
    op.drop_index("ix_inbound_message_id", table_name="inbound")
    op.create_index("ix_inbound_message_id", "inbound", ["message_id", "source"])
