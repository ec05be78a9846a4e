"""Group commit: callers share transactions, and each is answered by its own outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import pytest

from intake.groupcommit import GroupCommit
from intake.sources.smtp import ReceivedMail, store_mails
from storage import inbound
from storage.db import Database


class Refused(Exception):
    """What the fake store raises for a transaction holding a refused item."""


class FakeStore:
    """Writes batches of strings; a batch is durable (``committed``) only once it returns.

    ``gate`` closed holds the storage thread inside its next transaction, so that the
    callers who come meanwhile queue for the one after."""

    def __init__(self, refused: frozenset[str] = frozenset()) -> None:
        self.refused = refused
        self.batches: list[list[str]] = []
        self.committed: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def write(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        self.entered.set()
        self.gate.wait()
        if self.refused.intersection(items):
            raise Refused(", ".join(sorted(self.refused.intersection(items))))
        self.committed.extend(items)
        return [item.upper() for item in items]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


@asynccontextmanager
async def held(store: FakeStore) -> AsyncIterator[None]:
    """The storage thread held inside a transaction (of the item written first)."""
    store.gate.clear()
    store.entered.clear()
    try:
        yield
    finally:
        store.gate.set()


async def queued(writer: GroupCommit[str, str], *items: str) -> list[asyncio.Task[str]]:
    """Callers writing ``items``, each run until it waits for its answer."""
    tasks = [asyncio.create_task(writer.write(item)) for item in items]
    await asyncio.sleep(0)
    assert writer.waiting >= len(items)
    return tasks


async def test_callers_that_come_during_a_write_share_the_next_commit(
    executor: ThreadPoolExecutor,
) -> None:
    store = FakeStore()
    commits: list[tuple[int, int]] = []
    writer = GroupCommit(
        "test",
        store.write,
        executor,
        committed=lambda count, queued: commits.append((count, queued, len(store.committed))),
    )
    async with held(store):
        first = await queued(writer, "a")
        await asyncio.to_thread(store.entered.wait)
        rest = await queued(writer, "b", "c", "d")
    answers = await asyncio.gather(*first, *rest)
    assert answers == ["A", "B", "C", "D"]
    assert store.batches == [["a"], ["b", "c", "d"]]
    # Called after each commit, when the commit's items are durable, with their number and
    # the number queued for the next.
    assert commits == [(1, 3, 1), (3, 0, 4)]


async def test_no_caller_is_answered_before_the_commit_that_holds_its_item(
    executor: ThreadPoolExecutor,
) -> None:
    store = FakeStore()
    writer = GroupCommit("test", store.write, executor)
    answered: list[tuple[str, list[str]]] = []

    async def write(item: str) -> None:
        await writer.write(item)
        answered.append((item, list(store.committed)))

    async with held(store):
        tasks = [asyncio.create_task(write(item)) for item in ("a", "b")]
        await asyncio.to_thread(store.entered.wait)
        # The storage thread is inside the transaction: it has not committed.
        await asyncio.sleep(0)
        assert answered == []
        assert writer.waiting == 2
    await asyncio.gather(*tasks)
    for item, durable in answered:
        assert item in durable


async def test_callers_that_come_as_a_commit_is_answered_share_the_next_one(
    executor: ThreadPoolExecutor,
) -> None:
    store = FakeStore()
    late: list[asyncio.Task[str]] = []

    def committed(count: int, queued: int) -> None:
        # After the first commit, a caller comes in the loop's turn in which it is
        # answered, as a request read meanwhile whose handler is ready to run.
        if not late:
            late.append(asyncio.create_task(writer.write("c")))

    writer = GroupCommit("test", store.write, executor, committed=committed)
    async with held(store):
        first = await queued(writer, "a")
        await asyncio.to_thread(store.entered.wait)
        rest = await queued(writer, "b")
    answers = await asyncio.gather(*first, *rest)
    assert [*answers, await late[0]] == ["A", "B", "C"]
    assert store.batches == [["a"], ["b", "c"]]


async def test_a_batch_is_no_larger_than_max_batch(executor: ThreadPoolExecutor) -> None:
    store = FakeStore()
    writer = GroupCommit("test", store.write, executor, max_batch=2)
    async with held(store):
        first = await queued(writer, "a")
        await asyncio.to_thread(store.entered.wait)
        rest = await queued(writer, "b", "c", "d", "e", "f")
    await asyncio.gather(*first, *rest)
    assert store.batches == [["a"], ["b", "c"], ["d", "e"], ["f"]]


async def test_one_bad_item_fails_only_its_own_caller(executor: ThreadPoolExecutor) -> None:
    store = FakeStore(refused=frozenset({"bad"}))
    commits: list[int] = []
    writer = GroupCommit(
        "test",
        store.write,
        executor,
        committed=lambda count, queued: commits.append(len(store.committed)),
    )
    async with held(store):
        first = await queued(writer, "a")
        await asyncio.to_thread(store.entered.wait)
        rest = await queued(writer, "b", "bad", "c")
    answers = await asyncio.gather(*first, *rest, return_exceptions=True)
    assert answers[:2] == ["A", "B"]
    assert isinstance(answers[2], Refused)
    assert answers[3] == "C"
    # The shared transaction failed; each of its items was then written alone.
    assert store.batches == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]
    assert store.committed == ["a", "b", "c"]
    assert commits == [1, 2, 3]


async def test_a_failing_store_fails_every_caller_and_confirms_nothing(
    executor: ThreadPoolExecutor,
) -> None:
    store = FakeStore(refused=frozenset({"a", "b", "c"}))
    commits: list[int] = []
    writer = GroupCommit(
        "test", store.write, executor, committed=lambda count, queued: commits.append(1)
    )
    async with held(store):
        first = await queued(writer, "a")
        await asyncio.to_thread(store.entered.wait)
        rest = await queued(writer, "b", "c")
    answers = await asyncio.gather(*first, *rest, return_exceptions=True)
    assert [type(answer) for answer in answers] == [Refused, Refused, Refused]
    assert store.committed == []
    assert commits == []


class Unavailable(Exception):
    """What the fake store raises when its database is away."""


class AwayStore(FakeStore):
    def write(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        self.entered.set()
        self.gate.wait()
        raise Unavailable("database is locked")


async def test_with_the_database_unavailable_every_caller_is_told_at_once(
    executor: ThreadPoolExecutor,
) -> None:
    # No item is at fault: the batch is not written again item by item (each attempt
    # would wait out the database's lock timeout once more).
    store = AwayStore()
    writer = GroupCommit(
        "test",
        store.write,
        executor,
        unavailable=lambda error: isinstance(error, Unavailable),
    )
    async with held(store):
        first = await queued(writer, "a")
        await asyncio.to_thread(store.entered.wait)
        rest = await queued(writer, "b", "c")
    answers = await asyncio.gather(*first, *rest, return_exceptions=True)
    assert [type(answer) for answer in answers] == [Unavailable] * 3
    assert store.batches == [["a"], ["b", "c"]]


async def test_a_caller_gone_before_its_turn_is_not_written(
    executor: ThreadPoolExecutor,
) -> None:
    store = FakeStore()
    writer = GroupCommit("test", store.write, executor)
    async with held(store):
        first = await queued(writer, "a")
        await asyncio.to_thread(store.entered.wait)
        gone, stays = await queued(writer, "gone", "stays")
        gone.cancel()
    assert await asyncio.gather(*first, stays) == ["A", "STAYS"]
    assert store.batches == [["a"], ["stays"]]
    assert writer.waiting == 0


async def test_idle_returns_once_every_caller_is_answered(executor: ThreadPoolExecutor) -> None:
    store = FakeStore()
    writer = GroupCommit("test", store.write, executor)
    async with held(store):
        tasks = await queued(writer, "a", "b")
        idle = asyncio.create_task(writer.idle())
        await asyncio.to_thread(store.entered.wait)
        assert not idle.done()
    await idle
    assert all(task.done() for task in tasks)
    assert store.committed == ["a", "b"]


async def test_duplicates_in_one_batch_are_stored_once(
    db: Database, executor: ThreadPoolExecutor
) -> None:
    """The SMTP listener's store: a mail delivered twice within one transaction."""
    gate = threading.Event()
    entered = threading.Event()

    def store(mails: Sequence[ReceivedMail]) -> list[inbound.Stored]:
        if not entered.is_set():
            entered.set()
            gate.wait()
        return store_mails(db, mails)

    writer = GroupCommit("smtp", store, executor)
    first = ReceivedMail("<first@acme.example>", "<first@acme.example>", b"Subject: 1\r\n")
    twice = ReceivedMail("<twice@acme.example>", "<twice@acme.example>", b"Subject: 2\r\n")
    holding = asyncio.create_task(writer.write(first))
    await asyncio.to_thread(entered.wait)
    tasks = [asyncio.create_task(writer.write(mail)) for mail in (twice, first, twice)]
    await asyncio.sleep(0)
    assert writer.waiting == 4
    gate.set()
    stored = await holding
    new, again, repeated = await asyncio.gather(*tasks)
    assert (stored.duplicate, new.duplicate, again.duplicate, repeated.duplicate) == (
        False,
        False,
        True,
        True,
    )
    assert (again.id, repeated.id) == (stored.id, new.id)
    assert stored.id != new.id
