"""Fixtures of the IMAP source's tests: a real Dovecot, a user per test, a running source."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from intake.config import ImapMailbox
from intake.sources.imap import ImapSource
from intake.sources.imap_sync import Delivered
from storage.db import Database
from tests.peers.dovecot import Dovecot, DovecotMissing, ImapUser

_serial = itertools.count(1)


def make_message(
    subject: str = "Softphone does not ring", *, message_id: str | None = None
) -> bytes:
    number = next(_serial)
    message_id = message_id or f"<m{number}.{id(subject)}@acme.example>"
    return (
        f"From: Anna <anna@acme.example>\r\n"
        f"To: support@support.example\r\n"
        f"Subject: {subject} #{number}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
        f"\r\n"
        f"AgentZone 3.2, Windows 11, Chrome 120.\r\n"
    ).encode()


def start_dovecot(**options: Any) -> Dovecot:
    try:
        server = Dovecot(**options)
    except DovecotMissing as error:
        pytest.fail(str(error), pytrace=False)
    server.start()
    return server


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    server = start_dovecot()
    yield server
    server.destroy()


@pytest.fixture
def own_dovecot() -> Iterator[Dovecot]:
    """A server of the test's own, for tests that stop or restart it."""
    server = start_dovecot()
    yield server
    server.destroy()


@pytest.fixture
def imap_user(dovecot: Dovecot) -> ImapUser:
    return dovecot.add_user()


MailboxFactory = Callable[..., ImapMailbox]


@pytest.fixture
def mailbox_for(monkeypatch: pytest.MonkeyPatch) -> MailboxFactory:
    """Settings of a mailbox of ``user`` on ``server``, as read from a config file."""

    def make(server: Dovecot, user: ImapUser, **keys: Any) -> ImapMailbox:
        variable = f"IMAP_PASSWORD_{user.name.upper()}"
        monkeypatch.setenv(variable, user.password)
        table = {
            "name": "support",
            "host": "127.0.0.1",
            "port": server.port,
            "security": "none",
            "username": user.name,
            "password_env": variable,
        }
        return ImapMailbox.model_validate(table | keys)

    return make


class Deliveries:
    """What a source reported as stored and acknowledged, awaitable by count."""

    def __init__(self) -> None:
        self.items: list[Delivered] = []
        self._changed = asyncio.Event()

    def __call__(self, batch: Sequence[Delivered]) -> None:
        self.items.extend(batch)
        self._changed.set()

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()


class LogEvent(logging.Handler):
    """An asyncio event set when the IMAP source logs a line containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.loop.call_soon_threadsafe(self.event.set)


@asynccontextmanager
async def log_event(text: str) -> AsyncIterator[asyncio.Event]:
    handler = LogEvent(text)
    logger = logging.getLogger("intake.sources")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def quick_source(
    db: Database, mailbox: ImapMailbox, deliveries: Deliveries, **options: Any
) -> ImapSource:
    """A source with test-sized waits: reconnects and elections in tenths of a second."""
    timings: dict[str, float] = {
        "reconnect_delay": 0.1,
        "reconnect_max_delay": 0.5,
        "leader_retry": 0.1,
        "incomplete_retry": 0.5,
    }
    return ImapSource(db, mailbox, on_delivered=deliveries, **(timings | options))


@asynccontextmanager
async def running(source: ImapSource) -> AsyncIterator[asyncio.Task[None]]:
    stopping = asyncio.Event()
    task = asyncio.create_task(source.run(stopping))
    try:
        yield task
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=5)
