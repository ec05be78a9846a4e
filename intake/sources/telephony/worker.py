"""Stored call events become call records and tickets.

The HTTP edge only keeps each verified request and answers; this worker claims the kept
requests of the telephony sources in the order they arrived, reads each again with its
adapter and hands its events to the call recorder. The edge wakes it after each commit;
a failed item comes back after its backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor

from intake.calls import CallRecorder, Work, source_name
from intake.sources.telephony.base import TelephonyAdapter, WebhookError, WebhookRequest
from storage import inbound

log = logging.getLogger(__name__)

# Items per transaction. The call bookkeeping of a batch is a few statements, so a batch
# is short; on SQLite the webhooks' own commits, which wait for the one write lock, are
# held up by one batch at most.
BATCH = 16
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
        # The storage thread(s) of the HTTP app: on SQLite one writer for the webhooks'
        # commits and this worker's, taking turns.
        self.executor = executor
        self.poll_interval = poll_interval
        self.wakeup = asyncio.Event()
        # Set while nothing stored is waiting to be processed.
        self.idle = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            try:
                processed = await loop.run_in_executor(self.executor, self.process_due)
            except Exception:
                # The database is away; the items stay stored and are taken again.
                log.exception("telephony: cannot process stored call events")
                processed = 0
            if processed == BATCH:
                continue
            if processed:
                await _first(stopping, seconds=GATHER)
                continue
            self.idle.set()
            self.wakeup.clear()
            await _first(stopping, self.wakeup, seconds=self.poll_interval)

    def notify(self) -> None:
        """New events are stored: act on them now."""
        self.idle.clear()
        self.wakeup.set()

    async def drain(self) -> int:
        """Process everything due now, in the storage thread; how many items."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.process_all)

    def process_due(self) -> int:
        """Process up to BATCH due items in one transaction; how many were taken.

        Should the batch's transaction itself fail, one item is taken on its own, so that
        a fault no item's guard catches holds up that item only."""
        if not self.adapters:
            return 0
        try:
            return self._process(BATCH)
        except Exception:
            log.exception("telephony: a batch of call events failed; taking them one by one")
        return self._process(1)

    def _process(self, limit: int) -> int:
        with self.recorder.db.transaction() as session:
            items = inbound.claim(session, limit=limit, sources=list(self.adapters))
            work = []
            for item in items:
                adapter = self.adapters[item.source]
                request = WebhookRequest.from_raw(item.raw, route=_route(item.raw))
                try:
                    normalised = adapter.normalise(request)
                except (WebhookError, ValueError) as error:
                    inbound.ignored(session, item, reason=f"cannot be read: {error}")
                    continue
                work.append(Work(item, normalised.events, normalised.ignored))
            self.recorder.process(session, work)
            return len(items)

    def process_all(self) -> int:
        """Process everything that is due now; how many items."""
        total = 0
        while processed := self.process_due():
            total += processed
        return total


def _route(raw: bytes) -> str:
    first_line = raw.partition(b"\r\n")[0].decode("utf-8", "replace")
    return first_line.partition(" ")[2].partition("?")[0]


async def _first(*events: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
