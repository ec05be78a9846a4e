"""The inbound store: every received raw item, written before its source acknowledges it.

A source calls :func:`store` and commits, and only then answers its peer (SMTP 250, IMAP
\\Seen, HTTP 2xx). Pipeline workers :func:`claim` items with a lease, process each in a
transaction that also marks it (:func:`done_batch`, :func:`ignored_batch`), and on an
error call :func:`failed`, which schedules a retry with backoff or quarantines the item
after the last attempt. A worker that dies mid-item leaves a lease that runs out, and the
item is claimed again; because the desk's work and the item's ``done`` commit together, no
item is registered twice.

The raw bytes are kept in a table of their own (``inbound_raw``), written once and never
updated; claims and outcomes touch only the item's small row, and the raw bytes are read
for the items taken (:func:`raw_of`, :func:`items`).
"""

from __future__ import annotations

import datetime as dt
import functools
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    BindParameter,
    Connection,
    Row,
    Select,
    and_,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from storage.models import InboundItem, InboundRaw, InboundState, utcnow

DEFAULT_LEASE = dt.timedelta(minutes=5)
# Raw bytes up to this size are written as a bound parameter; larger ones in place (store).
RAW_PIECE = 1024 * 1024


class InboundError(LookupError):
    """An inbound item that does not exist or is not in a state for what was asked."""


@dataclass(frozen=True)
class Stored:
    id: int
    duplicate: bool


class Claimed(NamedTuple):
    """A claimed item, without its raw bytes (see :func:`raw_of` and :func:`items`)."""

    id: int
    source: str
    source_ref: str
    message_id: str | None
    size: int
    attempts: int


INBOUND = InboundItem.metadata.tables["inbound"]
INBOUND_RAW = InboundRaw.metadata.tables["inbound_raw"]


def store(
    into: Session | Connection,
    *,
    source: str,
    source_ref: str,
    raw: bytes,
    message_id: str | None = None,
    received_at: dt.datetime | None = None,
) -> Stored:
    """Write a received item once; a second delivery of the same reference is a duplicate.

    ``into`` is the transaction: a session, or a plain connection (a source's group commit,
    which has no use for a session's bookkeeping)."""
    connection = into if isinstance(into, Connection) else into.connection()
    stmt = _STORE[connection.dialect.name]
    new_id = connection.execute(
        stmt,
        {
            "source": source,
            "source_ref": source_ref,
            "size": len(raw),
            "message_id": message_id,
            "received_at": received_at or utcnow(),
            "state": InboundState.PENDING,
            "attempts": 0,
        },
    ).scalar_one_or_none()
    if new_id is not None:
        write_raw(connection, {new_id: raw})
        return Stored(new_id, duplicate=False)
    existing = connection.execute(
        select(INBOUND.c.id).where(INBOUND.c.source == source, INBOUND.c.source_ref == source_ref)
    ).scalar_one()
    return Stored(existing, duplicate=True)


class Received(NamedTuple):
    """An item to keep, as :func:`store_received` takes it."""

    source: str
    source_ref: str
    raw: bytes


def store_received(
    into: Session | Connection | sqlite3.Connection,
    items: Sequence[Received],
    *,
    received_at: dt.datetime | None = None,
) -> set[tuple[str, str]]:
    """:func:`store` for a batch (the webhooks' group commit), all received at one time.
    The (source, source_ref) of the items new here; the others are duplicates, and the
    first of a reference repeated in the batch is kept."""
    if not items:
        return set()
    received_at = received_at or utcnow()
    if isinstance(into, sqlite3.Connection):
        return _store_received_sqlite(into, items, received_at)
    connection = into if isinstance(into, Connection) else into.connection()
    if connection.dialect.name == "sqlite":
        return _store_received_sqlite(_sqlite_connection(connection), items, received_at)
    rows = [
        {
            "source": item.source,
            "source_ref": item.source_ref,
            "size": len(item.raw),
            "received_at": received_at,
            "state": InboundState.PENDING,
            "attempts": 0,
        }
        for item in items
    ]
    new = connection.execute(_STORE[connection.dialect.name], rows).all()
    raws = _first_raws(items)
    write_raw(connection, {row.id: raws[(row.source, row.source_ref)] for row in new})
    return {(row.source, row.source_ref) for row in new}


