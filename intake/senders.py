"""Who wrote a mail: a known contact by address, else a customer by mail domain, else unknown.

An unknown sender becomes a new contact of the configured "unassigned" customer, or is
refused (the pipeline then answers politely), as ``[pipeline] unknown_sender`` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from intake.desk import DeskError
from intake.directory import LANGUAGES, normalize_email
from storage.models import Contact, Customer

MAX_ADDRESS = 320  # RFC 5321's limit, and the width of the address columns

# Asked of every mail; built once, with the customer in the same query.
_CONTACT_BY_EMAIL = (
    select(Contact).options(joinedload(Contact.customer)).where(Contact.email == bindparam("email"))
)


@dataclass(frozen=True)
class SenderPolicy:
    unknown_sender: Literal["register", "reject"] = "register"
    unassigned_customer: str = "unassigned"
    default_package: str = "standard"
    default_language: str = "ru"


@dataclass(frozen=True)
class Sender:
    """The matched sender; ``customer`` is None when an unknown sender was refused."""

    customer: Customer | None
    contact: Contact | None
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
    contact = session.scalars(_CONTACT_BY_EMAIL, {"email": email}).one_or_none()
    if contact is not None:
        return Sender(contact.customer, contact, "contact")
    domain = email.rpartition("@")[2]
    customer = _customer_by_domain(session, domain)
    matched_by = "domain"
    if customer is None:
        if policy.unknown_sender == "reject":
            return Sender(None, None, "unknown sender")
        customer = _unassigned(session, policy)
        matched_by = "unknown sender"
    language = language if language in LANGUAGES else policy.default_language
    return Sender(customer, _new_contact(session, customer, email, name, language), matched_by)


def _customer_by_domain(session: Session, domain: str) -> Customer | None:
    candidates = session.scalars(
        select(Customer)
        .where(Customer.domains.contains(domain, autoescape=True))
        .order_by(Customer.id)
    )
    return next((c for c in candidates if domain in c.domains.split()), None)


def _unassigned(session: Session, policy: SenderPolicy) -> Customer:
    def find() -> Customer | None:
        return session.scalars(
            select(Customer).where(Customer.name == policy.unassigned_customer)
        ).one_or_none()

    customer = find()
    if customer is not None:
        return customer
    try:
        with session.begin_nested():
            customer = Customer(name=policy.unassigned_customer, package=policy.default_package)
            session.add(customer)
        return customer
    except IntegrityError:
        # Another worker created it first.
        found = find()
        assert found is not None
        return found


def _new_contact(
    session: Session, customer: Customer, email: str, name: str, language: str
) -> Contact:
    try:
        with session.begin_nested():
            contact = Contact(customer=customer, email=email, name=name[:200], language=language)
            session.add(contact)
        return contact
    except IntegrityError:
        # Another worker registered mail from the same new sender at the same moment.
        return session.scalars(select(Contact).where(Contact.email == email)).one()
