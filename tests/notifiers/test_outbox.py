"""Delivery through the outbox: retries with backoff, dead letters, and an SMTP outage that
delays mail but neither loses nor doubles it."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from intake.desk import Desk
from notifiers import outbox
from storage.db import Database
from storage.models import OutboxState, Status
from storage.suppressions import is_suppressed
from tests.notifiers.conftest import (
    Clock,
    Seed,
    email_worker,
    journal,
    register,
    rows,
    smtp_transport,
)
from tests.peers.smtp import SmtpPeer


async def test_smtp_outage_delays_mail_and_delivers_each_exactly_once_with_its_message_id(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    first = register(db, desk, seed, subject="Softphone does not ring")
    second = register(db, desk, seed, subject="Chat widget is blank")
    queued = {row.id: row.message_id for row in rows(db, "email")}
    worker = email_worker(db, smtp_transport(smtp_peer), clock)
    await smtp_peer.stop()

    outcomes = await worker.deliver_due()

    assert [o.state for o in outcomes] == [OutboxState.PENDING, OutboxState.PENDING]
    assert [(r.attempts, r.next_attempt_at) for r in rows(db, "email")] == [
        (1, clock.now + dt.timedelta(seconds=30))
    ] * 2
    assert "127.0.0.1" in (rows(db, "email")[0].last_error or "")
    assert await worker.deliver_due() == []  # not due before the backoff ends

    clock.advance(dt.timedelta(seconds=30))
    await worker.deliver_due()
    assert [(r.attempts, r.next_attempt_at) for r in rows(db, "email")] == [
        (2, clock.now + dt.timedelta(seconds=60))
    ] * 2

    await smtp_peer.start()
    clock.advance(dt.timedelta(seconds=60))
    outcomes = await worker.deliver_due()
    clock.advance(dt.timedelta(hours=2))
    assert await worker.deliver_due() == []

    assert [o.state for o in outcomes] == [OutboxState.SENT, OutboxState.SENT]
    received = {m.message["Message-ID"]: m for m in smtp_peer.received}
    assert len(smtp_peer.received) == 2
    assert set(received) == set(queued.values())
    assert [r.state for r in rows(db, "email")] == [OutboxState.SENT] * 2
    tags = sorted(str(m.message["Subject"]).split()[0] for m in smtp_peer.received)
    assert tags == [f"[{first.number}]", f"[{second.number}]"]


async def test_temporary_refusal_is_retried_and_the_mail_arrives_once(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    register(db, desk, seed)
    worker = email_worker(db, smtp_transport(smtp_peer), clock)
    smtp_peer.recorder.temporary_failures = 1

    [refused] = await worker.deliver_due()
    clock.advance(dt.timedelta(seconds=30))
    [delivered] = await worker.deliver_due()

    assert (refused.state, delivered.state) == (OutboxState.PENDING, OutboxState.SENT)
    [row] = rows(db, "email")
    assert row.attempts == 2
    assert row.last_error is None
    assert row.sent_at == clock.now
    assert [m.message["Message-ID"] for m in smtp_peer.received] == [row.message_id]


async def test_row_of_a_worker_that_died_mid_send_is_sent_again_after_its_lease(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    register(db, desk, seed)
    with db.transaction() as session:
        [claimed] = outbox.claim(session, "email", now=clock.now)
    worker = email_worker(db, smtp_transport(smtp_peer), clock)

    assert await worker.deliver_due() == []  # another worker holds the lease
    clock.advance(outbox.DEFAULT_LEASE)
    [outcome] = await worker.deliver_due()

    assert (outcome.item_id, outcome.state) == (claimed, OutboxState.SENT)
    assert len(smtp_peer.received) == 1


async def test_mail_is_dead_lettered_after_max_attempts_with_its_last_error_and_can_be_retried(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    register(db, desk, seed)
    worker = email_worker(db, smtp_transport(smtp_peer), clock, max_attempts=3)
    await smtp_peer.stop()

    states = []
    for _ in range(3):
        [outcome] = await worker.deliver_due()
        states.append(outcome.state)
        clock.advance(dt.timedelta(hours=1))

    assert states == [OutboxState.PENDING, OutboxState.PENDING, OutboxState.DEAD]
    [row] = rows(db, "email")
    assert row.attempts == 3
    assert row.next_attempt_at is None
    assert row.last_error
    assert "127.0.0.1" in row.last_error
    assert await worker.deliver_due() == []

    with db.transaction() as session:
        assert outbox.retry_dead(session) == 1
    await smtp_peer.start()
    [outcome] = await worker.deliver_due()

    assert outcome.state is OutboxState.SENT
    assert [m.message["Message-ID"] for m in smtp_peer.received] == [row.message_id]


async def test_unknown_mailbox_is_dead_lettered_at_once_and_never_mailed_again(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    ticket = register(db, desk, seed)
    worker = email_worker(db, smtp_transport(smtp_peer), clock)
    smtp_peer.recorder.refused_recipients["anna@acme.example"] = "550 5.1.1 No such user"

    [outcome] = await worker.deliver_due()
    with db.transaction() as session:
        desk.set_status(session, ticket.number, Status.IN_PROGRESS, actor="alice")
    [later] = await worker.deliver_due()

    assert outcome.state is OutboxState.DEAD
    first = rows(db, "email")[0]
    assert first.attempts == 1
    assert first.last_error == "550 5.1.1 No such user"
    [entry] = journal(db, "address_suppressed")
    assert entry.details["reason"] == "hard bounce: 550 5.1.1 No such user"
    assert later.state is OutboxState.WITHHELD
    assert smtp_peer.received == []


async def test_policy_refusal_is_dead_lettered_but_does_not_suppress_the_address(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    register(db, desk, seed)
    worker = email_worker(db, smtp_transport(smtp_peer), clock)
    smtp_peer.recorder.refused_recipients["anna@acme.example"] = "550 5.7.1 Sender blocked"

    [outcome] = await worker.deliver_due()

    assert outcome.state is OutboxState.DEAD
    assert journal(db, "address_suppressed") == []
    with db.transaction() as session:
        assert not is_suppressed(session, "anna@acme.example")


def test_retry_refuses_a_row_that_is_not_dead_or_withheld(
    db: Database, desk: Desk, seed: Seed
) -> None:
    register(db, desk, seed)
    [row] = rows(db, "email")

    with db.transaction() as session, pytest.raises(outbox.OutboxError) as refused:
        outbox.retry(session, row.id)

    assert str(refused.value) == f"outbox row {row.id} is pending; nothing to retry"


async def test_worker_service_delivers_queued_mail_and_stops_when_asked(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    worker = email_worker(db, smtp_transport(smtp_peer), clock)
    worker.interval = 0.05
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))

    register(db, desk, seed)
    await smtp_peer.wait_for(1)
    stopping.set()
    await asyncio.wait_for(running, timeout=10)

    assert worker.name == "outbox-email"
    assert [r.state for r in rows(db, "email")] == [OutboxState.SENT]
    assert len(smtp_peer.received) == 1


async def test_concurrent_workers_deliver_each_mail_once(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    for number in range(6):
        register(db, desk, seed, subject=f"request {number}")
    worker = email_worker(db, smtp_transport(smtp_peer), clock)
    worker.workers, worker.batch, worker.interval = 3, 1, 0.05
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))

    await smtp_peer.wait_for(6)
    stopping.set()
    await asyncio.wait_for(running, timeout=10)

    message_ids = [m.message["Message-ID"] for m in smtp_peer.received]
    assert sorted(message_ids) == sorted(r.message_id for r in rows(db, "email"))
    assert {r.state for r in rows(db, "email")} == {OutboxState.SENT}
