"""Who wrote a mail: a known contact by address, else a customer by mail domain, else unknown.

An unknown sender becomes a new contact of the configured "unassigned" customer, or is
refused (the pipeline then answers politely), as ``[pipeline] unknown_sender`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Select, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from intake.desk import DeskError
from intake.directory import LANGUAGES, normalize_email
from storage.models import Contact, utcnow

MAX_ADDRESS = 320  # RFC 5321's limit, and the width of the address columns

# Asked of every mail; built once: building a statement costs more than running it.
_CONTACTS = Contact.metadata.tables["contacts"]
_CUSTOMERS = Contact.metadata.tables["customers"]
_CONTACT_BY_EMAIL: Select[int, int] = select(_CONTACTS.c.id, _CONTACTS.c.customer_id).where(
    _CONTACTS.c.email == bindparam("email")
)
# A first cut by LIKE; the exact match on whole domains is made in Python.
_CUSTOMERS_BY_DOMAIN = (
    select(_CUSTOMERS.c.id, _CUSTOMERS.c.domains)
    .where(_CUSTOMERS.c.domains.like(bindparam("pattern"), escape="/"))
    .order_by(_CUSTOMERS.c.id)
)
_CUSTOMER_BY_NAME: Select[int] = select(_CUSTOMERS.c.id).where(
    _CUSTOMERS.c.name == bindparam("name")
)


def _insert_once(
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert], table: Table, unique: str
) -> ReturningInsert[int]:
    """An INSERT that does nothing when another worker wrote the same row first."""
    return insert(table).on_conflict_do_nothing(index_elements=[unique]).returning(table.c.id)


_NEW_CONTACT = {
    "postgresql": _insert_once(postgresql.insert, _CONTACTS, "email"),
    "sqlite": _insert_once(sqlite.insert, _CONTACTS, "email"),
}
_NEW_CUSTOMER = {
    "postgresql": _insert_once(postgresql.insert, _CUSTOMERS, "name"),
    "sqlite": _insert_once(sqlite.insert, _CUSTOMERS, "name"),
}


@dataclass(frozen=True)
class SenderPolicy:
    unknown_sender: Literal["register", "reject"] = "register"
    unassigned_customer: str = "unassigned"
    default_package: str = "standard"
    default_language: str = "ru"


@dataclass(frozen=True)
class Sender:
    """The matched sender; ``customer_id`` is None when an unknown sender was refused."""

    customer_id: int | None
    contact_id: int | None
    matched_by: str
    # A refused sender with a valid address gets the polite answer.
    contactable: bool = True


def match_sender(
    session: Session, address: str, name: str, language: str, policy: SenderPolicy
) -> Sender:
    try:
        email = normalize_email(address)
    except DeskError:
        email = ""
    if not email or len(email) > MAX_ADDRESS:
        if policy.unknown_sender == "reject":
            return Sender(None, None, "no valid sender address", contactable=False)
        # Registered all the same, without anyone to answer to.
        return Sender(_unassigned(session, policy), None, "no valid sender address")
    contact = session.execute(_CONTACT_BY_EMAIL, {"email": email}).first()
    if contact is not None:
        return Sender(contact.customer_id, contact.id, "contact")
    domain = email.rpartition("@")[2]
    customer_id = _customer_by_domain(session, domain)
    matched_by = "domain"
    if customer_id is None:
        if policy.unknown_sender == "reject":
            return Sender(None, None, "unknown sender")
        customer_id = _unassigned(session, policy)
        matched_by = "unknown sender"
    language = language if language in LANGUAGES else policy.default_language
    contact_id = _new_contact(session, customer_id, email, name, language)
    return Sender(customer_id, contact_id, matched_by)


def _customer_by_domain(session: Session, domain: str) -> int | None:
    escaped = domain.replace("/", "//").replace("%", "/%").replace("_", "/_")
    candidates = session.execute(_CUSTOMERS_BY_DOMAIN, {"pattern": f"%{escaped}%"})
    return next((c.id for c in candidates if domain in c.domains.split()), None)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _unassigned(session: Session, policy: SenderPolicy) -> int:
    name = policy.unassigned_customer
    found = session.execute(_CUSTOMER_BY_NAME, {"name": name}).scalar()
    if found is not None:
        return found
    created = session.execute(
        _NEW_CUSTOMER[_dialect(session)],
        {"name": name, "package": policy.default_package, "domains": "", "created_at": utcnow()},
    ).scalar()
    if created is not None:
        return created
    # Another worker created it first.
    return session.execute(_CUSTOMER_BY_NAME, {"name": name}).scalar_one()


def _new_contact(session: Session, customer_id: int, email: str, name: str, language: str) -> int:
    created = session.execute(
        _NEW_CONTACT[_dialect(session)],
        {
            "customer_id": customer_id,
            "email": email,
            "name": name[:200],
            "language": language,
            "responsible": False,
            "created_at": utcnow(),
        },
    ).scalar()
    if created is not None:
        return created
    # Another worker registered mail from the same new sender at the same moment.
    return session.execute(_CONTACT_BY_EMAIL, {"email": email}).one()[0]
