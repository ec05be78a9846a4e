"""The inbound store as the call-event worker uses it: a batch of webhooks kept and marked
in a few Core statements.

The same states as :mod:`storage.inbound`, whose :func:`~storage.inbound.claim` the worker
uses too; here a batch costs two INSERTs to keep, and to mark it one UPDATE for the items
that share an outcome (one per item only for those with a ticket of their own), instead
of statements and an ORM object per item.
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
# Items are marked by the batch: one UPDATE for those that share their values (id IN …),
# rather than a statement per item; only items with a ticket each have values of their own.
_MARK_DONE = (
    update(INBOUND)
    .where(INBOUND.c.id.in_(bindparam("item_ids", expanding=True)))
    .values(
        state=InboundState.DONE,
        ticket_id=None,
        error=None,
        next_attempt_at=None,
        processed_at=bindparam("at"),
    )
)
_MARK_DONE_WITH_TICKET = (
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
    .where(INBOUND.c.id.in_(bindparam("item_ids", expanding=True)))
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
    if not items:
        return
    now = utcnow()
    connection = session.connection()
    plain = [item_id for item_id, ticket in items if ticket is None]
    if plain:
        connection.execute(_MARK_DONE, {"item_ids": plain, "at": now})
    with_ticket = [
        {"item_id": item_id, "done_ticket_id": ticket, "at": now}
        for item_id, ticket in items
        if ticket is not None
    ]
    if with_ticket:
        connection.execute(_MARK_DONE_WITH_TICKET, with_ticket)


def ignored(session: Session, items: Sequence[tuple[int, str]]) -> None:
    """Set items aside on purpose, each with the reason recorded."""
    if not items:
        return
    now = utcnow()
    by_reason: dict[str, list[int]] = {}
    for item_id, reason in items:
        by_reason.setdefault(reason, []).append(item_id)
    connection = session.connection()
    # Most reasons are an adapter's fixed wording: the items that share one share a statement.
    for reason, item_ids in by_reason.items():
        connection.execute(
            _MARK_IGNORED, {"item_ids": item_ids, "ignored_reason": reason, "at": now}
        )
