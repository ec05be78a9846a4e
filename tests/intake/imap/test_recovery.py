"""Nothing is missed or stored twice across restarts, server outages and renumbering."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy import func, select, text

from intake.sources.imap_sync import MailboxSync, connect
from storage.checkpoints import advance
from storage.db import Database
from storage.inbound import store
from storage.models import InboundItem
from tests.intake.imap.conftest import (
    Deliveries,
    MailboxFactory,
    log_event,
    make_message,
    quick_source,
    running,
)
from tests.peers.dovecot import Dovecot, ImapUser


def stored_message_ids(db: Database) -> list[str | None]:
    with db.transaction() as session:
        return list(session.scalars(select(InboundItem.message_id).order_by(InboundItem.id)))


def message_ids(messages: list[bytes]) -> list[str]:
    return [m.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in messages]


async def test_restart_mid_stream_neither_misses_nor_repeats_mail(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user)
    first, second = [make_message() for _ in range(30)], [make_message() for _ in range(20)]
    deliveries = Deliveries()
    async with running(quick_source(db, mailbox, deliveries)):
        appending = asyncio.create_task(
            asyncio.to_thread(lambda: [dovecot.append(imap_user, [m]) for m in first])
        )
        await deliveries.wait_for(10)
    # Stopped while the first lot was still arriving.
    await appending
    await asyncio.to_thread(dovecot.append, imap_user, second)
    again = Deliveries()
    async with running(quick_source(db, mailbox, again)):
        await again.wait_for(50 - len(deliveries.items))
    assert stored_message_ids(db) == message_ids(first + second)
    assert all(flags == {b"\\Seen"} for flags in dovecot.messages(imap_user).values())


async def test_server_restart_is_one_logged_outage_and_loses_nothing(
    db: Database,
    own_dovecot: Dovecot,
    mailbox_for: MailboxFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = own_dovecot.add_user()
    mailbox = mailbox_for(own_dovecot, user)
    deliveries = Deliveries()
    own_dovecot.append(user, [make_message()])
    caplog.set_level(logging.INFO, logger="intake.sources")
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(1)
        await asyncio.to_thread(own_dovecot.stop)
        # Down long enough for several failed reconnects.
        await asyncio.sleep(1.0)
        await asyncio.to_thread(own_dovecot.start)
        await asyncio.to_thread(own_dovecot.append, user, [make_message()])
        await deliveries.wait_for(2)
    source_records = [r for r in caplog.records if r.name == "intake.sources.imap"]
    warnings = [r for r in source_records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("imap:support: cannot read the mailbox")
    assert [r for r in source_records if "reading the mailbox again" in r.getMessage()]
    assert len(stored_message_ids(db)) == 2


async def test_uidvalidity_change_relists_mail_without_duplicates_or_misses(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user, folder="Support")
    old = [make_message() for _ in range(3)]
    dovecot.append(imap_user, old, folder="Support")
    deliveries = Deliveries()
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(3)
        await asyncio.to_thread(dovecot.recreate_folder, imap_user, "Support")
        new = make_message()
        await asyncio.to_thread(dovecot.append, imap_user, [*old, new], "Support")
        await deliveries.wait_for(7)
    assert stored_message_ids(db) == message_ids([*old, new])
    relisted = deliveries.items[3:]
    assert [d.inbound_id is None for d in relisted] == [True, True, True, False]
    assert all(flags == {b"\\Seen"} for flags in dovecot.messages(imap_user, "Support").values())


async def test_two_thousand_waiting_messages_are_all_stored_once_at_start(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user)
    waiting = [make_message() for _ in range(2000)]
    await asyncio.to_thread(dovecot.append, imap_user, waiting)
    deliveries = Deliveries()
    started = time.monotonic()
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(2000, within=90)
    elapsed = time.monotonic() - started
    print(f"\n2,000 waiting messages stored and acknowledged in {elapsed:.1f} s ({db.dialect})")
    with db.transaction() as session:
        count = session.scalar(select(func.count(func.distinct(InboundItem.message_id))))
    assert count == 2000
    assert stored_message_ids(db) == message_ids(waiting)


def test_nothing_is_flagged_when_the_store_fails(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user, processed_folder="Registered")
    dovecot.append(imap_user, [make_message(message_id="<kept@acme.example>")])
    with db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE inbound RENAME TO inbound_away"))
    client = connect(mailbox, timeout=10)
    try:
        sync = MailboxSync(client, db, mailbox)
        sync.select()
        with pytest.raises(Exception, match="inbound"):
            sync.fetch_new()
        assert dovecot.messages(imap_user) == {b"<kept@acme.example>": set()}
        with db.engine.begin() as connection:
            connection.execute(text("ALTER TABLE inbound_away RENAME TO inbound"))
        assert len(sync.fetch_new().delivered) == 1
    finally:
        client.logout()
    assert dovecot.messages(imap_user) == {}
    assert dovecot.messages(imap_user, "Registered") == {b"<kept@acme.example>": {b"\\Seen"}}


async def test_mail_stored_before_a_crash_is_acknowledged_at_start_not_stored_again(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user, processed_folder="Registered")
    message = make_message(message_id="<crash@acme.example>")
    dovecot.append(imap_user, [message, make_message()])
    uidvalidity = dovecot.uidvalidity(imap_user)
    # What the source had committed when it was killed before flagging and moving UID 1.
    with db.transaction() as session:
        store(
            session,
            source="imap:support",
            source_ref=f"{uidvalidity}:1",
            raw=message,
            message_id="<crash@acme.example>",
        )
        advance(session, "support", uidvalidity=uidvalidity, last_uid=1)
    deliveries = Deliveries()
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(1)
    assert [d.uid for d in deliveries.items] == [2]
    assert dovecot.messages(imap_user) == {}
    assert len(dovecot.messages(imap_user, "Registered")) == 2
    assert len(stored_message_ids(db)) == 2


async def test_database_outage_is_one_logged_outage_and_the_mail_waits_unseen(
    db: Database,
    dovecot: Dovecot,
    imap_user: ImapUser,
    mailbox_for: MailboxFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mailbox = mailbox_for(dovecot, imap_user)
    deliveries = Deliveries()
    dovecot.append(imap_user, [make_message()])
    caplog.set_level(logging.INFO, logger="intake.sources")
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(1)
        with db.engine.begin() as connection:
            connection.execute(text("ALTER TABLE inbound RENAME TO inbound_away"))
        async with log_event("attempt 3 failed") as retried:
            await asyncio.to_thread(
                dovecot.append, imap_user, [make_message(message_id="<waits@acme.example>")]
            )
            await asyncio.wait_for(retried.wait(), timeout=10)
        assert dovecot.messages(imap_user)[b"<waits@acme.example>"] == set()
        with db.engine.begin() as connection:
            connection.execute(text("ALTER TABLE inbound_away RENAME TO inbound"))
        await deliveries.wait_for(2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert dovecot.messages(imap_user)[b"<waits@acme.example>"] == {b"\\Seen"}
    assert stored_message_ids(db)[-1] == "<waits@acme.example>"