def _first_raws(items: Sequence[Received]) -> dict[tuple[str, str], bytes]:
    raws: dict[tuple[str, str], bytes] = {}
    for item in reversed(items):
        raws[(item.source, item.source_ref)] = item.raw
    return raws


# The columns store_received() writes, in the order of its values.
_RECEIVED_COLUMNS = ("source", "source_ref", "size", "received_at", "state", "attempts")


def _store_received_sqlite(
    driver: sqlite3.Connection, items: Sequence[Received], received_at: dt.datetime
) -> set[tuple[str, str]]:
    """:func:`store_received` on SQLite, through the driver: many rows to a statement, for
    the items and for their raw bytes, in slices within SQLite's limits (for the webhooks'
    batches of a few dozen, a statement each). The webhooks' group commit runs it for every
    batch in the storage thread, where every step of Python waits its turn at the
    interpreter lock with the event loop: SQLAlchemy's work around the statements (its
    connection pool, compiling the many-row RETURNING insert, processing each parameter and
    row) cost that thread several times what SQLite's own work did. The time and state are
    bound as SQLAlchemy binds them (the columns' own processors), so what is stored reads
    back the same either way."""
    when, state = _sqlite_bound(received_at)
    values: list[Any] = []
    for item in items:
        values += (item.source, item.source_ref, len(item.raw), when, state, 0)
    width = len(_RECEIVED_COLUMNS)
    # In slices within SQLite's least limit on bound variables (999 before 3.32).
    per_statement = 999 // width
    found: list[tuple[int, str, str]] = []
    for start in range(0, len(items), per_statement):
        count = min(per_statement, len(items) - start)
        cut = values[start * width : (start + count) * width]
        found += driver.execute(_sqlite_store_sql(count), cut).fetchall()
    raws = _first_raws(items)
    _write_raw_sqlite(driver, {item_id: raws[(source, ref)] for item_id, source, ref in found})
    return {(source, ref) for _, source, ref in found}


def _sqlite_bound(received_at: dt.datetime) -> tuple[Any, Any]:
    """The time and state as SQLAlchemy binds them on SQLite."""
    bind_time, bind_state = _sqlite_processors()
    return bind_time(received_at), bind_state(InboundState.PENDING)


@functools.cache
def _sqlite_processors() -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The bind processors of the time and state columns on SQLite."""
    dialect = sqlite.dialect()

    def processor(name: str) -> Callable[[Any], Any]:
        process = INBOUND.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        return process if process is not None else lambda value: value

    return processor("received_at"), processor("state")


@functools.cache
def _sqlite_raw_sql(count: int) -> str:
    # Only placeholders are joined into the text.
    values = ", ".join(["(?, ?)"] * count)
    return f"INSERT INTO {INBOUND_RAW.name} (inbound_id, raw) VALUES {values}"  # noqa: S608


@functools.cache
def _sqlite_store_sql(count: int) -> str:
    names = ", ".join(_RECEIVED_COLUMNS)
    one = "(" + ", ".join("?" * len(_RECEIVED_COLUMNS)) + ")"
    return (
        f"INSERT INTO {INBOUND.name} ({names}) VALUES {', '.join([one] * count)} "  # noqa: S608
        "ON CONFLICT (source, source_ref) DO NOTHING RETURNING id, source, source_ref"
    )


_STORE = {
    name: dialect.insert(INBOUND)
    .on_conflict_do_nothing(index_elements=["source", "source_ref"])
    .returning(INBOUND.c.id, INBOUND.c.source, INBOUND.c.source_ref)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
_STORE_RAW = INBOUND_RAW.insert()


def write_raw(connection: Connection, raws: Mapping[int, bytes]) -> None:
    """Write newly stored items' raw bytes, by item id: once, and never updated."""
    if connection.dialect.name == "sqlite":
        _write_raw_sqlite(_sqlite_connection(connection), raws)
    elif raws:
        connection.execute(
            _STORE_RAW, [{"inbound_id": item_id, "raw": raw} for item_id, raw in raws.items()]
        )


