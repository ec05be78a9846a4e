"""a call's legs: the calls that share its call id (Telnyx), or its child calls (Twilio)

Telnyx numbers one call session (call_session_id) for all its legs: the caller's, and a
leg for each transfer. The events of every leg were applied to the one call, so that a
transfer leg that failed (nobody answered) ended the caller's call while it went on. Each
leg's events are now kept by leg (``legs``), and the call is what they say together. An
ended call whose other legs are still awaited is told to the desk at ``tell_at``.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("legs", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("tell_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(batch.f("ix_calls_tell_at"), ["tell_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_index(batch.f("ix_calls_tell_at"))
        batch.drop_column("tell_at")
        batch.drop_column("legs")
