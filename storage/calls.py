"""The inbound store as the call-event worker uses it: a batch of webhooks kept and marked
in a few Core statements.

The same states as :mod:`storage.inbound`, whose :func:`~storage.inbound.claim` the worker
uses too; here a batch costs two INSERTs to keep and one UPDATE per outcome to mark,
instead of statements and an ORM object per item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.inbound import INBOUND, write_raw
from storage.models import InboundState, utcnow


def store(session: Session, rows: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """What :func:`storage.inbound.store` does, for a batch: each row is the item's columns
    and its ``raw`` bytes. The (source, source_ref) of the items new here; the others are
    duplicates."""
    raws: dict[tuple[str, str], bytes] = {}
    for row in rows:
        # The first of a reference repeated in the batch is the one inserted.
        raws.setdefault((row["source"], row["source_ref"]), row["raw"])
    connection = session.connection()
    new = connection.execute(
        _STORE[connection.dialect.name],
        [{name: value for name, value in row.items() if name != "raw"} for row in rows],
    ).all()
    write_raw(connection, {row.id: raws[(row.source, row.source_ref)] for row in new})
    return {(row.source, row.source_ref) for row in new}


_STORE = {
    name: dialect.insert(INBOUND)
    .on_conflict_do_nothing(index_elements=["source", "source_ref"])
    .returning(INBOUND.c.id, INBOUND.c.source, INBOUND.c.source_ref)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
_MARK_DONE = (
    update(INBOUND)
    .where(INBOUND.c.id == bindparam("item_id"))
    .values(
        state=InboundState.DONE,
        ticket_id=bindparam("done_ticket_id"),
        error=None,
        next_attempt_at=None,
        processed_at=bindparam("at"),
    )
)
_MARK_IGNORED = (
    update(INBOUND)
    .where(INBOUND.c.id == bindparam("item_id"))
    .values(
        state=InboundState.IGNORED,
        reason=bindparam("ignored_reason"),
        error=None,
        next_attempt_at=None,
        processed_at=bindparam("at"),
    )
)


def done(session: Session, items: Sequence[tuple[int, int | None]]) -> None:
    """Mark items done, each with the ticket its events touched (or None)."""
    if items:
        now = utcnow()
        session.connection().execute(
            _MARK_DONE,
            [
                {"item_id": item_id, "done_ticket_id": ticket, "at": now}
                for item_id, ticket in items
            ],
        )


def ignored(session: Session, items: Sequence[tuple[int, str]]) -> None:
    """Set items aside on purpose, each with the reason recorded."""
    if items:
        now = utcnow()
        session.connection().execute(
            _MARK_IGNORED,
            [
                {"item_id": item_id, "ignored_reason": reason, "at": now}
                for item_id, reason in items
            ],
        )
