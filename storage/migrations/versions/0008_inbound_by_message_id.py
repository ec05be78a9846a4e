"""inbound items are found by Message-ID alone: the index leads with it

A reply waits for the mail it answers while that mail is still in the inbound store, and a
mail waits for the same mail received earlier through another source; both ask by
Message-ID across sources. The IMAP source's question (this mailbox, this Message-ID) is
served as well by the index in the other order.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_inbound_source_message_id", table_name="inbound")
    op.create_index("ix_inbound_message_id", "inbound", ["message_id", "source"])


def downgrade() -> None:
    op.drop_index("ix_inbound_message_id", table_name="inbound")
    op.create_index("ix_inbound_source_message_id", "inbound", ["source", "message_id"])
