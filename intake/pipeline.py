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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from intake.registrar import Outcome, Prepared, Registrar
from storage import inbound
from storage.db import Database
from storage.models import InboundItem, InboundState, utcnow

log = logging.getLogger(__name__)

# The sources whose items are mail (SMTP, every IMAP mailbox); call events have workers of
# their own.
MAIL_CHANNELS = ("smtp", "imap")

MAX_ERROR_LENGTH = 2000
# Items done in one transaction (one commit, one fsync on SQLite), each in a savepoint of its
# own; and the raw bytes taken at once, so that a batch of large mails stays small in memory.
BATCH = 16
BATCH_BYTES = 8 * 1024 * 1024
# Seconds that mail arriving in a stream is let gather after a batch (see Pipeline._work):
# the per-batch work then serves several mails. It adds at most this to a mail's way in.
GATHER = 0.05

_INBOUND = InboundItem.metadata.tables["inbound"]
# The batch's items again, locked, to check that our claim still holds; built once.
_CLAIMS = (
    select(_INBOUND.c.id, _INBOUND.c.state, _INBOUND.c.attempts)
    .where(_INBOUND.c.id.in_(bindparam("item_ids", expanding=True)))
    .order_by(_INBOUND.c.id)
    .with_for_update()
)


class _Batch(NamedTuple):
    """Claimed items; ``more`` when the claim left due items behind (a backlog)."""

    items: Sequence[InboundItem]
    more: bool


