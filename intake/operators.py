"""The operators' call log: what a caller said, registered or added to a ticket as mail is.

``POST /api/v1/calls`` (intake.http) validates the body into a :class:`CallLog`; this
module finds or adds the caller, registers a ticket or adds to the one named, and links
the provider's call record when one is named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from intake.calls import unassigned_customer
from intake.desk import Desk, DeskError, Environment, FollowUp, NewRequest, NotFoundError
from intake.directory import normalize_email, normalize_phone
from storage.models import Call, Channel, Contact, Kind, Ticket, text_fault


def _storable(value: str) -> str:
    # A 422 now beats a failed transaction later.
    fault = text_fault(value)
    if fault is not None:
        raise ValueError(fault)
    return value


Text = AfterValidator(_storable)
Line = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), Text]
Version = Annotated[str, StringConstraints(strip_whitespace=True, max_length=64), Text]


class CallLog(BaseModel):
    """The body of ``POST /api/v1/calls``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phone: Line | None = None
    email: Line | None = None
    subject: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=998), Text
    ]
    description: Annotated[str, Field(max_length=100_000), Text] = ""
    kind: Kind = Kind.INCIDENT
    os: Version | None = None
    os_version: Version | None = None
    product: Version | None = None
    product_version: Version | None = None
    browser: Version | None = None
    browser_version: Version | None = None
    ticket: Line | None = None
    call_id: Line | None = None
    provider: Line | None = None


class CallLogError(DeskError):
    """The log cannot be taken; ``errors`` names each field that is wrong and why."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = dict(errors)


def parse_call_log(data: Any) -> CallLog:
    """The validated log, or CallLogError with one reason per field."""
    if not isinstance(data, dict):
        raise CallLogError({"body": "must be a JSON object"})
    try:
        return CallLog.model_validate(data)
    except ValidationError as error:
        errors: dict[str, str] = {}
        for detail in error.errors():
            name = ".".join(str(part) for part in detail["loc"]) or "body"
            errors.setdefault(
                name, "unknown field" if detail["type"] == "extra_forbidden" else detail["msg"]
            )
        raise CallLogError(errors) from None


def log_call(
    session: Session,
    desk: Desk,
    entry: CallLog,
    *,
    operator: str,
    region: str,
    unassigned_customer: str,
) -> Ticket:
    """Register the call's request, or add it to ``entry.ticket``; the ticket."""
    errors: dict[str, str] = {}
    email = _checked(errors, "email", entry.email, normalize_email)
    phone = _checked(errors, "phone", entry.phone, lambda p: normalize_phone(p, region))
    ticket = None
    if entry.ticket:
        try:
            ticket = desk.ticket(session, entry.ticket, for_update=True)
        except NotFoundError:
            errors["ticket"] = f"no ticket {entry.ticket}"
    elif not (entry.email or entry.phone):
        errors["phone"] = "give the caller's phone or email, or the ticket to add to"
    call = _call(session, entry, errors)
    if errors:
        raise CallLogError(errors)
    actor = f"operator:{operator}"
    contact = _contact(session, email, phone, unassigned_customer, desk) if email or phone else None
    if ticket is None:
        assert contact is not None
        ticket = desk.register(
            session,
            NewRequest(
                subject=entry.subject,
                channel=Channel.PHONE,
                customer_id=contact.customer_id,
                contact_id=contact.id,
                description=entry.description,
                kind=entry.kind,
                environment=Environment(
                    os=entry.os,
                    os_version=entry.os_version,
                    product=entry.product,
                    product_version=entry.product_version,
                    browser=entry.browser,
                    browser_version=entry.browser_version,
                ),
                author=operator,
            ),
            actor=actor,
        )
    else:
        desk.follow_up(
            session,
            ticket,
            FollowUp(
                text=entry.description,
                author=operator,
                subject=entry.subject,
                matched_by="operator",
            ),
            actor=actor,
        )
    desk.journal(
        session, ticket, actor, "call_logged", call_id=entry.call_id, subject=entry.subject
    )
    if call is not None:
        call.ticket = ticket
        desk.journal(
            session, ticket, actor, "call_linked", provider=call.provider, call_id=call.call_id
        )
    session.flush()
    return ticket


def _checked(errors: dict[str, str], name: str, value: str | None, check: Any) -> str | None:
    if not value:
        return None
    try:
        return str(check(value))
    except DeskError as error:
        errors[name] = str(error)
        return None


def _call(session: Session, entry: CallLog, errors: dict[str, str]) -> Call | None:
    if not entry.call_id:
        return None
    stmt = select(Call).where(Call.call_id == entry.call_id)
    if entry.provider:
        stmt = stmt.where(Call.provider == entry.provider)
    calls = session.scalars(stmt.with_for_update()).all()
    if not calls:
        errors["call_id"] = f"no call {entry.call_id}"
    elif len(calls) > 1:
        errors["provider"] = "several providers have this call id; name the provider"
    elif calls[0].ticket_id is not None and entry.ticket is None:
        errors["call_id"] = "the call is already on a ticket; name it in 'ticket'"
    return calls[0] if len(calls) == 1 else None


def _contact(
    session: Session, email: str | None, phone: str | None, unassigned: str, desk: Desk
) -> Contact:
    """The caller's contact; one not known yet is added to the unassigned customer, as
    the mail pipeline does with unknown senders."""
    for condition in (
        (Contact.email == email) if email else None,
        (Contact.phone == phone) if phone else None,
    ):
        if condition is not None:
            contact = session.scalars(select(Contact).where(condition)).first()
            if contact is not None:
                return contact
    customer = unassigned_customer(session, desk, unassigned)
    contact = Contact(customer=customer, email=email, phone=phone, name="")
    session.add(contact)
    session.flush()
    return contact
