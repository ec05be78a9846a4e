"""The inbound store: every received raw item, written before its source acknowledges it.

A source calls :func:`store` and commits, and only then answers its peer (SMTP 250, IMAP
\\Seen, HTTP 2xx). Pipeline workers :func:`claim` items with a lease, process each in its
own transaction that also marks it :func:`done` or :func:`ignored`, and on an error call
:func:`failed`, which schedules a retry with backoff or quarantines the item after the
last attempt. A worker that dies mid-item leaves a lease that runs out, and the item is
claimed again; because the desk's work and the item's ``done`` commit together, no item is
registered twice.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BindParameter, Select, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from storage.models import InboundItem, InboundState, utcnow

DEFAULT_LEASE = dt.timedelta(minutes=5)


class InboundError(LookupError):
    """An inbound item that does not exist or is not in a state for what was asked."""


@dataclass(frozen=True)
class Stored:
    id: int
    duplicate: bool


def store(
    session: Session,
    *,
    source: str,
    source_ref: str,
    raw: bytes,
    message_id: str | None = None,
    received_at: dt.datetime | None = None,
) -> Stored:
    """Write a received item once; a second delivery of the same reference is a duplicate."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(InboundItem)
        .values(
            source=source,
            source_ref=source_ref,
            raw=raw,
            size=len(raw),
            message_id=message_id,
            received_at=received_at or utcnow(),
            state=InboundState.PENDING,
            attempts=0,
        )
        .on_conflict_do_nothing(index_elements=["source", "source_ref"])
        .returning(InboundItem.id)
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    if new_id is not None:
        return Stored(new_id, duplicate=False)
    existing = session.scalars(
        select(InboundItem.id).where(
            InboundItem.source == source, InboundItem.source_ref == source_ref
        )
    ).one()
    return Stored(existing, duplicate=True)


def claim(
    session: Session,
    *,
    now: dt.datetime | None = None,
    limit: int = 1,
    lease: dt.timedelta = DEFAULT_LEASE,
    sources: Collection[str] | None = None,
    channels: Collection[str] | None = None,
    max_bytes: int | None = None,
) -> Sequence[InboundItem]:
    """Take up to ``limit`` items that are due: pending, failed and due again, or whose
    previous worker's lease ran out. They are ``processing`` until the lease ends.

    ``sources`` names sources exactly (``telephony:twilio``); ``channels`` names families of
    them (``imap`` is every ``imap:<mailbox>``), so each worker takes only what it reads.
    ``max_bytes`` bounds the raw bytes taken at once (the first item is taken whatever its
    size): a batch of large mails must not all sit in memory together."""
    now = now or utcnow()
    dialect = session.get_bind().dialect.name
    stmt = _due_items(
        dialect,
        limit,
        tuple(sources) if sources is not None else None,
        tuple(channels) if channels is not None else None,
    )
    taken: list[dict[str, Any]] = []
    until = now + lease
    total = 0
    for item_id, attempts, size in session.execute(stmt, {"now": now}):
        total += size
        if taken and max_bytes is not None and total > max_bytes:
            break
        taken.append({"item_id": item_id, "new_attempts": attempts + 1, "until": until})
    if not taken:
        return []
    session.execute(_MARK_CLAIMED, taken)
    return session.scalars(_CLAIMED_ITEMS, {"item_ids": [t["item_id"] for t in taken]}).all()


@functools.lru_cache(maxsize=64)
def _due_items(
    dialect: str,
    limit: int,
    sources: tuple[str, ...] | None,
    channels: tuple[str, ...] | None,
) -> Select[int, int, int]:
    """The claim's query, built once per shape: building it cost more than running it.
    It reads (id, attempts, size), without the raw bytes, which only the items taken need."""
    now: BindParameter[dt.datetime] = bindparam("now")
    due = or_(InboundItem.next_attempt_at.is_(None), InboundItem.next_attempt_at <= now)
    stmt = (
        select(InboundItem.id, InboundItem.attempts, InboundItem.size)
        .where(
            InboundItem.state.in_(
                [InboundState.PENDING, InboundState.FAILED, InboundState.PROCESSING]
            ),
            due,
        )
        .order_by(InboundItem.id)
        .limit(limit)
    )
    if sources is not None:
        # Filtering on an expression (`source || ''`) keeps SQLite's planner off the
        # (source, source_ref) unique index, which walks every item the source ever stored;
        # the claim index walks only the few that are due.
        stmt = stmt.where(InboundItem.source.concat("").in_(list(sources)))
    if channels is not None:
        stmt = stmt.where(
            or_(
                InboundItem.source.in_(list(channels)),
                *(InboundItem.source.startswith(f"{channel}:") for channel in channels),
            )
        )
    if dialect == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return stmt


