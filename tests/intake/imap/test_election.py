"""On PostgreSQL one daemon reads a mailbox; another stands by and takes over when it stops."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.engine import URL

from storage.db import Database
from tests.intake.imap.conftest import (
    Deliveries,
    MailboxFactory,
    log_event,
    make_message,
    quick_source,
    running,
)
from tests.peers.dovecot import Dovecot, ImapUser


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_second_daemon_stands_by_until_the_first_stops(
    db_url: URL, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user)
    # Two daemons: two engines, so two sessions compete for the lock.
    first_db, second_db = Database.from_url(db_url), Database.from_url(db_url)
    first, second = Deliveries(), Deliveries()
    try:
        dovecot.append(imap_user, [make_message()])
        async with running(quick_source(first_db, mailbox, first)):
            await first.wait_for(1)
            async with log_event("standing by") as standing_by:
                standby = asyncio.create_task(
                    quick_source(second_db, mailbox, second).run(stopping := asyncio.Event())
                )
                await asyncio.wait_for(standing_by.wait(), timeout=5)
            await asyncio.to_thread(dovecot.append, imap_user, [make_message()])
            await first.wait_for(2)
            assert second.items == []
        await asyncio.to_thread(dovecot.append, imap_user, [make_message()])
        await second.wait_for(1)
        stopping.set()
        await asyncio.wait_for(standby, timeout=5)
    finally:
        first_db.dispose()
        second_db.dispose()
    assert [d.uid for d in first.items] == [1, 2]
    assert [d.uid for d in second.items] == [3]
