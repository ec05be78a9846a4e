"""Mail to customers: the MIME message of one outbox row, and the channel that sends it.

Headers are set through ``email.message.EmailMessage`` with the SMTP policy, which refuses
CR/LF inside a header value; customer-supplied text (names, subjects) is flattened to one
line before it gets there, so it can neither end a header nor start another.
"""

from __future__ import annotations

import datetime as dt
import email.policy
from collections.abc import Iterable
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import jinja2
from sqlalchemy import select
from sqlalchemy.orm import Session

from notifiers.outbox import OUTBOX_ACTOR, PermanentError, Withhold
from notifiers.policy import MailPolicy, reason_to_withhold
from notifiers.render import RenderedMail, build_context, render_mail
from notifiers.transports import AddressRejected, Transport
from storage.models import Direction, JournalEntry, Message, OutboxItem
from storage.suppressions import suppress

CHANNEL = "email"
# 7-bit clean (bodies in base64 or quoted-printable): any server takes it, 8BITMIME or not.
SEVEN_BIT = email.policy.SMTP.clone(cte_type="7bit")


@dataclass(frozen=True)
class Sender:
    address: str
    name: str = ""


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (CR, LF, tabs included) made one space."""
    return " ".join(text.split())


def build_message(
    *,
    number: str,
    rendered: RenderedMail,
    sender: Sender,
    recipient: str,
    recipient_name: str = "",
    message_id: str,
    in_reply_to: str | None,
    references: Iterable[str],
    date: dt.datetime,
) -> EmailMessage:
    message = EmailMessage(policy=SEVEN_BIT)
    subject = one_line(rendered.subject)
    message["Subject"] = f"[{number}] {subject}" if number else subject
    message["From"] = Address(display_name=one_line(sender.name), addr_spec=sender.address)
    message["To"] = Address(display_name=one_line(recipient_name), addr_spec=recipient)
    message["Reply-To"] = Address(addr_spec=sender.address)
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    # The customer's Message-IDs are customer-supplied text too.
    if in_reply_to:
        message["In-Reply-To"] = one_line(in_reply_to)
    chain = list(dict.fromkeys(one_line(ref) for ref in references if ref.strip()))
    if chain:
        message["References"] = " ".join(chain)
    # RFC 3834: marks the mail as automatic, so well-behaved systems do not answer it;
    # the second is Exchange's way of asking for the same.
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


def customer_thread(session: Session, ticket_id: int) -> list[str]:
    """Message-IDs of the customer's messages on a ticket, oldest first."""
    return [
        message_id
        for message_id in session.scalars(
            select(Message.message_id)
            .where(
                Message.ticket_id == ticket_id,
                Message.direction == Direction.IN,
                Message.message_id.is_not(None),
            )
            .order_by(Message.id)
        )
        if message_id
    ]


@dataclass(frozen=True)
class PreparedMail:
    message: EmailMessage
    sender: str
    recipient: str


class EmailChannel:
    """Renders and checks a customer mail at send time, and hands it to the transport."""

    channel = CHANNEL

    def __init__(
        self,
        transport: Transport,
        templates: jinja2.Environment,
        *,
        sender: Sender,
        policy: MailPolicy,
    ) -> None:
        self.transport = transport
        self.templates = templates
        self.sender = sender
        self.policy = policy

    def prepare(
        self, session: Session, item: OutboxItem, now: dt.datetime
    ) -> PreparedMail | Withhold:
        reason = reason_to_withhold(session, item, now, self.policy)
        if reason is not None:
            return Withhold(reason)
        if not item.message_id:
            raise ValueError(f"outbox row {item.id} has no Message-ID")
        context = build_context(session, item, support_address=self.sender.address)
        rendered = render_mail(self.templates, item.template, context)
        thread = customer_thread(session, item.ticket_id) if item.ticket_id else []
        in_reply_to = item.payload.get("in_reply_to") or (thread[-1] if thread else None)
        message = build_message(
            number=context["number"],
            rendered=rendered,
            sender=self.sender,
            recipient=item.recipient,
            recipient_name=context["contact_name"],
            message_id=item.message_id,
            in_reply_to=in_reply_to,
            references=[*thread[:1], *([in_reply_to] if in_reply_to else [])],
            date=now,
        )
        return PreparedMail(message, self.sender.address, item.recipient)

    async def send(self, item_id: int, prepared: PreparedMail) -> None:
        await self.transport.send(
            prepared.message,
            sender=prepared.sender,
            recipient=prepared.recipient,
            outbox_id=item_id,
        )

    def refused(self, session: Session, item: OutboxItem, error: PermanentError) -> None:
        """A mailbox the server says does not exist is never mailed again."""
        if not isinstance(error, AddressRejected):
            return
        reason = f"hard bounce: {error}"
        suppress(session, item.recipient, reason)
        if item.ticket_id is not None:
            session.add(
                JournalEntry(
                    ticket_id=item.ticket_id,
                    actor=OUTBOX_ACTOR,
                    action="address_suppressed",
                    details={"address": item.recipient, "reason": reason, "outbox_id": item.id},
                )
            )

    async def close(self) -> None:
        """Nothing to release: the SMTP transport connects per message."""
