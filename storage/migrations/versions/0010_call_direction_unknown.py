"""a call's direction may be unknown until the event that says it is applied

Telnyx says which way a call goes only in its call.initiated event; its call.answered and
call.hangup carry no direction. When a hangup is applied before the call's initiated event
(delivered late, or again after a failure), the call is kept with its direction unknown,
rather than taken for an outbound call (which made a missed inbound call register nothing).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIRECTION = sa.Enum(
    "in", "out", name="call_direction", native_enum=False, create_constraint=True, length=32
)


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.alter_column("direction", existing_type=DIRECTION, nullable=True)


def downgrade() -> None:
    # A call whose direction never became known was not taken for an inbound one.
    op.execute("UPDATE calls SET direction = 'out' WHERE direction IS NULL")
    with op.batch_alter_table("calls") as batch:
        batch.alter_column("direction", existing_type=DIRECTION, nullable=False)
