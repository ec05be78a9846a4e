from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from intake.desk import Desk, DeskRules, NewRequest, SupportPackage
from intake.directory import add_contact, add_customer
from storage.db import Database
from storage.models import Channel, Kind, Priority, Ticket

HOURS = {Priority.P1: 1.0, Priority.P2: 4.0, Priority.P3: 8.0, Priority.P4: 24.0}
RULES = DeskRules(
    packages={
        "basic": SupportPackage("basic", -1, HOURS, HOURS),
        "standard": SupportPackage("standard", 0, HOURS, HOURS),
        "premium": SupportPackage("premium", 1, HOURS, HOURS),
    },
    message_id_domain="intake.test",
)


@dataclass
class Seed:
    customer_id: int
    contact_id: int


@pytest.fixture
def desk() -> Desk:
    return Desk(RULES)


@pytest.fixture
def seed(db: Database) -> Seed:
    with db.transaction() as session:
        customer = add_customer(session, "Acme", package="standard", known_packages=RULES.packages)
        contact = add_contact(
            session, "Acme", email="anna@acme.example", name="Anna", responsible=True
        )
    return Seed(customer.id, contact.id)


def register(
    db: Database,
    desk: Desk,
    seed: Seed,
    *,
    kind: Kind = Kind.INCIDENT,
    subject: str = "Help",
    **fields: Any,
) -> Ticket:
    """An email request from the seeded contact; ``fields`` go into the NewRequest."""
    with db.transaction() as session:
        return desk.register(
            session,
            NewRequest(
                subject=subject,
                channel=Channel.EMAIL,
                customer_id=seed.customer_id,
                contact_id=seed.contact_id,
                kind=kind,
                **fields,
            ),
            actor="test",
        )
