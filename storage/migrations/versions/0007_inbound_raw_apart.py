"""inbound items' raw bytes move to a table of their own, written once and never updated

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_raw",
        sa.Column("inbound_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["inbound_id"],
            ["inbound.id"],
            name=op.f("fk_inbound_raw_inbound_id_inbound"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("inbound_id", name=op.f("pk_inbound_raw")),
    )
    op.execute("INSERT INTO inbound_raw (inbound_id, raw) SELECT id, raw FROM inbound")
    # In place, not by copying the table as batch mode does on SQLite: dropping the old
    # copy would break the foreign keys that messages and inbound_raw hold on its rows.
    with op.batch_alter_table("inbound", recreate="never") as batch_op:
        batch_op.drop_column("raw")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a NOT NULL column only with a default, and removing the default
        # would copy the table (see upgrade); every row gets its bytes just below.
        op.add_column(
            "inbound",
            sa.Column("raw", sa.LargeBinary(), nullable=False, server_default=sa.text("x''")),
        )
    else:
        op.add_column("inbound", sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.execute(
        "UPDATE inbound SET raw = "
        "(SELECT raw FROM inbound_raw WHERE inbound_raw.inbound_id = inbound.id)"
    )
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("inbound", "raw", nullable=False)
    op.drop_table("inbound_raw")
