"""Stored call events become call records and tickets.

The HTTP edge only keeps each verified request and answers; this worker claims the kept
requests of the telephony sources in the order they arrived and hands their events to the
call recorder: as the edge read them, or, for a request kept by another daemon or before a
restart, as its adapter reads the kept request again. The edge wakes it after each commit;
a failed item comes back after its backoff.

While webhooks press (requests arrive faster than their commits: each commit holds several,
and more wait for the next), answering them comes first. Each is answered only after its
commit; the worker's transactions and those commits share one process and one interpreter
lock, and on SQLite they take turns at the one writer as well. So the worker gives way: it
acts on what they stored once they ease off, or once the oldest of it has waited MAX_LAG;
then it takes batches of a bounded cost, so that a webhook waits for one batch at most, back
to back until it has caught up. A trickle of webhooks presses nothing, and its events are
acted on as they come.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor

from sqlalchemy.orm import Session

from intake.calls import CallRecorder, Meaning, Work, source_name
from intake.sources.telephony.base import (
    TelephonyAdapter,
    WebhookError,
    WebhookRequest,
    fit_for_storage,
)
from storage import inbound
from storage.locks import TurnTaken, take_turn, turn_held

log = logging.getLogger(__name__)

# While webhooks arrive, a batch takes what is pending, up to as many items as cost the
# storage thread this many seconds of CPU: on SQLite the webhooks' commits wait for its one
# writer, so they are held up by one batch at most, inside their latency budget. The
# size follows from what recent batches cost per item, so the per-batch work (claim, locks,
# commit) is shared by more items as the backlog grows, and by fewer on a slower machine.
# CPU rather than wall time: under load the batch shares the interpreter lock with the
# event loop, and its wall time per item says more about the webhooks than about the batch.
BATCH_SECONDS = 0.015
# The size of the first batch under load, before any batch has been timed; and the least.
BATCH = 32
FEWEST = 8
# Items per transaction when none are: a backlog is worked off in large batches, each
# claim, lock and commit shared by many items.
BACKLOG_BATCH = 128
# Webhooks stored this recently (seconds) mean more are arriving; a commit this recent
# that held several requests while more already waited for the next means they press.
ARRIVING = 0.25
# Seconds the oldest stored event waits at most while the worker gives way: webhooks that
# press on longer than this (more than it can keep up with besides) share the storage
# thread with it from then on, so that what they store is still acted on within a bound.
MAX_LAG = 10.0
# Daemons sharing PostgreSQL take turns at claiming and applying call events: claims skip
# what another daemon has locked, so without turns one daemon could apply a call's hangup
# while another still held its answer, and the answer would then come too late (a missed
# call registered for an answered one). Acting on events costs little; turns cost less.
TURN = "telephony: call events"
# After a partial batch, how long events are let gather before the next one: under load a
# batch per webhook commit would spend the time on per-batch work (claim, locks, commit)
# that the webhooks' own commits need.
GATHER = 0.05


class CallEventWorker:
    name = "telephony-events"
    description = "turns stored call events into call records and missed-call tickets"

    def __init__(
        self,
        recorder: CallRecorder,
        adapters: Sequence[TelephonyAdapter],
        executor: Executor,
        *,
        poll_interval: float = 5.0,
    ) -> None:
        self.recorder = recorder
        self.adapters = {source_name(adapter.name): adapter for adapter in adapters}
        self.sources = sorted(self.adapters)
        # The storage thread(s) of the HTTP app: on SQLite one writer for the webhooks'
        # commits and this worker's, taking turns.
        self.executor = executor
        self.poll_interval = poll_interval
        self.wakeup = asyncio.Event()
        # Set while nothing stored is waiting to be processed.
        self.idle = asyncio.Event()
        # When webhooks were last stored, and last stored several to a commit (the loop's
        # clock).
        self.stored_at = -ARRIVING
        self.pressed_at = -ARRIVING
        # The CPU time per item of the last full batch (seconds).
        self.per_item: float | None = None
        # Since when (the loop's clock) stored events have been waiting to be acted on:
        # from the first commit after the worker last caught up.
        self.behind_since: float | None = None

    def arriving(self) -> bool:
        """Whether webhooks are arriving now."""
        return asyncio.get_running_loop().time() - self.stored_at < ARRIVING

    def give_way(self) -> float:
        """How long the worker waits before its next batch, so that webhooks pressing now
        are answered first: until they ease off, and no longer than until the oldest event
        waiting has waited MAX_LAG. 0: it takes its batch now."""
        now = asyncio.get_running_loop().time()
        eases_in = ARRIVING - (now - self.pressed_at)
        if eases_in <= 0 or self.behind_since is None:
            return 0.0
        return max(0.0, min(eases_in, MAX_LAG - (now - self.behind_since)))

    def batch_size(self) -> int:
        """How many items the next batch takes at most: while webhooks arrive, what costs
        BATCH_SECONDS of CPU at the cost per item of the last full batch."""
        if not self.arriving():
            return BACKLOG_BATCH
        if self.per_item is None:
            return BATCH
        fits = int(BATCH_SECONDS / self.per_item)
        # In steps of FEWEST: the claim's query is built once per size.
        return max(FEWEST, min(BACKLOG_BATCH, fits - fits % FEWEST))

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            if wait := self.give_way():
                await _first(stopping, seconds=wait)
                continue
            limit = self.batch_size()
            began = loop.time()
            # From here on a notice counts: events stored while this batch is taken (on
            # PostgreSQL by another storage thread, after its claim looked) are looked for
            # again rather than left until the next poll.
            self.wakeup.clear()
            try:
                processed, more, cpu = await loop.run_in_executor(
                    self.executor, self._timed, limit
                )
            except Exception:
                # The database is away; the items stay stored and are taken again.
                log.exception("telephony: cannot process stored call events")
                await _first(stopping, seconds=self.poll_interval)
                continue
            if processed == limit:
                # A partial batch's per-batch work is shared by fewer items than it could be.
                self.per_item = cpu / processed
            if more:
                # Items are left (a full batch, or one that failed): behind still.
                continue
            # Caught up with what was stored before this batch's claim; what came since has
            # waited since then at most.
            self.behind_since = began if self.stored_at >= began else None
            if processed:
                await _first(stopping, seconds=GATHER)
                continue
            if self.wakeup.is_set():
                continue
            self.idle.set()
            await _first(stopping, self.wakeup, seconds=self.poll_interval)

    def notify(self, count: int = 1, queued: int = 0) -> None:
        """``count`` requests were stored in one commit, and ``queued`` more wait for the
        next: act on them (now, unless webhooks press: commits of several requests each,
        back to back)."""
        now = asyncio.get_running_loop().time()
        self.stored_at = now
        if count > 1 and queued:
            self.pressed_at = now
        if self.behind_since is None:
            self.behind_since = now
        self.idle.clear()
        self.wakeup.set()

    async def drain(self) -> int:
        """Process everything due now, in the storage thread; how many items."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.process_all)

    def _timed(self, limit: int) -> tuple[int, bool, float]:
        """:meth:`process_due`, and the CPU time it took (seconds)."""
        began = time.thread_time()
        processed, more = self.process_due(limit)
        return processed, more, time.thread_time() - began

    def process_due(self, limit: int = BATCH) -> tuple[int, bool]:
        """Process up to ``limit`` due items in one transaction; how many were taken, and
        whether due items were left.

        Should the batch's transaction itself fail, one item is taken on its own, so that
        a fault no item's guard catches holds up that item only; the rest are left. Should
        that fail as well, the item is marked failed in a transaction of its own (retried
        with backoff, quarantined after the last attempt), and the items after it go on."""
        if not self.adapters:
            return 0, False
        try:
            return self._process(limit)
        except TurnTaken as taken:
            log.warning("telephony: %s; trying again later", taken)
            return 0, False
        except Exception:
            log.exception("telephony: a batch of call events failed; taking them one by one")
        try:
            alone = self._alone()
        except TurnTaken as taken:
            log.warning("telephony: %s; trying again later", taken)
            return 0, False
        return alone, alone > 0

    def _process(self, limit: int) -> tuple[int, bool]:
        with self.recorder.db.transaction() as session:
            take_turn(session, TURN)
            items = inbound.claim(session, limit=limit, sources=self.sources)
            self._act(session, items)
            # And the calls whose legs were waited for, once they have settled: in a
            # savepoint, so that whatever fails there does not hold up the events.
            try:
                with session.begin_nested():
                    _, more = self.recorder.tell_settled(session, self.sources)
            except Exception:
                log.exception("telephony: cannot tell the desk of settled calls now")
                more = False
            return len(items), items.more or more

    def _alone(self) -> int:
        """The first due item on its own; how many (0 or 1). Its claim is committed first,
        so that the attempt counts even when its work fails: then it is marked failed. The
        turn is held across both, so that no other daemon applies a later event of the
        same call in between."""
        db = self.recorder.db
        with turn_held(db, TURN):
            with db.transaction() as session:
                items = inbound.claim(session, limit=1, sources=self.sources)
            if not items:
                return 0
            try:
                with db.transaction() as session:
                    self._act(session, items)
            except Exception as exc:
                (item,) = items
                log.exception("telephony: inbound %d failed on its own", item.id)
                error = f"{type(exc).__name__}: {exc}"
                attempts = self.recorder.policy.max_attempts
                with db.transaction() as session:
                    state = inbound.failed(session, item.id, error=error, max_attempts=attempts)
                log.warning("telephony: inbound %d is %s: %s", item.id, state.value, error)
        return 1

    def _act(self, session: Session, items: Sequence[inbound.Claimed]) -> None:
        read_ahead = self.recorder.read_ahead
        meanings = [read_ahead.take(item.source, item.source_ref) for item in items]
        # Only the requests not read on arrival are loaded.
        unread = [item.id for item, meaning in zip(items, meanings, strict=True) if not meaning]
        raws = inbound.raw_of(session, unread)
        work = [
            Work(item, *(meaning or self._read(item.source, raws[item.id])))
            for item, meaning in zip(items, meanings, strict=True)
        ]
        self.recorder.process(session, work)

    def _read(self, source: str, raw: bytes) -> Meaning:
        """What the kept request says, read again by its adapter."""
        adapter = self.adapters[source]
        request = WebhookRequest.from_raw(raw, route=_route(raw))
        try:
            normalised = fit_for_storage(adapter.normalise(request))
        except (WebhookError, ValueError) as error:
            return Meaning((), f"cannot be read: {error}")
        return Meaning(normalised.events, normalised.ignored)

    def process_all(self) -> int:
        """Process everything that is due now; how many items."""
        total = 0
        while True:
            processed, more = self.process_due(BACKLOG_BATCH)
            total += processed
            # More: items left (each pass takes some), or calls due (each pass tells some).
            if not more:
                return total


def _route(raw: bytes) -> str:
    first_line = raw.partition(b"\r\n")[0].decode("utf-8", "replace")
    return first_line.partition(" ")[2].partition("?")[0]


async def _first(*events: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