_CLAIMED_ITEMS = (
    select(InboundItem)
    .where(InboundItem.id.in_(bindparam("item_ids", expanding=True)))
    .order_by(InboundItem.id)
    # An item this session loaded before must show the claim just written.
    .execution_options(populate_existing=True)
)


_INBOUND = InboundItem.metadata.tables["inbound"]
_MARK_CLAIMED = (
    update(_INBOUND)
    .where(_INBOUND.c.id == bindparam("item_id"))
    .values(
        state=InboundState.PROCESSING,
        attempts=bindparam("new_attempts"),
        next_attempt_at=bindparam("until"),
    )
)
_MARK_DONE = (
    update(_INBOUND)
    .where(_INBOUND.c.id == bindparam("item_id"))
    .values(
        state=InboundState.DONE,
        ticket_id=bindparam("done_ticket_id"),
        error=None,
        next_attempt_at=None,
        processed_at=bindparam("done_at"),
    )
)
_MARK_IGNORED = (
    update(_INBOUND)
    .where(_INBOUND.c.id == bindparam("item_id"))
    .values(
        state=InboundState.IGNORED,
        reason=bindparam("reason"),
        ticket_id=bindparam("ignored_ticket_id"),
        error=None,
        next_attempt_at=None,
        processed_at=bindparam("ignored_at"),
    )
)


def _written(item: InboundItem, **values: Any) -> None:
    """Tell the loaded item what an UPDATE just wrote, without it being flushed again."""
    for name, value in values.items():
        set_committed_value(item, name, value)


def done(session: Session, item: InboundItem, *, ticket_id: int | None) -> None:
    now = utcnow()
    session.execute(_MARK_DONE, {"item_id": item.id, "done_ticket_id": ticket_id, "done_at": now})
    _written(
        item,
        state=InboundState.DONE,
        ticket_id=ticket_id,
        error=None,
        next_attempt_at=None,
        processed_at=now,
    )


def ignored(
    session: Session, item: InboundItem, *, reason: str, ticket_id: int | None = None
) -> None:
    """Set aside on purpose (auto-reply, bounce, loop …), with the reason recorded, and the
    ticket it concerns if any (the one a duplicate or a bounce belongs to)."""
    now = utcnow()
    session.execute(
        _MARK_IGNORED,
        {"item_id": item.id, "reason": reason, "ignored_ticket_id": ticket_id, "ignored_at": now},
    )
    _written(
        item,
        state=InboundState.IGNORED,
        reason=reason,
        ticket_id=ticket_id,
        error=None,
        next_attempt_at=None,
        processed_at=now,
    )


def backoff(attempts: int, *, base: float = 30.0, cap: float = 3600.0) -> dt.timedelta:
    """30 s, 60 s, 2 min … capped at an hour."""
    return dt.timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), cap))


def failed(
    session: Session,
    item_id: int,
    *,
    error: str,
    max_attempts: int,
    now: dt.datetime | None = None,
) -> InboundState:
    """Record a processing error; retry later, or quarantine after ``max_attempts``."""
    now = now or utcnow()
    item = session.get(InboundItem, item_id, with_for_update=True)
    if item is None:
        raise InboundError(f"no inbound item {item_id}")
    item.error = error
    if item.attempts >= max_attempts:
        item.state = InboundState.QUARANTINED
        item.next_attempt_at = None
    else:
        item.state = InboundState.FAILED
        item.next_attempt_at = now + backoff(item.attempts)
    session.flush()
    return item.state


def retry(session: Session, item_id: int) -> InboundItem:
    """Put a quarantined, failed or ignored item back in the queue, with fresh attempts."""
    item = session.get(InboundItem, item_id, with_for_update=True)
    if item is None:
        raise InboundError(f"no inbound item {item_id}")
    if item.state in (InboundState.DONE, InboundState.PENDING, InboundState.PROCESSING):
        raise InboundError(f"inbound item {item_id} is {item.state.value}; nothing to retry")
    item.state = InboundState.PENDING
    item.attempts = 0
    item.next_attempt_at = None
    session.flush()
    return item


def retry_quarantined(session: Session) -> int:
    result = session.execute(
        update(InboundItem)
        .where(InboundItem.state == InboundState.QUARANTINED)
        .values(state=InboundState.PENDING, attempts=0, next_attempt_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