def _write_raw_sqlite(driver: sqlite3.Connection, raws: Mapping[int, bytes]) -> None:
    small = [(item_id, raw) for item_id, raw in raws.items() if len(raw) <= RAW_PIECE]
    # Many rows to a statement (a statement per row is a step, and a hand-over of the
    # interpreter lock, per row); as the driver copies each value it binds, a statement
    # binds about a piece's worth of bytes at most, and within SQLite's least limit on
    # bound variables (999 before 3.32).
    part: list[tuple[int, bytes]] = []
    held = 0
    for row in small:
        if part and (held + len(row[1]) > RAW_PIECE or len(part) == 499):
            driver.execute(_sqlite_raw_sql(len(part)), [value for one in part for value in one])
            part, held = [], 0
        part.append(row)
        held += len(row[1])
    if part:
        driver.execute(_sqlite_raw_sql(len(part)), [value for one in part for value in one])
    if len(small) == len(raws):
        return
    large = {item_id: raw for item_id, raw in raws.items() if len(raw) > RAW_PIECE}
    # Bound as a parameter, a large mail's bytes would be copied by the sqlite3 module and
    # again into the record SQLite builds: three times the mail in memory at once. A
    # zeroblob takes no memory, and the bytes are written into it page by page.
    driver.executemany(
        "INSERT INTO inbound_raw (inbound_id, raw) VALUES (?, zeroblob(?))",
        [(item_id, len(raw)) for item_id, raw in large.items()],
    )
    for item_id, raw in large.items():
        view = memoryview(raw)
        with driver.blobopen("inbound_raw", "raw", item_id, readonly=False) as blob:
            for start in range(0, len(view), RAW_PIECE):
                blob.write(view[start : start + RAW_PIECE])


def raw_of(session: Session, ids: Collection[int]) -> dict[int, bytes]:
    """The raw bytes of these items, by id."""
    if not ids:
        return {}
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        rows = connection.execute(_RAW_OF, {"ids": list(ids)})
        return {item_id: raw for item_id, raw in rows}
    # Read in place into the bytes object handed back: a SELECT holds the bytes twice, once
    # assembled by SQLite and once copied by the sqlite3 module.
    driver = _sqlite_connection(connection)
    raws = {}
    for item_id in ids:
        with driver.blobopen("inbound_raw", "raw", item_id) as blob:
            raws[item_id] = blob.read()
    return raws


_RAW_OF = select(INBOUND_RAW.c.inbound_id, INBOUND_RAW.c.raw).where(
    INBOUND_RAW.c.inbound_id.in_(bindparam("ids", expanding=True))
)


def _sqlite_connection(connection: Connection) -> sqlite3.Connection:
    # The DBAPI connection in this transaction (SQLAlchemy's pysqlite driver).
    return cast(sqlite3.Connection, connection.connection.driver_connection)


def items(session: Session, claimed: Sequence[Claimed]) -> Sequence[InboundItem]:
    """Claimed items as ORM objects, raw bytes loaded, in the order given."""
    if not claimed:
        return []
    ids = [item.id for item in claimed]
    loaded = session.scalars(_CLAIMED_ITEMS, {"item_ids": ids}).all()
    raws = raw_of(session, ids)
    for item in loaded:
        set_committed_value(item, "raw", raws[item.id])
    return loaded


_CLAIMED_ITEMS = (
    select(InboundItem)
    .options(defer(InboundItem.raw))
    .where(InboundItem.id.in_(bindparam("item_ids", expanding=True)))
    .order_by(InboundItem.id)
    # An item this session loaded before must show the claim just written.
    .execution_options(populate_existing=True)
)


class Claim(list[Claimed]):
    """The items a claim took, in the order they arrived; ``more`` when due items were left
    for the next claim (by its ``limit`` or ``max_bytes``): a backlog."""

    more = False


