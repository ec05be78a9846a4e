"""Pipeline workers: claim received items, parse, apply the rules, and call the desk.

The unit of work is guarded in one place (``process``): whatever goes wrong with one item
is logged with its Message-ID, its transaction rolled back, and the item recorded as
failed, retried with backoff and quarantined after ``max_attempts``. The loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, defer

from intake.registrar import Registrar
from storage import inbound
from storage.db import Database
from storage.models import InboundItem, InboundState, utcnow

log = logging.getLogger(__name__)

# The sources whose items are mail (SMTP, every IMAP mailbox); call events have workers of
# their own.
MAIL_CHANNELS = ("smtp", "imap")

MAX_ERROR_LENGTH = 2000

# The item again, locked, without its raw bytes (parsed already); built once.
_CLAIMED_ITEM = (
    select(InboundItem)
    .options(defer(InboundItem.raw))
    .where(InboundItem.id == bindparam("item_id"))
    .with_for_update()
)


class Pipeline:
    name = "pipeline"
    description = "turns received mail into registered tickets and follow-ups"

    def __init__(
        self,
        db: Database,
        registrar: Registrar,
        *,
        workers: int,
        max_attempts: int,
        poll_interval: float,
        lease: dt.timedelta = inbound.DEFAULT_LEASE,
        wakeup: asyncio.Event | None = None,
        after_commit: Callable[[], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.db = db
        self.registrar = registrar
        self.lease = lease
        # SQLite has one writer at a time: more workers would only queue on its lock.
        self.workers = 1 if db.dialect == "sqlite" else workers
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.wakeup = wakeup or asyncio.Event()
        # Called in the loop after each commit (the outbox workers' wake-up), so that the
        # acknowledgement leaves at once rather than at their next poll.
        self.after_commit = after_commit
        self._loop: asyncio.AbstractEventLoop | None = None
        self.clock = clock

    async def run(self, stopping: asyncio.Event) -> None:
        # Threads of their own: a busy pipeline must not hold up the SMTP listener's writes
        # in the loop's shared executor.
        executor = ThreadPoolExecutor(self.workers, thread_name_prefix="pipeline")
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(self._work(stopping, executor) for _ in range(self.workers)))
        finally:
            # Not waiting: a cancelled run must not block the loop on an item in hand, which
            # its thread finishes (or leaves to the lease) on its own.
            executor.shutdown(wait=False)

    async def _work(self, stopping: asyncio.Event, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            # Cleared before looking, so that an item stored meanwhile wakes us again.
            self.wakeup.clear()
            try:
                await loop.run_in_executor(executor, self.work_all, lambda: not stopping.is_set())
            except Exception:
                log.exception(
                    "cannot claim inbound items; trying again in %.0f s", self.poll_interval
                )
            await _first_of(self.wakeup, stopping, wait=self.poll_interval)

    def work_all(self, keep_going: Callable[[], bool] = lambda: True) -> int:
        """Process due items until there are none (or ``keep_going`` says stop); how many."""
        count = 0
        with self.db.transaction() as session:
            item = self._claim(session)
        while item is not None:
            count += 1
            item = self.process(item, claim_next=keep_going())
        return count

    def _claim(self, session: Session) -> InboundItem | None:
        claimed = inbound.claim(
            session, now=self.clock(), limit=1, lease=self.lease, channels=MAIL_CHANNELS
        )
        return claimed[0] if claimed else None

    def process(self, item: InboundItem, *, claim_next: bool = False) -> InboundItem | None:
        """Do one claimed item; with ``claim_next``, the next due item is claimed in the same
        transaction (one commit, i.e. one fsync on SQLite, per item instead of two)."""
        label = item.message_id or f"<inbound {item.id}>"
        try:
            # Parsing, the rules and the blob files happen outside any transaction.
            prepared = self.registrar.prepare(item.raw)
            label = prepared.label
            with self.db.transaction() as session:
                current = self._still_ours(session, item)
                if current is None:
                    log.warning(
                        "%s: inbound %d was taken over by another worker; left to it",
                        label,
                        item.id,
                    )
                else:
                    outcome = self.registrar.apply(session, current, prepared)
                    log.info("%s: %s", label, outcome.summary)
                following = self._claim(session) if claim_next else None
            self._wake_outbox()
            return following
        except Exception as exc:
            log.exception("%s: inbound %d failed (attempt %d)", label, item.id, item.attempts)
            return self._record_failure(item, label, exc, claim_next=claim_next)

    def _wake_outbox(self) -> None:
        if self.after_commit is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.after_commit)

    def _still_ours(self, session: Session, item: InboundItem) -> InboundItem | None:
        """The item, locked, if our claim still holds: a lease that ran out may have let
        another worker claim it, and then that worker alone may finish it."""
        current = session.scalars(_CLAIMED_ITEM, {"item_id": item.id}).one_or_none()
        if current is None or current.state is not InboundState.PROCESSING:
            return None
        return current if current.attempts == item.attempts else None

    def _record_failure(
        self, item: InboundItem, label: str, exc: Exception, *, claim_next: bool
    ) -> InboundItem | None:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        try:
            with self.db.transaction() as session:
                state = inbound.failed(
                    session, item.id, error=error, max_attempts=self.max_attempts, now=self.clock()
                )
                following = self._claim(session) if claim_next else None
        except Exception:
            # The lease runs out and the item is claimed again: nothing is lost.
            log.exception("%s: cannot record the failure of inbound %d", label, item.id)
            return None
        if state is InboundState.QUARANTINED:
            log.error(
                "%s: inbound %d quarantined after %d attempts: %s",
                label,
                item.id,
                item.attempts,
                error,
            )
        return following


async def _first_of(wakeup: asyncio.Event, stopping: asyncio.Event, *, wait: float) -> None:
    waiters = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
