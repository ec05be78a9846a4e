"""journal is append-only in the database too

The ORM refuses to change journal rows; these triggers refuse it for any other client
(raw SQL, a Core update, a console), so the record of what staff did cannot be rewritten.
A later batch migration that recreates the journal table on SQLite must recreate them.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE = "journal entries are append-only"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION journal_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal "
            "FOR EACH ROW EXECUTE FUNCTION journal_append_only()"
        )
        return
    for event in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER journal_append_only_{event.lower()} BEFORE {event} ON journal "
            f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER journal_append_only ON journal")
        op.execute("DROP FUNCTION journal_append_only()")
        return
    for event in ("update", "delete"):
        op.execute(f"DROP TRIGGER journal_append_only_{event}")
