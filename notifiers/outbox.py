"""The outbox: notifications queued with the change they announce, delivered by workers.

A worker :func:`claim`\\ s due rows with a lease (``sending`` until it runs out), then for each
row, in its own short transaction, lets the channel *prepare* it (check the policy, render
it from the ticket as stored now), delivers it outside any transaction, and records the
outcome: :func:`sent`, :func:`failed` (retry with capped exponential backoff, dead after
``max_attempts`` with the last error; at once when the peer refused it for good, which the
channel may learn from), :func:`postponed` (the peer asked us to wait; not a failure) or
:func:`withheld` (the policy refused it, journaled on the ticket).

A worker that dies between the peer's acceptance and :func:`sent` leaves a lease that runs
out; the row is delivered again with the same Message-ID, so the duplicate is recognisable.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.inbound import backoff
from storage.models import JournalEntry, OutboxItem, OutboxState, utcnow

log = logging.getLogger(__name__)

DEFAULT_LEASE = dt.timedelta(minutes=5)
OUTBOX_ACTOR = "outbox"
_ERROR_LIMIT = 2000


class OutboxError(LookupError):
    """An outbox row that does not exist or is not in a state for what was asked."""


class PermanentError(Exception):
    """The peer refused the row for good (e.g. SMTP 5xx): retrying cannot help."""


class Postpone(Exception):
    """The peer asks us to come back later (Telegram's flood control); not a failure."""

    def __init__(self, delay: dt.timedelta, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay


@dataclass(frozen=True)
class Withhold:
    """The policy's decision not to send a row, with the reason journaled on its ticket."""

    reason: str


# --- the queue ----------------------------------------------------------------------------


def claim(
    session: Session,
    channel: str,
    *,
    now: dt.datetime,
    limit: int = 10,
    lease: dt.timedelta = DEFAULT_LEASE,
) -> Sequence[int]:
    """Ids of up to ``limit`` due rows of ``channel``: pending and due, or ``sending`` with a
    lease that ran out. They are ``sending`` until ``now + lease``; each claim is an attempt."""
    due = or_(OutboxItem.next_attempt_at.is_(None), OutboxItem.next_attempt_at <= now)
    stmt = (
        select(OutboxItem)
        .where(
            OutboxItem.channel == channel,
            OutboxItem.state.in_([OutboxState.PENDING, OutboxState.SENDING]),
            due,
        )
        .order_by(OutboxItem.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    items = session.scalars(stmt).all()
    for item in items:
        item.state = OutboxState.SENDING
        item.attempts += 1
        item.next_attempt_at = now + lease
    session.flush()
    return [item.id for item in items]


def _get(session: Session, item_id: int) -> OutboxItem:
    item = session.get(OutboxItem, item_id, with_for_update=True)
    if item is None:
        raise OutboxError(f"no outbox row {item_id}")
    return item


def sent(session: Session, item_id: int, *, now: dt.datetime) -> None:
    item = _get(session, item_id)
    item.state = OutboxState.SENT
    item.sent_at = now
    item.next_attempt_at = None
    item.last_error = None


def failed(
    session: Session,
    item_id: int,
    *,
    error: str,
    max_attempts: int,
    now: dt.datetime,
    permanent: bool = False,
) -> OutboxState:
    """Record a delivery error: retry after a backoff, or dead after ``max_attempts``."""
    item = _get(session, item_id)
    item.last_error = error[:_ERROR_LIMIT]
    if permanent or item.attempts >= max_attempts:
        item.state = OutboxState.DEAD
        item.next_attempt_at = None
    else:
        item.state = OutboxState.PENDING
        item.next_attempt_at = now + backoff(item.attempts)
    session.flush()
    return item.state


def postponed(session: Session, item_id: int, *, until: dt.datetime, reason: str) -> None:
    """Due again at ``until``; the attempt is given back, as the peer did not fail."""
    item = _get(session, item_id)
    item.state = OutboxState.PENDING
    item.attempts = max(item.attempts - 1, 0)
    item.next_attempt_at = until
    item.last_error = reason[:_ERROR_LIMIT]


def withheld(session: Session, item: OutboxItem, *, reason: str, now: dt.datetime) -> None:
    item.state = OutboxState.WITHHELD
    item.next_attempt_at = None
    item.last_error = reason
    if item.ticket_id is not None:
        session.add(
            JournalEntry(
                ticket_id=item.ticket_id,
                at=now,
                actor=OUTBOX_ACTOR,
                action="notification_withheld",
                details={
                    "outbox_id": item.id,
                    "channel": item.channel,
                    "template": item.template,
                    "recipient": item.recipient,
                    "reason": reason,
                },
            )
        )


_RETRYABLE = (OutboxState.DEAD, OutboxState.WITHHELD)


def retry(session: Session, item_id: int) -> OutboxItem:
    """Put a dead or withheld row back in the queue with fresh attempts."""
    item = _get(session, item_id)
    if item.state not in _RETRYABLE:
        raise OutboxError(f"outbox row {item_id} is {item.state.value}; nothing to retry")
    item.state = OutboxState.PENDING
    item.attempts = 0
    item.next_attempt_at = None
    session.flush()
    return item


def retry_dead(session: Session) -> int:
    result = session.execute(
        update(OutboxItem)
        .where(OutboxItem.state == OutboxState.DEAD)
        .values(state=OutboxState.PENDING, attempts=0, next_attempt_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def listing(
    session: Session, *, states: Sequence[OutboxState] = (), limit: int = 200
) -> Sequence[OutboxItem]:
    stmt = select(OutboxItem).order_by(OutboxItem.id.desc()).limit(limit)
    if states:
        stmt = stmt.where(OutboxItem.state.in_(list(states)))
    return session.scalars(stmt).all()


# --- the worker ---------------------------------------------------------------------------

P = TypeVar("P")


class Channel(Protocol[P]):
    """How one kind of row is delivered: prepared inside a transaction, sent outside one."""

    channel: str

    def prepare(self, session: Session, item: OutboxItem, now: dt.datetime) -> P | Withhold:
        """What to send for ``item``, or the policy's reason not to send it."""
        ...

    async def send(self, item_id: int, prepared: P) -> None:
        """Deliver; raises PermanentError, Postpone, or anything else for a retry."""
        ...

    def refused(self, session: Session, item: OutboxItem, error: PermanentError) -> None:
        """Record what a permanent refusal teaches, in the transaction that kills the row."""
        ...

    async def close(self) -> None:
        """Release connections when the worker stops."""
        ...


@dataclass(frozen=True)
class Outcome:
    item_id: int
    state: OutboxState


class OutboxWorker(Generic[P]):
    """Delivers the due rows of one channel; fits intake.services.Service."""

    def __init__(
        self,
        db: Database,
        channel: Channel[P],
        *,
        max_attempts: int,
        workers: int = 1,
        batch: int = 10,
        interval: float = 5.0,
        lease: dt.timedelta = DEFAULT_LEASE,
        wakeup: asyncio.Event | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.name = f"outbox-{channel.channel}"
        self.description = f"delivers queued {channel.channel} notifications"
        self.db = db
        self.channel = channel
        self.max_attempts = max_attempts
        self.workers = workers
        self.batch = batch
        self.interval = interval
        self.lease = lease
        # Set by whoever commits new rows in this process; polling covers the others.
        self.wakeup = wakeup
        self.clock = clock

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.workers):
                    group.create_task(self._loop(stopping))
        finally:
            await self.channel.close()

    async def _loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            if self.wakeup is not None:
                # Cleared before looking, so rows committed meanwhile wake us again.
                self.wakeup.clear()
            try:
                handled = await self.deliver_due(stopping)
            except Exception:
                log.exception("outbox-%s: pass failed", self.channel.channel)
                handled = []
            if not handled:
                await self._idle(stopping)

    async def _idle(self, stopping: asyncio.Event) -> None:
        """Until stopping, new rows, or the next look, whichever comes first."""
        events = [stopping] if self.wakeup is None else [stopping, self.wakeup]
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waiters, return_exceptions=True)

    async def deliver_due(self, stopping: asyncio.Event | None = None) -> list[Outcome]:
        """One pass: claim the due rows and deliver each; stops between rows when asked."""
        ids = await asyncio.to_thread(self._claim)
        outcomes = []
        for item_id in ids:
            if stopping is not None and stopping.is_set():
                # Claimed but not started: the lease runs out and another pass takes it.
                break
            outcomes.append(await self.deliver(item_id))
        return outcomes

    def _claim(self) -> Sequence[int]:
        with self.db.transaction() as session:
            return claim(
                session, self.channel.channel, now=self.clock(), limit=self.batch, lease=self.lease
            )

    async def deliver(self, item_id: int) -> Outcome:
        """Prepare, send and record one claimed row; every error ends in a recorded state."""
        try:
            prepared = await asyncio.to_thread(self._prepare, item_id)
        except Exception as error:
            log.exception("outbox %d: cannot prepare", item_id)
            return await self._failed(item_id, f"cannot prepare: {error}")
        if isinstance(prepared, Withhold):
            log.info("outbox %d: withheld: %s", item_id, prepared.reason)
            return Outcome(item_id, OutboxState.WITHHELD)
        try:
            await self.channel.send(item_id, prepared)
        except Postpone as wait:
            until = self.clock() + wait.delay
            log.info("outbox %d: postponed to %s: %s", item_id, until.isoformat(), wait)
            await asyncio.to_thread(self._record, postponed, item_id, until=until, reason=str(wait))
            return Outcome(item_id, OutboxState.PENDING)
        except PermanentError as error:
            log.warning("outbox %d: refused for good: %s", item_id, error)
            return await self._failed(item_id, str(error), refusal=error)
        except Exception as error:
            log.warning("outbox %d: delivery failed: %s", item_id, _describe(error))
            return await self._failed(item_id, _describe(error))
        await asyncio.to_thread(self._record, sent, item_id, now=self.clock())
        log.info("outbox %d: sent", item_id)
        return Outcome(item_id, OutboxState.SENT)

    def _prepare(self, item_id: int) -> P | Withhold:
        with self.db.transaction() as session:
            item = _get(session, item_id)
            now = self.clock()
            prepared = self.channel.prepare(session, item, now)
            if isinstance(prepared, Withhold):
                withheld(session, item, reason=prepared.reason, now=now)
            return prepared

    async def _failed(
        self, item_id: int, error: str, *, refusal: PermanentError | None = None
    ) -> Outcome:
        def record() -> OutboxState:
            with self.db.transaction() as session:
                state = failed(
                    session,
                    item_id,
                    error=error,
                    max_attempts=self.max_attempts,
                    now=self.clock(),
                    permanent=refusal is not None,
                )
                if refusal is not None:
                    self.channel.refused(session, _get(session, item_id), refusal)
                return state

        state = await asyncio.to_thread(record)
        if state is OutboxState.DEAD:
            log.error("outbox %d: dead-lettered: %s", item_id, error)
        return Outcome(item_id, state)

    def _record(self, action: Callable[..., None], item_id: int, **kwargs: object) -> None:
        with self.db.transaction() as session:
            action(session, item_id, **kwargs)


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
