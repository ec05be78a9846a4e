"""The inbound store as the call-event worker uses it: claims and marks in a few Core
statements per batch.

The same states and lease as :mod:`storage.inbound` (which the mail pipeline uses with ORM
items); here a batch of webhooks costs one SELECT and one UPDATE to claim and one UPDATE
per outcome to mark, instead of a statement and an ORM object per item.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import BindParameter, Select, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from storage.inbound import DEFAULT_LEASE
from storage.models import InboundItem, InboundState, utcnow

INBOUND = InboundItem.metadata.tables["inbound"]


class Claimed(NamedTuple):
    """A claimed item: what the worker needs of it, no ORM object."""

    id: int
    source: str
    source_ref: str
    raw: bytes
    attempts: int


def claim(
    session: Session,
    *,
    sources: Sequence[str],
    limit: int,
    now: dt.datetime | None = None,
    lease: dt.timedelta = DEFAULT_LEASE,
) -> list[Claimed]:
    """What :func:`storage.inbound.claim` does for these sources exactly, in a few
    statements: the due items in the order they arrived, ``processing`` until the lease ends.

    New items and items due again are looked for apart: asked for together, SQLite reads
    every pending item (the whole backlog, under load) to sort them by id; asked for alone,
    new items come from the claim index in id order, and the others are few."""
    now = now or utcnow()
    connection = session.connection()
    fresh, again = _due(connection.dialect.name, limit, tuple(sources))
    rows = [*connection.execute(fresh), *connection.execute(again, {"now": now})]
    if not rows:
        return []
    rows.sort(key=lambda row: row.id)
    del rows[limit:]
    connection.execute(_MARK_CLAIMED, {"ids": [row.id for row in rows], "until": now + lease})
    return [Claimed(row.id, row.source, row.source_ref, row.raw, row.attempts + 1) for row in rows]


@functools.lru_cache(maxsize=32)
def _due(dialect: str, limit: int, sources: tuple[str, ...]) -> tuple[Select[Any], Select[Any]]:
    """New items (pending, never tried), and items due again (failed, their lease run out)."""
    now: BindParameter[dt.datetime] = bindparam("now")
    columns = select(
        INBOUND.c.id, INBOUND.c.source, INBOUND.c.source_ref, INBOUND.c.raw, INBOUND.c.attempts
    )
    fresh = columns.where(
        INBOUND.c.state == InboundState.PENDING, INBOUND.c.next_attempt_at.is_(None)
    )
    again = columns.where(
        or_(
            and_(
                INBOUND.c.state.in_([InboundState.FAILED, InboundState.PROCESSING]),
                or_(INBOUND.c.next_attempt_at.is_(None), INBOUND.c.next_attempt_at <= now),
            ),
            and_(INBOUND.c.state == InboundState.PENDING, INBOUND.c.next_attempt_at <= now),
        )
    )
    statements = []
    for stmt in (fresh, again):
        # As in storage.inbound: an expression keeps SQLite's planner on the claim index
        # rather than the (source, source_ref) one, which walks every item ever stored.
        stmt = (
            stmt.where(INBOUND.c.source.concat("").in_(list(sources)))
            .order_by(INBOUND.c.id)
            .limit(limit)
        )
        if dialect == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        statements.append(stmt)
    return statements[0], statements[1]


_MARK_CLAIMED = (
    update(INBOUND)
    .where(INBOUND.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        state=InboundState.PROCESSING,
        attempts=INBOUND.c.attempts + 1,
        next_attempt_at=bindparam("until"),
    )
)
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