_NOTHING = _Batch((), False)


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
        gather: float = GATHER,
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
        self.gather = gather
        # The workers' turn at claiming (see _work); at start, what is due is claimed at once.
        self._turn = asyncio.Lock()
        self._backlog = True

    async def run(self, stopping: asyncio.Event) -> None:
        # Threads of their own: a busy pipeline must not hold up the SMTP listener's writes
        # in the loop's shared executor.
        executor = ThreadPoolExecutor(self.workers, thread_name_prefix="pipeline")
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(self._work(stopping, executor) for _ in range(self.workers)))
        finally:
            # Not waiting: a cancelled run must not block the loop on an item in hand, which
            # its thread finishes (or leaves to the lease) on its own, then wakes nobody in
            # a loop that may be closed by then.
            self._loop = None
            executor.shutdown(wait=False)

    async def _work(self, stopping: asyncio.Event, executor: ThreadPoolExecutor) -> None:
        """One worker. The workers take turns at waiting for mail and claiming it: while
        mail trickles in, the one whose turn it is keeps it through its batch and the pause
        after it, so that what arrives meanwhile gathers into its next batch rather than
        into a mail or two for each worker (a batch's claim, checks and commit serve all
        its mails). A full batch means a backlog: its worker passes the turn on at once,
        and the next one claims too."""
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            await self._turn.acquire()
            turn = True
            try:
                if not self._backlog:
                    await _first_of(self.wakeup, stopping, wait=self.poll_interval)
                if stopping.is_set():
                    return
                # Cleared before looking, so that an item stored meanwhile wakes us again.
                self.wakeup.clear()
                done = 0
                try:
                    batch = await loop.run_in_executor(executor, self._claim_batch)
                    self._backlog = batch.more
                    if self._backlog:
                        self._turn.release()
                        turn = False
                    done = await loop.run_in_executor(
                        executor, self._work_through, batch, lambda: not stopping.is_set()
                    )
                except Exception:
                    log.exception(
                        "cannot claim inbound items; trying again in %.0f s", self.poll_interval
                    )
                    self._backlog = False
                if done and self.gather and turn:
                    # Mail is arriving: a moment's wait lets it gather into the next batch.
                    await _first_of(asyncio.Event(), stopping, wait=self.gather)
            finally:
                if turn:
                    self._turn.release()

    def work_all(self, keep_going: Callable[[], bool] = lambda: True) -> int:
        """Process due items, batch after batch, until a claim leaves none due behind it
        (or ``keep_going`` says stop); how many. What is stored meanwhile waits for the
        next call, which the worker makes after letting it gather."""
        return self._work_through(self._claim_batch(), keep_going)

    def _claim_batch(self) -> _Batch:
        with self.db.transaction() as session:
            return self._claim(session)

    def _work_through(
        self, batch: _Batch, keep_going: Callable[[], bool] = lambda: True
    ) -> int:
        count = 0
        while batch.items:
            count += len(batch.items)
            # Due items left behind mean a backlog: the next batch is claimed in the same
            # transaction. None means mail is trickling in; the worker lets it gather first.
            batch = self.process(batch.items, claim_next=batch.more and keep_going())
        return count

    def _claim(self, session: Session) -> _Batch:
        claimed = inbound.claim(
            session,
            now=self.clock(),
            limit=BATCH,
            lease=self.lease,
            channels=MAIL_CHANNELS,
            max_bytes=BATCH_BYTES,
        )
        return _Batch(inbound.items(session, claimed), claimed.more)

    def process(
        self, items: Sequence[InboundItem], *, claim_next: bool = False
    ) -> _Batch:
        """Do claimed items, in order, in one transaction; with ``claim_next``, the next
        batch is claimed in it too.

        A failing item is rolled back alone and recorded as failed while the others commit
        (the batch runs again with a savepoint per item), and an item is ``done`` in the
        same commit as its ticket or follow-up, so a crash never registers it twice. Later
        items see what earlier ones wrote (a reply stored after the mail it answers finds
        its ticket)."""
        # Parsing, the rules and the blob files happen outside any transaction.
        return self._process(items, [self._prepare(item) for item in items], claim_next)

    def _process(
        self,
        items: Sequence[InboundItem],
        prepared: Sequence[Prepared | Exception],
        claim_next: bool,
        *,
        guarded: bool = False,
    ) -> _Batch:
        """The batch in one transaction: first without a savepoint per item (two more
        statements each, and a bad item is rare), and should any item fail, all of it again
        ``guarded``, each item in a savepoint of its own. On PostgreSQL the numbers that
        the first pass took are gaps then."""
        try:
            with self.db.transaction() as session:
                ours = self._still_ours(session, items)
                marks = _Marks()
                for item, work in zip(items, prepared, strict=True):
                    if item.id in ours:
                        self._apply(session, item, work, marks, guarded=guarded)
                    else:
                        log.warning(
                            "%s: inbound %d was taken over by another worker; left to it",
                            _label(item, work),
                            item.id,
                        )
                marks.write(session)
                following = self._claim(session) if claim_next else _NOTHING
        except Exception as exc:
            if not guarded:
                log.warning(
                    "a batch of %d inbound items failed (%s); again with a savepoint per item",
                    len(items),
                    _error(exc),
                )
                return self._process(items, prepared, claim_next, guarded=True)
            if len(items) == 1:
                (item,), (work,) = items, prepared
                log.exception(
                    "%s: inbound %d failed (attempt %d)", _label(item, work), item.id, item.attempts
                )
                self._record_failure(item, _label(item, work), _error(exc))
                return _NOTHING
            # A fault of the transaction itself, which no item's savepoint caught: each
            # item on its own, so that it holds up only the item that causes it.
            log.exception("a batch of %d inbound items failed; taking them one by one", len(items))
            for item, work in zip(items, prepared, strict=True):
                self._process([item], [work], claim_next=False)
            return _NOTHING
        self._wake_outbox()
        if marks.again_at is not None:
            self._wake_at(marks.again_at)
        return following

    def _prepare(self, item: InboundItem) -> Prepared | Exception:
        try:
            return self.registrar.prepare(item.raw)
        except Exception as exc:
            log.exception("%s: inbound %d cannot be read", _label(item, None), item.id)
            return exc

    def _apply(
        self,
        session: Session,
        item: InboundItem,
        work: Prepared | Exception,
        marks: _Marks,
        *,
        guarded: bool,
    ) -> None:
        """The unit of work: one item. ``guarded``, in a savepoint of the batch's
        transaction, and a failure is recorded on the item; else a failure fails the batch.
        The item's mark is kept only once its work is through, and written with the
        batch's (``marks``) in the same transaction."""
        label = _label(item, work)
        if isinstance(work, Prepared) and not guarded:
            outcome = self.registrar.apply(session, item, work, settled=marks.settled)
            marks.add(item.id, outcome)
            log.info("%s: %s", label, outcome.summary)
            return
        if isinstance(work, Prepared):
            try:
                with session.begin_nested():
                    outcome = self.registrar.apply(session, item, work, settled=marks.settled)
                marks.add(item.id, outcome)
                log.info("%s: %s", label, outcome.summary)
                return
            except Exception as exc:
                log.exception("%s: inbound %d failed (attempt %d)", label, item.id, item.attempts)
                work = exc
        self._failed(session, item, label, _error(work))

    def _wake_outbox(self) -> None:
        if self.after_commit is not None:
            self._in_loop(self.after_commit)

    def _wake_at(self, when: dt.datetime) -> None:
        """Wake a worker when a mail put back to wait is due again: what it waits for is
        mostly done within the second, long before the next poll."""
        # A moment past it: the claim compares the store's times with this clock.
        delay = max((when - self.clock()).total_seconds(), 0.0) + 0.05
        self._in_loop(lambda: asyncio.get_running_loop().call_later(delay, self.wakeup.set))

    def _in_loop(self, call: Callable[[], object]) -> None:
        """``call`` in the running loop, from a worker's thread; none once the run is over
        (the loop may be closing)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(call)

    def _still_ours(self, session: Session, items: Sequence[InboundItem]) -> set[int]:
        """The items whose claim still holds, locked: a lease that ran out may have let
        another worker claim one, and then that worker alone may finish it."""
        attempts = {item.id: item.attempts for item in items}
        rows = session.execute(_CLAIMS, {"item_ids": list(attempts)})
        return {
            row.id
            for row in rows
            if row.state is InboundState.PROCESSING and row.attempts == attempts[row.id]
        }

    def _failed(self, session: Session, item: InboundItem, label: str, error: str) -> None:
        state = inbound.failed(
            session, item.id, error=error, max_attempts=self.max_attempts, now=self.clock()
        )
        if state is InboundState.QUARANTINED:
            log.error(
                "%s: inbound %d quarantined after %d attempts: %s",
                label,
                item.id,
                item.attempts,
                error,
            )

    def _record_failure(self, item: InboundItem, label: str, error: str) -> None:
        try:
            with self.db.transaction() as session:
                if item.id in self._still_ours(session, [item]):
                    self._failed(session, item, label, error)
        except Exception:
            # The lease runs out and the item is claimed again: nothing is lost.
            log.exception("%s: cannot record the failure of inbound %d", label, item.id)


class _Marks:
    """The outcomes of a batch's items, written at the end of its transaction: one
    statement for those done and one for those set aside, where each item took one."""

    def __init__(self) -> None:
        self.done: list[tuple[int, int | None]] = []
        self.ignored: list[tuple[int, str]] = []
        self.tickets: dict[int, int] = {}
        # What the registrar must not wait for: marked, though not written yet.
        self.settled: set[int] = set()
        # When the first of the items put back to wait is due again.
        self.again_at: dt.datetime | None = None

    def add(self, item_id: int, outcome: Outcome) -> None:
        mark = outcome.mark
        if outcome.again_at is not None:
            self.again_at = min(self.again_at or outcome.again_at, outcome.again_at)
        if mark is None:
            return
        self.settled.add(item_id)
        if mark.ignored is None:
            self.done.append((item_id, mark.ticket_id))
            return
        self.ignored.append((item_id, mark.ignored))
        if mark.ticket_id is not None:
            self.tickets[item_id] = mark.ticket_id

    def write(self, session: Session) -> None:
        inbound.done_batch(session, self.done)
        inbound.ignored_batch(session, self.ignored, ticket_of=self.tickets)


def _label(item: InboundItem, work: Prepared | Exception | None) -> str:
    """How log lines name an item: its Message-ID."""
    if isinstance(work, Prepared):
        return work.label
    return item.message_id or f"<inbound {item.id}>"


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]


async def _first_of(wakeup: asyncio.Event, stopping: asyncio.Event, *, wait: float) -> None:
    waiters = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
