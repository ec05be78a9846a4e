"""Who the desk serves and who works it: customers, their contacts, and staff."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from email.errors import HeaderParseError
from email.headerregistry import Address

import phonenumbers
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from intake.desk import DeskError, NotFoundError
from storage.models import Contact, Customer, Staff, StaffQueue

LANGUAGES = ("ru", "en")

# Plain ASCII dot-atoms on both sides and a dot in the domain: the usual address, which the
# full RFC 5322 parser below would hand back unchanged. Asked of every mail, and the parser
# costs a hundred times more. ATEXT: RFC 5322's atext, one or more.
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"{ATEXT}(?:\.{ATEXT})*@{ATEXT}(?:\.{ATEXT})+")


def normalize_email(raw: str) -> str:
    """The address in canonical form (domain lowercased, local part kept), or DeskError."""
    value = raw.strip()
    if _PLAIN_ADDRESS.fullmatch(value):
        local, _, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}"
    try:
        address = Address(addr_spec=value)
    except (HeaderParseError, ValueError, IndexError, AttributeError) as exc:
        # AttributeError: the stdlib's header parser trips over some hostile input
        # (``ab@[<}.com``) instead of reporting a defect.
        raise DeskError(f"invalid email address {raw!r}") from exc
    if not address.username or "." not in address.domain or address.addr_spec != value:
        raise DeskError(f"invalid email address {raw!r}")
    # addr_spec keeps a quoted local part quoted ("odd local"@…), as it must be written.
    return f"{address.addr_spec.rpartition('@')[0]}@{address.domain.lower()}"


def normalize_phone(raw: str, region: str = "RU") -> str:
    """E.164 form of a phone number written any usual way, or DeskError."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise DeskError(f"invalid phone number {raw!r}: {exc}") from exc
    if not phonenumbers.is_possible_number(number):
        raise DeskError(f"invalid phone number {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def customer_by_name(session: Session, name: str) -> Customer:
    customer = session.scalars(select(Customer).where(Customer.name == name)).one_or_none()
    if customer is None:
        raise NotFoundError(f"no customer {name!r}")
    return customer


def find_contact(session: Session, reference: str, *, phone_region: str = "RU") -> Contact:
    """The contact with this email address or phone number."""
    if "@" in reference:
        condition = Contact.email == normalize_email(reference)
    else:
        condition = Contact.phone == normalize_phone(reference, phone_region)
    contact = session.scalars(select(Contact).where(condition)).one_or_none()
    if contact is None:
        raise NotFoundError(f"no contact {reference!r}")
    return contact


def add_customer(
    session: Session,
    name: str,
    *,
    package: str,
    known_packages: Collection[str],
    domains: Sequence[str] = (),
) -> Customer:
    name = name.strip()
    if not name:
        raise DeskError("a customer needs a name")
    if package not in known_packages:
        raise DeskError(
            f"unknown support package {package!r}; configured: {', '.join(sorted(known_packages))}"
        )
    if session.scalars(select(Customer.id).where(Customer.name == name)).first() is not None:
        raise DeskError(f"customer {name!r} already exists")
    cleaned = []
    for domain in domains:
        domain = domain.strip().lstrip("@").lower()
        if not domain or "." not in domain:
            raise DeskError(f"invalid mail domain {domain!r}")
        cleaned.append(domain)
    customer = Customer(name=name, package=package, domains=" ".join(cleaned))
    session.add(customer)
    session.flush()
    return customer


def add_contact(
    session: Session,
    customer_name: str,
    *,
    email: str | None = None,
    phone: str | None = None,
    name: str = "",
    language: str = "ru",
    responsible: bool = False,
    phone_region: str = "RU",
) -> Contact:
    if not email and not phone:
        raise DeskError("a contact needs an email address or a phone number")
    if language not in LANGUAGES:
        raise DeskError(f"unsupported language {language!r}; supported: {', '.join(LANGUAGES)}")
    customer = customer_by_name(session, customer_name)
    email = normalize_email(email) if email else None
    phone = normalize_phone(phone, phone_region) if phone else None
    if email and session.scalars(select(Contact.id).where(Contact.email == email)).first():
        raise DeskError(f"a contact with email {email} already exists")
    if phone and session.scalars(select(Contact.id).where(Contact.phone == phone)).first():
        raise DeskError(f"a contact with phone {phone} already exists")
    contact = Contact(
        customer=customer,
        email=email,
        phone=phone,
        name=name.strip(),
        language=language,
        responsible=responsible,
    )
    session.add(contact)
    session.flush()
    return contact


def list_customers(session: Session) -> Sequence[Customer]:
    return session.scalars(select(Customer).order_by(Customer.name)).all()


def list_contacts(
    session: Session, *, customer: str | None = None, responsible_only: bool = False
) -> Sequence[Contact]:
    stmt = (
        select(Contact)
        .join(Customer)
        .options(selectinload(Contact.customer))
        .order_by(Customer.name, Contact.email)
    )
    if customer is not None:
        stmt = stmt.where(Customer.name == customer)
    if responsible_only:
        stmt = stmt.where(Contact.responsible.is_(True))
    return session.scalars(stmt).all()


def add_staff(
    session: Session,
    name: str,
    *,
    email: str | None = None,
    telegram_chat_id: int | None = None,
    queues: Sequence[str] = ("support",),
    on_duty: bool = True,
) -> Staff:
    name = name.strip()
    if not name:
        raise DeskError("a staff member needs a name")
    if session.scalars(select(Staff.id).where(Staff.name == name)).first() is not None:
        raise DeskError(f"staff member {name!r} already exists")
    email = normalize_email(email) if email else None
    staff = Staff(name=name, email=email, telegram_chat_id=telegram_chat_id, on_duty=on_duty)
    staff.queues = [StaffQueue(queue=q.strip()) for q in dict.fromkeys(queues) if q.strip()]
    session.add(staff)
    session.flush()
    return staff


def list_staff(session: Session) -> Sequence[Staff]:
    return session.scalars(
        select(Staff).options(selectinload(Staff.queues)).order_by(Staff.name)
    ).all()