def claim(
    session: Session,
    *,
    now: dt.datetime | None = None,
    limit: int = 1,
    lease: dt.timedelta = DEFAULT_LEASE,
    sources: Collection[str] | None = None,
    channels: Collection[str] | None = None,
    max_bytes: int | None = None,
) -> Claim:
    """Take up to ``limit`` items that are due, in the order they arrived: pending, failed
    and due again, or whose previous worker's lease ran out. They are ``processing`` until
    the lease ends, and each claim counts as an attempt.

    ``sources`` names sources exactly (``telephony:twilio``); ``channels`` names families of
    them (``imap`` is every ``imap:<mailbox>``), so each worker takes only what it reads.
    ``max_bytes`` bounds the raw bytes taken at once (the first item is taken whatever its
    size): a batch of large mails must not all sit in memory together.

    New items and items due again are looked for apart: asked for together, SQLite reads
    every pending item (the whole backlog, under load) to sort them by id; asked for alone,
    new items come from the claim index in id order, and the others are few."""
    now = now or utcnow()
    connection = session.connection()
    # One more than taken: whether any is left behind (``Claim.more``).
    fresh, again = _due(
        connection.dialect.name,
        limit + 1,
        tuple(sources) if sources is not None else None,
        tuple(channels) if channels is not None else None,
    )
    rows = [*connection.execute(fresh), *connection.execute(again, {"now": now})]
    rows.sort(key=lambda row: row.id)
    taken: list[Row[Any]] = []
    total = 0
    for row in rows[:limit]:
        total += row.size
        if taken and max_bytes is not None and total > max_bytes:
            break
        taken.append(row)
    claimed = Claim(
        Claimed(row.id, row.source, row.source_ref, row.message_id, row.size, row.attempts + 1)
        for row in taken
    )
    claimed.more = len(taken) < len(rows)
    if taken:
        connection.execute(
            _MARK_CLAIMED, {"ids": [row.id for row in taken], "until": now + lease}
        )
    return claimed


