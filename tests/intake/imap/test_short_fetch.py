"""A message that arrives short is fetched again, never skipped nor stored cut."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from storage.db import Database
from storage.models import InboundItem
from tests.intake.imap.conftest import (
    Deliveries,
    MailboxFactory,
    make_message,
    quick_source,
    running,
)
from tests.peers.dovecot import Dovecot, ImapUser

_BODY_LITERAL = re.compile(rb"BODY\[\] \{(\d+)\}\r\n")


class Truncator:
    """Rewrites the server's stream so that chosen BODY[] literals lose their second half,
    as a broken server or middlebox would deliver them (sizes stay as announced)."""

    def __init__(self, cut: set[int]) -> None:
        self.cut = cut
        self.seen = 0
        self.buffer = b""
        self.pass_left = 0
        self.skip_left = 0

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = b""
        while self.buffer:
            if self.pass_left or self.skip_left:
                take = min(self.pass_left or self.skip_left, len(self.buffer))
                if self.pass_left:
                    out += self.buffer[:take]
                    self.pass_left -= take
                else:
                    self.skip_left -= take
                self.buffer = self.buffer[take:]
                continue
            match = _BODY_LITERAL.search(self.buffer)
            if match is None:
                # Hold back an announcement whose line is not complete yet.
                start = self.buffer.rfind(b"BODY[")
                if start == -1 or b"\r\n" in self.buffer[start:]:
                    start = len(self.buffer)
                out += self.buffer[:start]
                self.buffer = self.buffer[start:]
                break
            self.seen += 1
            size = int(match.group(1))
            kept = size // 2 if self.seen in self.cut else size
            out += self.buffer[: match.start()] + b"BODY[] {%d}\r\n" % kept
            self.buffer = self.buffer[match.end() :]
            self.pass_left, self.skip_left = kept, size - kept
        return out


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, truncator: Truncator | None
) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(truncator.feed(data) if truncator else data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def cutting_proxy(dovecot: Dovecot) -> AsyncIterator[tuple[int, Truncator]]:
    """A loopback proxy to Dovecot that cuts the second BODY[] literal it carries."""
    truncator = Truncator(cut={2})
    tasks: set[asyncio.Task[None]] = set()

    async def connected(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", dovecot.port)
        tasks.add(asyncio.create_task(_pipe(client_r, server_w, None)))
        tasks.add(asyncio.create_task(_pipe(server_r, client_w, truncator)))

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], truncator
    server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_short_fetch_is_retried_and_the_message_stored_whole(
    db: Database,
    dovecot: Dovecot,
    imap_user: ImapUser,
    mailbox_for: MailboxFactory,
    cutting_proxy: tuple[int, Truncator],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, truncator = cutting_proxy
    mailbox = mailbox_for(dovecot, imap_user, port=port)
    messages = [make_message(), make_message()]
    dovecot.append(imap_user, messages)
    caplog.set_level(logging.WARNING, logger="intake.sources")
    deliveries = Deliveries()
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(2)
    assert truncator.seen >= 3
    assert [d.uid for d in deliveries.items] == [1, 2]
    short = [r.getMessage() for r in caplog.records if "fetched" in r.getMessage()]
    assert len(short) == 1
    assert short[0].startswith("imap:support UID ")
    assert ":2: fetched " in short[0]
    with db.transaction() as session:
        stored = list(session.scalars(select(InboundItem.raw).order_by(InboundItem.id)))
    assert stored == messages
