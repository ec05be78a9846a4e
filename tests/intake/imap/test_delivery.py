"""New mail reaches the inbound store: by IDLE within 2 s, by polling, and moved or flagged."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from storage.db import Database
from storage.models import InboundItem, InboundState
from tests.intake.imap.conftest import (
    Deliveries,
    MailboxFactory,
    make_message,
    quick_source,
    running,
)
from tests.peers.dovecot import Dovecot, ImapUser


def inbound(db: Database) -> list[InboundItem]:
    with db.transaction() as session:
        return list(session.scalars(select(InboundItem).order_by(InboundItem.id)))


async def test_idle_stores_new_mail_within_two_seconds_and_flags_it_seen(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user)
    deliveries = Deliveries()
    dovecot.append(imap_user, [make_message()])
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(1)
        message = make_message(message_id="<idle-1@acme.example>")
        appended = time.monotonic()
        await asyncio.to_thread(dovecot.append, imap_user, [message])
        await deliveries.wait_for(2, within=2.0)
        latency = time.monotonic() - appended
    assert latency < 2.0
    uidvalidity = dovecot.uidvalidity(imap_user)
    items = inbound(db)
    assert [(i.source, i.source_ref, i.state) for i in items] == [
        ("imap:support", f"{uidvalidity}:1", InboundState.PENDING),
        ("imap:support", f"{uidvalidity}:2", InboundState.PENDING),
    ]
    assert items[1].message_id == "<idle-1@acme.example>"
    assert items[1].raw == message
    flags = dovecot.messages(imap_user)
    assert flags[b"<idle-1@acme.example>"] == {b"\\Seen"}
    assert len(flags) == 2


async def test_polling_without_idle_stores_new_mail_at_the_interval(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user, idle=False, poll_interval=1.0)
    deliveries = Deliveries()
    dovecot.append(imap_user, [make_message()])
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(1)
        await asyncio.to_thread(dovecot.append, imap_user, [make_message()])
        await deliveries.wait_for(2, within=3.0)
    assert len(inbound(db)) == 2
    assert all(flags == {b"\\Seen"} for flags in dovecot.messages(imap_user).values())


async def test_registered_mail_is_flagged_seen_and_moved_to_the_processed_folder(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user, processed_folder="Registered")
    deliveries = Deliveries()
    dovecot.append(imap_user, [make_message(), make_message()])
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(2)
        await asyncio.to_thread(dovecot.append, imap_user, [make_message()])
        await deliveries.wait_for(3)
    assert dovecot.messages(imap_user, "INBOX") == {}
    moved = dovecot.messages(imap_user, "Registered")
    assert len(moved) == 3
    assert all(b"\\Seen" in flags for flags in moved.values())
    assert len(inbound(db)) == 3


async def test_stopping_is_honoured_within_about_a_second_while_idling(
    db: Database, dovecot: Dovecot, imap_user: ImapUser, mailbox_for: MailboxFactory
) -> None:
    mailbox = mailbox_for(dovecot, imap_user)
    deliveries = Deliveries()
    dovecot.append(imap_user, [make_message()])
    stopping = asyncio.Event()
    task = asyncio.create_task(quick_source(db, mailbox, deliveries).run(stopping))
    await deliveries.wait_for(1)
    asked = time.monotonic()
    stopping.set()
    await asyncio.wait_for(task, timeout=5)
    assert time.monotonic() - asked < 1.5
