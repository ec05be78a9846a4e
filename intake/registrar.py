"""One received mail -> a registered request, a follow-up, or set aside with a reason.

``prepare`` does everything that needs no database (parsing, the rules, writing the files
to the blob store) so that the transaction of ``apply`` stays short; ``apply`` then does
the desk's work in the caller's transaction, which also marks the inbound item.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Row, bindparam, insert, select
from sqlalchemy.orm import Session

from intake.desk import Desk, DeskError, Environment, FollowUp, NewRequest, NotFoundError
from intake.directory import normalize_email
from intake.rules import Decision, Rule, RuleContext, decide
from intake.senders import SenderPolicy, match_sender
from parsers.headers import split_header_block
from parsers.model import Found, ParsedMail
from parsers.options import DEFAULT_OPTIONS, ParseOptions
from parsers.request import parse_mail
from parsers.verdict import verdict
from storage import blobs, inbound
from storage.blobs import BlobStore
from storage.models import (
    Attachment,
    Channel,
    Direction,
    InboundItem,
    InboundState,
    Kind,
    Message,
    OutboxItem,
    Priority,
    Ticket,
    utcnow,
)

log = logging.getLogger(__name__)

# Asked of every mail; built once.
_INSERT_ATTACHMENTS = insert(Attachment.metadata.tables["attachments"])
_REGISTERED_MAIL = (
    select(Ticket.id, Ticket.number)
    .join(Message, Message.ticket_id == Ticket.id)
    .where(Message.message_id == bindparam("message_id"), Message.direction == Direction.IN)
    .limit(1)
)
# Which tickets the mails that a reply answers belong to: ours (outbox) and the customer's.
_OWNERS_OF = [
    select(model.message_id, model.ticket_id).where(
        model.message_id.in_(bindparam("answered", expanding=True))
    )
    for model in (OutboxItem, Message)
]

PIPELINE_ACTOR = "pipeline"
# A mail waits (Registrar._waits) in steps of WAIT_STEP, and at most WAIT_LIMIT after its
# receipt: then what it waits for is stuck, and the mail is taken on its own.
WAIT_STEP = dt.timedelta(seconds=1)
WAIT_LIMIT = dt.timedelta(hours=1)
MAX_REASON = 1000
HEADER_SCAN = 256 * 1024
_ENV_LENGTH = 64


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    filename: str
    content_type: str
    size: int
    screenshot: bool
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Prepared:
    mail: ParsedMail
    decision: Decision | None
    files: tuple[StoredFile, ...]

    @property
    def label(self) -> str:
        """How log lines name the mail: its Message-ID."""
        return self.mail.message_id or "<no Message-ID>"


@dataclass(frozen=True)
class Outcome:
    ticket_number: str | None
    summary: str


@dataclass(frozen=True)
class MailIdentity:
    """Our own addresses, for the loop rule and for the polite refusal."""

    from_address: str
    message_id_domain: str


class Registrar:
    def __init__(
        self,
        desk: Desk,
        blob_store: BlobStore,
        rules: Sequence[Rule],
        policy: SenderPolicy,
        identity: MailIdentity,
        parse_options: ParseOptions = DEFAULT_OPTIONS,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.desk = desk
        self.blob_store = blob_store
        self.rules = rules
        self.policy = policy
        self.identity = identity
        self.parse_options = parse_options
        self.clock = clock

    def prepare(self, raw: bytes) -> Prepared:
        mail = parse_mail(raw, options=self.parse_options)
        headers, _, _ = split_header_block(raw, 0, min(len(raw), HEADER_SCAN))
        context = RuleContext(headers, self.identity.message_id_domain, self.identity.from_address)
        decision = decide(self.rules, mail, context)
        if decision is not None:
            return Prepared(mail, decision, ())
        return Prepared(mail, None, self._store_files(mail))

    def _store_files(self, mail: ParsedMail) -> tuple[StoredFile, ...]:
        stored = [
            StoredFile(
                self.blob_store.write(s.data),
                s.filename,
                s.content_type,
                s.size,
                True,
                s.width,
                s.height,
            )
            for s in mail.screenshots
        ]
        stored += [
            StoredFile(self.blob_store.write(a.data), a.filename, a.content_type, a.size, False)
            for a in mail.attachments
        ]
        return tuple(stored)

    def apply(self, session: Session, item: InboundItem, prepared: Prepared) -> Outcome:
        mail = prepared.mail
        if prepared.decision is not None:
            return self._set_aside(session, item, prepared.decision, mail)
        duplicate = self._already_registered(session, mail.message_id)
        if duplicate is not None:
            inbound.ignored(
                session,
                item,
                reason=f"duplicate: already registered in {duplicate.number}",
                ticket_id=duplicate.id,
            )
            return Outcome(duplicate.number, f"duplicate of a message in {duplicate.number}")
        found = self._ticket_for_follow_up(session, mail)
        waits = self._waits(session, item, mail, answers=found is None)
        if waits is not None:
            return waits
        if found is not None:
            ticket_id, matched_by = found
            followed = self.desk.add_follow_up(
                session,
                ticket_id,
                FollowUp(
                    text=mail.new_text or mail.text,
                    author=_author(mail),
                    subject=mail.subject[:998],
                    html=mail.html,
                    message_id=mail.message_id,
                    in_reply_to=mail.in_reply_to,
                    inbound_id=item.id,
                    matched_by=matched_by,
                    verdict=verdict(mail.new_text, mail.signature),
                    sender_email=_address(mail.from_address),
                ),
                actor=PIPELINE_ACTOR,
            )
            self._attach(session, followed.message_id, prepared.files)
            inbound.done(session, item, ticket_id=ticket_id)
            number = followed.number
            return Outcome(number, f"follow-up to {number} (by {matched_by})")
        sender = match_sender(
            session, mail.from_address, mail.sender_name, mail.language, self.policy
        )
        if sender.customer_id is None:
            return self._refuse(session, item, mail, answer=sender.contactable)
        registration = self.desk.register_request(
            session,
            NewRequest(
                subject=mail.subject[:998],
                channel=Channel.EMAIL,
                customer_id=sender.customer_id,
                contact_id=sender.contact_id,
                description=mail.new_text or mail.text,
                kind=Kind(mail.kind),
                priority_hint=Priority(mail.priority),
                environment=_environment(mail),
                message_id=mail.message_id,
                in_reply_to=mail.in_reply_to,
                html=mail.html,
                inbound_id=item.id,
                author=_author(mail),
                missing=_missing_parameters(mail),
            ),
            actor=PIPELINE_ACTOR,
        )
        self._attach(session, registration.message_id, prepared.files)
        inbound.done(session, item, ticket_id=registration.ticket_id)
        number = registration.number
        return Outcome(number, f"registered {number} (sender: {sender.matched_by})")

    # follow-ups ---------------------------------------------------------------------------

    def _ticket_for_follow_up(self, session: Session, mail: ParsedMail) -> tuple[int, str] | None:
        """The id of the ticket that the mail follows up, and what matched it: our tag in the
        subject first, then the mail this one answers (ARCHITECTURE.md)."""
        if mail.registration_number and mail.registration_number_source == "subject":
            with contextlib.suppress(NotFoundError):
                return self.desk.ticket_id(session, mail.registration_number), "registration number"
        answered = _answered(mail)
        if not answered:
            return None
        owners: dict[str, int] = {}
        for stmt in _OWNERS_OF:
            for message_id, ticket_id in session.execute(stmt, {"answered": answered}):
                if message_id is not None and ticket_id is not None:
                    owners.setdefault(message_id, ticket_id)
        for index, ref in enumerate(answered):
            if ref in owners:
                matched = "In-Reply-To" if ref == mail.in_reply_to and index == 0 else "References"
                return owners[ref], matched
        return None

    def _waits(
        self, session: Session, item: InboundItem, mail: ParsedMail, *, answers: bool
    ) -> Outcome | None:
        """Put the mail back for a moment when what decides its fate is still in the
        inbound store: the same mail received earlier through another source (whose copy
        is registered first; asked on PostgreSQL, where other workers and daemons take
        items at the same time, while one SQLite worker takes them in order), or, when
        ``answers`` (no ticket found for it), a mail it answers, which a reply would
        otherwise overtake and become a ticket of its own. A mail that itself waits is not
        waited for (two mails that answer each other), and none waits past WAIT_LIMIT."""
        answered = _answered(mail) if answers else []
        copies = bool(mail.message_id) and session.get_bind().dialect.name == "postgresql"
        asked = [*answered, mail.message_id] if copies and mail.message_id else answered
        if not asked:
            return None
        for other in inbound.unfinished(session, asked, besides=item.id):
            if other.message_id == mail.message_id and copies:
                if other.id > item.id:
                    continue
                why = "the same mail received earlier through another source"
            elif other.waiting:
                continue
            else:
                why = f"the mail it answers, {other.message_id}"
            return self._wait(session, item, other, why)
        return None

    def _wait(
        self, session: Session, item: InboundItem, other: inbound.Unfinished, why: str
    ) -> Outcome | None:
        now = self.clock()
        if now - item.received_at > WAIT_LIMIT:
            log.warning(
                "inbound %d waited %s for inbound %d (%s); taken on its own now",
                item.id,
                WAIT_LIMIT,
                other.id,
                why,
            )
            return None
        until = now + WAIT_STEP
        if other.state is InboundState.FAILED and other.next_attempt_at is not None:
            # Its retry is the earliest it can be finished.
            until = max(until, other.next_attempt_at + WAIT_STEP)
        reason = f"waits for inbound {other.id} ({why})"[:MAX_REASON]
        inbound.hold(session, item, reason=reason, until=until)
        return Outcome(None, f"{reason}; again at {until:%H:%M:%S}")

    def _already_registered(self, session: Session, message_id: str | None) -> Row[int, str] | None:
        """The ticket (id, number) of the same mail received through another source (SMTP
        and IMAP): it is one request."""
        if message_id is None:
            return None
        return session.execute(_REGISTERED_MAIL, {"message_id": message_id}).first()

    def _attach(self, session: Session, message_id: int, files: Sequence[StoredFile]) -> None:
        if not files:
            return
        for file in files:
            blobs.record(session, file.sha256, file.size)
        session.execute(
            _INSERT_ATTACHMENTS,
            [
                {
                    "message_id": message_id,
                    "sha256": file.sha256,
                    "filename": file.filename[:255],
                    "content_type": file.content_type[:255],
                    "size": file.size,
                    "screenshot": file.screenshot,
                    "width": file.width,
                    "height": file.height,
                }
                for file in files
            ],
        )

    # set aside ----------------------------------------------------------------------------

    def _set_aside(
        self, session: Session, item: InboundItem, decision: Decision, mail: ParsedMail
    ) -> Outcome:
        ticket = None
        if decision.bounced_message_id is not None:
            ticket = self._ticket_of_our_mail(session, decision.bounced_message_id)
        inbound.ignored(
            session, item, reason=decision.recorded, ticket_id=ticket.id if ticket else None
        )
        if ticket is None:
            return Outcome(None, f"ignored: {decision.recorded}")
        self.desk.journal(
            session,
            ticket,
            PIPELINE_ACTOR,
            "bounce_received",
            bounced_message_id=decision.bounced_message_id,
            reason=decision.reason,
            report_message_id=mail.message_id,
        )
        return Outcome(ticket.number, f"ignored: {decision.recorded}; journaled on {ticket.number}")

    def _ticket_of_our_mail(self, session: Session, message_id: str) -> Ticket | None:
        for model in (OutboxItem, Message):
            ticket_id = session.scalars(
                select(model.ticket_id).where(model.message_id == message_id).limit(1)
            ).first()
            if ticket_id is not None:
                return session.get(Ticket, ticket_id)
        return None

    def _refuse(
        self, session: Session, item: InboundItem, mail: ParsedMail, *, answer: bool
    ) -> Outcome:
        """Unknown senders are refused by configuration: told politely, nothing registered."""
        reason = f"sender {mail.from_address or '(none)'} refused (unknown_sender = reject)"
        inbound.ignored(session, item, reason=reason)
        if not answer:
            return Outcome(None, reason)
        language = mail.language if mail.language in ("ru", "en") else self.policy.default_language
        session.add(
            OutboxItem(
                channel="email",
                template="unknown_sender_rejected",
                recipient=mail.from_address,
                message_id=f"<{uuid.uuid4().hex}@{self.identity.message_id_domain}>",
                payload={
                    "language": language,
                    "in_reply_to": mail.message_id,
                    "subject": mail.subject[:998],
                },
            )
        )
        return Outcome(None, reason)


def _answered(mail: ParsedMail) -> list[str]:
    """The Message-IDs of the mails this one answers, the closest first."""
    answered = [mail.in_reply_to] if mail.in_reply_to else []
    answered += [ref for ref in reversed(mail.references) if ref not in answered]
    return answered


def _address(raw: str) -> str | None:
    """The sender's address as contacts are stored, or None when it is not one."""
    try:
        return normalize_email(raw)
    except DeskError:
        return None


def _author(mail: ParsedMail) -> str:
    if mail.sender_name:
        return f"{mail.sender_name} <{mail.from_address}>"[:320]
    return mail.from_address[:320]


def _missing_parameters(mail: ParsedMail) -> tuple[str, ...]:
    """What the acknowledgement asks for: os, product, browser (each with its version)."""
    lacking = set(mail.missing)
    return tuple(
        name for name in ("os", "product", "browser") if {name, f"{name}_version"} & lacking
    )


def _environment(mail: ParsedMail) -> Environment:
    env = mail.environment

    def value(found: Found | None) -> str | None:
        return found.value[:_ENV_LENGTH] if found is not None else None

    return Environment(
        os=value(env.os),
        os_version=value(env.os_version),
        product=value(env.product),
        product_version=value(env.product_version),
        browser=value(env.browser),
        browser_version=value(env.browser_version),
    )
