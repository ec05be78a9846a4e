"""Group commit: writes that arrive while a transaction is being written share the next one.

A source answers its peer only after the commit that holds what it received (SMTP 250,
HTTP 2xx). One commit per item costs a commit's CPU and an fsync per item; with a
:class:`GroupCommit`, callers that come while a batch is being written wait for the next
batch and share its commit. Each caller is still answered only after that commit, with
its own result.

One bad item must not cost the others their write: a batch whose transaction fails is
written again one item at a time, and each caller is answered by its own item's outcome.
When the database itself is unavailable (``unavailable`` says so of the error: locked
past its timeout, its disk full, the server gone), no item is at fault: every caller is
told at once, rather than after one more failed attempt (and one more lock timeout) each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Items queued by coroutines, written in batches on ``executor``.

    ``write_batch`` runs on the executor: it writes the items it is given in one
    transaction and returns their results in the same order, or raises when that
    transaction did not commit. ``committed`` is called in the event loop after each
    transaction that committed, with the number of items it held and the number already
    queued for the next. ``unavailable`` tells an error of the database itself from one
    that an item may have caused. ``max_batch`` bounds the items of one transaction.
    """

    def __init__(
        self,
        name: str,
        write_batch: Callable[[Sequence[Item]], Sequence[Result]],
        executor: Executor,
        *,
        max_batch: int = 256,
        committed: Callable[[int, int], None] | None = None,
        unavailable: Callable[[Exception], bool] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.name = name
        self.write_batch = write_batch
        self.executor = executor
        self.max_batch = max_batch
        self.committed = committed
        self.unavailable = unavailable
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Callers that have handed over an item and are not answered yet."""
        return self._waiting

    async def write(self, item: Item) -> Result:
        """Write ``item``; its result once the transaction holding it has committed,
        or the exception that kept it from being written."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain(), name=f"{self.name}-writer")
        self._waiting += 1
        try:
            return await future
        finally:
            self._waiting -= 1

    async def idle(self) -> None:
        """Wait until every item queued so far has been written and answered."""
        while self._draining is not None:
            await asyncio.shield(self._draining)

    async def _drain(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._pending:
                # One turn of the loop first: the callers just answered and the requests
                # already read (their handlers ready to run) queue now and share this
                # batch, rather than each waiting a whole commit for the next one.
                await asyncio.sleep(0)
                # A caller that has gone (its task cancelled) before its item was taken
                # is not written: nobody would be told that it was.
                taken = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                batch = [(item, future) for item, future in taken if not future.done()]
                if batch:
                    await self._write(batch)
                batch = []
        finally:
            self._draining = None
            # Only when this task ends early (cancelled as the loop closes): whoever still
            # waits is told that nothing was confirmed, never that it was.
            for _, future in batch + self._pending:
                future.cancel()
            self._pending.clear()

    async def _write(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for item, _ in batch]
        try:
            results = await loop.run_in_executor(self.executor, self._write_all, items)
        except Exception as error:
            if len(batch) == 1 or (self.unavailable is not None and self.unavailable(error)):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                return
            log.warning(
                "%s: a transaction of %d items failed (%s); writing each alone",
                self.name,
                len(batch),
                error,
            )
            for one in batch:
                if not one[1].done():
                    await self._write([one])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
        if self.committed is not None:
            self.committed(len(batch), len(self._pending))

    def _write_all(self, items: Sequence[Item]) -> Sequence[Result]:
        results = self.write_batch(items)
        if len(results) != len(items):
            # Raised before the caller can be answered with someone else's result.
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
        return results
