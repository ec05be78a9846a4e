"""What automatic mail is never sent, and that each withheld mail is journaled."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import delete

from intake.desk import Desk
from notifiers import outbox
from notifiers.transports import FolderTransport
from storage.db import Database
from storage.models import Contact, OutboxState, Suppression
from storage.suppressions import is_suppressed, suppress
from tests.notifiers.conftest import Clock, Seed, email_worker, journal, register, rows


def _set_email(db: Database, seed: Seed, address: str) -> None:
    with db.transaction() as session:
        contact = session.get(Contact, seed.contact_id)
        assert contact is not None
        contact.email = address


@pytest.mark.parametrize(
    "address",
    [
        "noreply@acme.example",
        "no-reply@acme.example",
        "No_Reply+tickets@acme.example",
        "do-not-reply@acme.example",
        "MAILER-DAEMON@mx.acme.example",
        "postmaster@acme.example",
    ],
)
async def test_mail_to_a_machine_address_is_withheld_and_journaled(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path, address: str
) -> None:
    _set_email(db, seed, address)
    ticket = register(db, desk, seed)

    [outcome] = await email_worker(db, FolderTransport(tmp_path / "out"), clock).deliver_due()

    assert outcome.state is OutboxState.WITHHELD
    assert not (tmp_path / "out").exists()
    [entry] = journal(db, "notification_withheld")
    assert entry.ticket_id == ticket.id
    assert entry.details["recipient"] == address
    assert entry.details["reason"] == f"{address} is a no-reply or system address"


async def test_a_person_whose_name_starts_like_a_machine_is_mailed(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path
) -> None:
    _set_email(db, seed, "noreplyanna@acme.example")
    register(db, desk, seed)

    [outcome] = await email_worker(db, FolderTransport(tmp_path / "out"), clock).deliver_due()

    assert outcome.state is OutboxState.SENT


async def test_hard_bounced_address_is_never_mailed_even_if_queued_before_the_bounce(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path
) -> None:
    register(db, desk, seed)
    with db.transaction() as session:
        suppress(session, "Anna@Acme.example", "hard bounce: 550 5.1.1 user unknown")
        suppress(session, "anna@acme.example", "a second bounce")
        assert is_suppressed(session, "ANNA@acme.example")

    [outcome] = await email_worker(db, FolderTransport(tmp_path / "out"), clock).deliver_due()

    assert outcome.state is OutboxState.WITHHELD
    [row] = rows(db, "email")
    assert row.last_error == (
        "anna@acme.example is suppressed: hard bounce: 550 5.1.1 user unknown"
    )
    [entry] = journal(db, "notification_withheld")
    assert entry.details["template"] == "acknowledgement"
    assert entry.details["outbox_id"] == row.id


async def test_automatic_mail_to_one_recipient_is_rate_limited_per_hour(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path
) -> None:
    worker = email_worker(
        db, FolderTransport(tmp_path / "out", clock), clock, rate_limit_per_hour=2
    )
    for subject in ("one", "two", "three"):
        register(db, desk, seed, subject=subject)

    outcomes = await worker.deliver_due()
    clock.advance(dt.timedelta(minutes=59))
    register(db, desk, seed, subject="four")
    [fourth] = await worker.deliver_due()
    clock.advance(dt.timedelta(minutes=2))
    register(db, desk, seed, subject="five")
    [fifth] = await worker.deliver_due()

    assert [o.state for o in outcomes] == [
        OutboxState.SENT,
        OutboxState.SENT,
        OutboxState.WITHHELD,
    ]
    assert fourth.state is OutboxState.WITHHELD
    assert fifth.state is OutboxState.SENT
    assert len(list((tmp_path / "out").iterdir())) == 3
    reasons = [e.details["reason"] for e in journal(db, "notification_withheld")]
    assert (
        reasons
        == ["anna@acme.example already got 2 automatic mails in the last hour (limit 2)"] * 2
    )


async def test_withheld_mail_can_be_released_by_staff(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path
) -> None:
    with db.transaction() as session:
        suppress(session, "anna@acme.example", "complaint")
    register(db, desk, seed)
    worker = email_worker(db, FolderTransport(tmp_path / "out"), clock)
    [withheld] = await worker.deliver_due()
    with db.transaction() as session:
        session.execute(delete(Suppression))
        outbox.retry(session, withheld.item_id)

    [released] = await worker.deliver_due()

    assert released.state is OutboxState.SENT