@functools.lru_cache(maxsize=64)
def _due(
    dialect: str,
    limit: int,
    sources: tuple[str, ...] | None,
    channels: tuple[str, ...] | None,
) -> tuple[Select[Any], Select[Any]]:
    """The claim's queries, built once per shape (building them cost more than running
    them): new items (pending, never tried), and items due again (failed, their lease run
    out)."""
    now: BindParameter[dt.datetime] = bindparam("now")
    columns = select(
        INBOUND.c.id,
        INBOUND.c.source,
        INBOUND.c.source_ref,
        INBOUND.c.message_id,
        INBOUND.c.size,
        INBOUND.c.attempts,
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
    # Filtering on an expression (`source || ''`) keeps SQLite's planner off the
    # (source, source_ref) unique index, which walks every item the source ever stored;
    # the claim index walks only the few that are due.
    source = INBOUND.c.source.concat("")
    statements = []
    for stmt in (fresh, again):
        if sources is not None:
            stmt = stmt.where(source.in_(list(sources)))
        if channels is not None:
            stmt = stmt.where(
                or_(
                    source.in_(list(channels)),
                    *(source.startswith(f"{channel}:") for channel in channels),
                )
            )
        stmt = stmt.order_by(INBOUND.c.id).limit(limit)
        if dialect == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        statements.append(stmt)
    return statements[0], statements[1]


def oldest_pending(connection: Connection, sources: Collection[str]) -> dt.datetime | None:
    """When the oldest item of these sources that no worker has tried yet arrived; None
    when there is none. (Through the claim index, as the claim's own look for new items.)"""
    stmt = (
        select(INBOUND.c.received_at)
        .where(
            INBOUND.c.state == InboundState.PENDING,
            INBOUND.c.next_attempt_at.is_(None),
            INBOUND.c.source.concat("").in_(list(sources)),
        )
        .order_by(INBOUND.c.id)
        .limit(1)
    )
    return connection.execute(stmt).scalar_one_or_none()


_MARK_CLAIMED = (
    update(INBOUND)
    .where(INBOUND.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        state=InboundState.PROCESSING,
        attempts=INBOUND.c.attempts + 1,
        next_attempt_at=bindparam("until"),
    )
)
# Marks are one statement for a batch: its items are each marked by id (the tickets of a
# pipeline batch's items are mostly each their own, so grouping by outcome would not help).
_MARK_DONE = (
    update(INBOUND)
    .where(INBOUND.c.id == bindparam("item_id"))
    .values(
        state=InboundState.DONE,
        ticket_id=bindparam("done_ticket_id"),
        reason=None,
        error=None,
        next_attempt_at=None,
        processed_at=bindparam("done_at"),
    )
)
_MARK_IGNORED = (
    update(INBOUND)
    .where(INBOUND.c.id == bindparam("item_id"))
    .values(
        state=InboundState.IGNORED,
        reason=bindparam("reason"),
        ticket_id=bindparam("ignored_ticket_id"),
        error=None,
        next_attempt_at=None,
        processed_at=bindparam("ignored_at"),
    )
)


def done_batch(session: Session, items: Sequence[tuple[int, int | None]]) -> None:
    """Mark items (id, ticket id or None) done, without loading them."""
    if not items:
        return
    now = utcnow()
    session.connection().execute(
        _MARK_DONE,
        [
            {"item_id": item_id, "done_ticket_id": ticket_id, "done_at": now}
            for item_id, ticket_id in items
        ],
    )


def ignored_batch(
    session: Session,
    items: Sequence[tuple[int, str]],
    *,
    ticket_of: Mapping[int, int] | None = None,
) -> None:
    """Set items (id, reason) aside on purpose (auto-reply, bounce, loop …), without loading
    them; ``ticket_of`` names the ticket an item concerns, if any (the one a duplicate or a
    bounce belongs to)."""
    if not items:
        return
    now = utcnow()
    tickets = ticket_of or {}
    session.connection().execute(
        _MARK_IGNORED,
        [
            {
                "item_id": item_id,
                "reason": reason,
                "ignored_ticket_id": tickets.get(item_id),
                "ignored_at": now,
            }
            for item_id, reason in items
        ],
    )


class Unfinished(NamedTuple):
    """An item still in the store's hands: pending, processing, or failed and due again."""

    id: int
    message_id: str
    state: InboundState
    next_attempt_at: dt.datetime | None
    waiting: bool


UNFINISHED_STATES = (InboundState.PENDING, InboundState.PROCESSING, InboundState.FAILED)
# The items other than ``besides`` with these Message-IDs that are not finished yet, as
# :func:`unfinished` reads them. The registrar asks it in one statement with the other
# things that decide a mail's fate.
UNFINISHED = select(
    INBOUND.c.id,
    INBOUND.c.message_id,
    INBOUND.c.state,
    INBOUND.c.next_attempt_at,
    INBOUND.c.reason,
).where(
    INBOUND.c.message_id.in_(bindparam("message_ids", expanding=True)),
    INBOUND.c.state.in_(UNFINISHED_STATES),
    INBOUND.c.id != bindparam("besides"),
)


def unfinished(rows: Iterable[Row[Any]]) -> list[Unfinished]:
    """The rows of :data:`UNFINISHED` in the order their items arrived; ``waiting`` when
    one is itself deferred (:func:`hold`)."""
    return sorted(
        (
            Unfinished(
                row.id,
                row.message_id,
                row.state,
                row.next_attempt_at,
                row.state is InboundState.PENDING and row.reason is not None,
            )
            for row in rows
        ),
        key=lambda found: found.id,
    )


_HOLD = (
    update(INBOUND)
    .where(INBOUND.c.id == bindparam("item_id"))
    .values(
        state=InboundState.PENDING,
        reason=bindparam("waits_for"),
        attempts=INBOUND.c.attempts - 1,
        next_attempt_at=bindparam("until"),
    )
)


def hold(session: Session, item: InboundItem, *, reason: str, until: dt.datetime) -> None:
    """Put a claimed item back until ``until``, because of something it waits for (the
    mail it answers, still in the store): pending again, with the reason recorded, and the
    claim not counted as an attempt. A pending item with a reason is one that waits.

    The loaded item is left as claimed: should the batch's transaction roll back, it is
    done again as claimed (Pipeline._still_ours compares its attempts with the store's)."""
    session.connection().execute(_HOLD, {"item_id": item.id, "waits_for": reason, "until": until})


_NO_RAW = (defer(InboundItem.raw),)


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
    item = session.get(InboundItem, item_id, options=_NO_RAW, with_for_update=True)
    if item is None:
        raise InboundError(f"no inbound item {item_id}")
    item.error = error
    # What it waited for, if it was deferred, is over: the error says what happened.
    item.reason = None
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
    item = session.get(InboundItem, item_id, options=_NO_RAW, with_for_update=True)
    if item is None:
        raise InboundError(f"no inbound item {item_id}")
    if item.state in (InboundState.DONE, InboundState.PENDING, InboundState.PROCESSING):
        raise InboundError(f"inbound item {item_id} is {item.state.value}; nothing to retry")
    item.state = InboundState.PENDING
    item.attempts = 0
    item.next_attempt_at = None
    item.reason = None
    session.flush()
    return item


def retry_quarantined(session: Session) -> int:
    result = session.execute(
        update(InboundItem)
        .where(InboundItem.state == InboundState.QUARANTINED)
        .values(state=InboundState.PENDING, attempts=0, next_attempt_at=None, reason=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
