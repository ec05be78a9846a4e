from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from intake.desk import Desk, DeskRules, Environment
from intake.directory import add_contact, add_customer, add_staff
from notifiers.email import EmailChannel, PreparedMail, Sender
from notifiers.outbox import OutboxWorker
from notifiers.policy import MailPolicy
from notifiers.render import environment
from notifiers.transports import SmtpSettings, SmtpTransport, Transport
from storage.db import Database
from storage.models import JournalEntry, Kind, OutboxItem, Priority, Ticket
from tests.intake.conftest import register as register_request
from tests.peers.smtp import SmtpPeer
from tests.peers.telegram import BotApi

STAFF_CHAT = -100777
NO_ENVIRONMENT = Environment()
RULES = DeskRules(message_id_domain="intake.test", staff_chats=(STAFF_CHAT,))


class Clock:
    """The workers' and the desk's time, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


@dataclass
class Seed:
    customer_id: int
    contact_id: int
    staff_id: int


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def desk(clock: Clock) -> Desk:
    return Desk(RULES, clock=clock)


@pytest.fixture
def seed(db: Database) -> Seed:
    with db.transaction() as session:
        customer = add_customer(session, "Acme", package="standard", known_packages=RULES.packages)
        contact = add_contact(
            session, "Acme", email="anna@acme.example", name="Anna Petrova", responsible=True
        )
        staff = add_staff(session, "alice", telegram_chat_id=4242)
    return Seed(customer.id, contact.id, staff.id)


def register(
    db: Database,
    desk: Desk,
    seed: Seed,
    *,
    subject: str = "Softphone does not ring",
    kind: Kind = Kind.INCIDENT,
    description: str = "Calls arrive but the softphone stays silent.",
    environment: Environment = NO_ENVIRONMENT,
    message_id: str | None = "<c1@acme.example>",
    priority: Priority | None = None,
) -> Ticket:
    return register_request(
        db,
        desk,
        seed,  # carries the customer and contact ids the intake helper uses
        subject=subject,
        kind=kind,
        description=description,
        environment=environment,
        message_id=message_id,
        priority=priority,
    )


def rows(db: Database, channel: str) -> list[OutboxItem]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(OutboxItem).where(OutboxItem.channel == channel).order_by(OutboxItem.id)
            )
        )


def journal(db: Database, action: str) -> list[JournalEntry]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(JournalEntry).where(JournalEntry.action == action).order_by(JournalEntry.id)
            )
        )


SUPPORT = Sender("support@intake.test", "OmniVOX Support")


def email_worker(
    db: Database,
    transport: Transport,
    clock: Clock,
    *,
    max_attempts: int = 8,
    rate_limit_per_hour: int = 10,
    templates_dir: Path | None = None,
) -> OutboxWorker[PreparedMail]:
    channel = EmailChannel(
        transport,
        environment(templates_dir),
        sender=SUPPORT,
        policy=MailPolicy(rate_limit_per_hour=rate_limit_per_hour),
    )
    return OutboxWorker(db, channel, max_attempts=max_attempts, clock=clock)


def smtp_transport(peer: SmtpPeer, **settings: Any) -> SmtpTransport:
    return SmtpTransport(
        SmtpSettings(
            **{"host": "127.0.0.1", "port": peer.port, "security": "none", "timeout": 5, **settings}
        )
    )


@pytest.fixture
async def smtp_peer() -> AsyncIterator[SmtpPeer]:
    peer = SmtpPeer()
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
async def bot_api() -> AsyncIterator[BotApi]:
    api = BotApi()
    await api.start()
    yield api
    await api.stop()
