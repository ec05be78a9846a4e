"""One received mail -> a registered request, a follow-up, or set aside with a reason.

``prepare`` does everything that needs no database (parsing, the rules, writing the files
to the blob store) so that the transaction of ``apply`` stays short; ``apply`` then does
the desk's work in the caller's transaction, which also marks the inbound item.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Integer,
    Select,
    bindparam,
    insert,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from intake.desk import Desk, DeskError, Environment, FollowUp, NewRequest, NotFoundError
from intake.directory import normalize_email
from intake.rules import Decision, Rule, RuleContext, decide
from intake.senders import SenderPolicy, match_sender
from parsers.authresults import result_of
from parsers.headers import HeaderBlock, split_header_block
from parsers.model import Found, ParsedMail
from parsers.options import DEFAULT_OPTIONS, ParseOptions
from parsers.request import parse_mail
from parsers.verdict import Verdict, verdict
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
# What decides a mail's fate, asked in one statement (Registrar._look_up), so that it is also
# one snapshot: the items still in the inbound store that it may wait for (first: their
# columns type the result), the ticket of the same mail registered before, and the tickets
# of the mails it answers, ours (outbox) and the customer's. ``kind`` tells the rows apart.
_UNFINISHED, _REGISTERED, _OURS, _THEIRS = range(4)


def _kind(kind: int) -> ColumnElement[int]:
    return literal_column(str(kind), Integer).label("kind")


@functools.lru_cache(maxsize=8)
def _look_up_statement(*, waits: bool, registered: bool, answers: bool) -> Executable:
    """The look-up with only the parts that the mail asks (most mails answer nothing, and
    on SQLite nothing waits for its copies), built once per shape."""
    parts: list[Select[*tuple[Any, ...]]] = []
    if waits:
        parts.append(inbound.UNFINISHED.add_columns(_kind(_UNFINISHED), null().label("number")))
    if registered:
        parts.append(
            select(
                Ticket.id,
                Message.message_id,
                null(),
                null(),
                null(),
                _kind(_REGISTERED),
                Ticket.number,
            )
            .join(Message, Message.ticket_id == Ticket.id)
            .where(Message.message_id == bindparam("message_id"), Message.direction == Direction.IN)
        )
    if answers:
        parts += [
            select(
                model.ticket_id, model.message_id, null(), null(), null(), _kind(kind), null()
            ).where(model.message_id.in_(bindparam("answered", expanding=True)))
            for kind, model in ((_OURS, OutboxItem), (_THEIRS, Message))
        ]
    return parts[0] if len(parts) == 1 else union_all(*parts)


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
    # Whether our receiving server vouches for the sender (DMARC), where it is asked to.
    authenticated: bool = True

    @property
    def label(self) -> str:
        """How log lines name the mail: its Message-ID."""
        return self.mail.message_id or "<no Message-ID>"


@dataclass(frozen=True)
class Mark:
    """How the inbound item ends: done, or ``ignored`` with that reason; with the ticket it
    belongs to or concerns, if any (a duplicate's, a bounce's)."""

    ticket_id: int | None
    ignored: str | None = None


@dataclass(frozen=True)
class Outcome:
    ticket_number: str | None
    summary: str
    # None when the item was put back to wait (Registrar._waits), which is written at once;
    # it is due again at ``again_at``.
    mark: Mark | None = None
    again_at: dt.datetime | None = None


@dataclass(frozen=True)
class _Seen:
    """What the store knows of a mail's Message-IDs (Registrar._look_up)."""

    registered: tuple[int, str] | None
    owners: dict[str, int]
    unfinished: list[inbound.Unfinished]


@dataclass(frozen=True)
class _Wait:
    reason: str
    until: dt.datetime


@dataclass(frozen=True)
class MailIdentity:
    """Our own addresses, for the loop rule and for the polite refusal; and the name our
    receiving mail server gives itself in Authentication-Results, when its word on a
    sender is to be required before the sender's mail may close a ticket."""

    from_address: str
    message_id_domain: str
    authserv_id: str = ""


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
        return Prepared(mail, None, self._store_files(mail), self._authenticated(headers))

    def _authenticated(self, headers: HeaderBlock) -> bool:
        """True unless our receiving server is to vouch for senders (``authserv_id``) and
        did not: no DMARC pass in its Authentication-Results."""
        if not self.identity.authserv_id:
            return True
        found = [
            value.decode("ascii", "replace") for value in headers.raw_all("authentication-results")
        ]
        return result_of("dmarc", found, self.identity.authserv_id) == "pass"

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

    def apply(
        self,
        session: Session,
        item: InboundItem,
        prepared: Prepared,
        *,
        settled: Collection[int] = (),
    ) -> Outcome:
        """The desk's work for the mail, in the caller's transaction. The caller marks the
        item as the outcome says, in the same transaction; ``settled`` are the items that
        it has marked so far without writing it yet (see ``_waits``)."""
        mail = prepared.mail
        if prepared.decision is not None:
            return self._set_aside(session, prepared.decision, mail)
        answered = _answered(mail)
        copies = bool(mail.message_id) and session.get_bind().dialect.name == "postgresql"
        seen = self._look_up(session, item, mail, answered, copies=copies)
        if seen.registered is not None:
            ticket_id, number = seen.registered
            return Outcome(
                number,
                f"duplicate of a message in {number}",
                Mark(ticket_id, ignored=f"duplicate: already registered in {number}"),
            )
        found = self._ticket_for_follow_up(session, mail, answered, seen.owners)
        asked = answered if found is None else []
        if copies and mail.message_id:
            asked = [*asked, mail.message_id]
        unfinished = [
            other
            for other in seen.unfinished
            if other.message_id in asked and other.id not in settled
        ]
        waits = self._waits(item, mail, unfinished, copies=copies)
        if waits is not None:
            inbound.hold(session, item, reason=waits.reason, until=waits.until)
            return Outcome(
                None, f"{waits.reason}; again at {waits.until:%H:%M:%S}", again_at=waits.until
            )
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
                    judge=functools.partial(_verdict, mail),
                    authenticated=prepared.authenticated,
                    sender_email=_address(mail.from_address),
                ),
                actor=PIPELINE_ACTOR,
            )
            self._attach(session, followed.message_id, prepared.files)
            number = followed.number
            return Outcome(number, f"follow-up to {number} (by {matched_by})", Mark(ticket_id))
        sender = match_sender(
            session, mail.from_address, mail.sender_name, mail.language, self.policy
        )
        if sender.customer_id is None:
            return self._refuse(session, mail, answer=sender.contactable)
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
        number = registration.number
        return Outcome(
            number,
            f"registered {number} (sender: {sender.matched_by})",
            Mark(registration.ticket_id),
        )

    # follow-ups ---------------------------------------------------------------------------

    def _look_up(
        self,
        session: Session,
        item: InboundItem,
        mail: ParsedMail,
        answered: Sequence[str],
        *,
        copies: bool,
    ) -> _Seen:
        """What the store knows of the mail's Message-IDs: the ticket of the same mail
        received through another source (SMTP and IMAP: it is one request), the owners of
        the mails it answers, and the unfinished items it may wait for: those it answers,
        and with ``copies`` its own copies."""
        waited_for = [*answered, mail.message_id] if copies and mail.message_id else answered
        if not mail.message_id and not waited_for:
            return _Seen(None, {}, [])
        statement = _look_up_statement(
            waits=bool(waited_for), registered=bool(mail.message_id), answers=bool(answered)
        )
        rows = session.execute(
            statement,
            {
                "message_ids": waited_for,
                "besides": item.id,
                "message_id": mail.message_id,
                "answered": answered,
            },
        ).all()
        registered = None
        ours: dict[str, int] = {}
        theirs: dict[str, int] = {}
        for row in rows:
            if row.kind == _REGISTERED:
                registered = registered or (row.id, row.number)
            elif row.kind != _UNFINISHED and row.message_id is not None and row.id is not None:
                (ours if row.kind == _OURS else theirs).setdefault(row.message_id, row.id)
        return _Seen(
            registered,
            theirs | ours,
            inbound.unfinished(row for row in rows if row.kind == _UNFINISHED),
        )

    def _ticket_for_follow_up(
        self, session: Session, mail: ParsedMail, answered: Sequence[str], owners: dict[str, int]
    ) -> tuple[int, str] | None:
        """The id of the ticket that the mail follows up, and what matched it: our tag in the
        subject first, then the mail this one answers (ARCHITECTURE.md)."""
        if mail.registration_number and mail.registration_number_source == "subject":
            with contextlib.suppress(NotFoundError):
                return self.desk.ticket_id(session, mail.registration_number), "registration number"
        for index, ref in enumerate(answered):
            if ref in owners:
                matched = "In-Reply-To" if ref == mail.in_reply_to and index == 0 else "References"
                return owners[ref], matched
        return None

    def _waits(
        self,
        item: InboundItem,
        mail: ParsedMail,
        unfinished: Sequence[inbound.Unfinished],
        *,
        copies: bool,
    ) -> _Wait | None:
        """Whether the mail goes back for a moment because what decides its fate is still
        in the inbound store (``unfinished``, marked ones excluded): the same mail received
        earlier through another source (whose copy is registered first; asked with
        ``copies`` on PostgreSQL, where other workers and daemons take items at the same
        time, while one SQLite worker takes them in order), or, when no ticket was found
        for it, a mail it answers, which a reply would otherwise overtake and become a
        ticket of its own. A mail that itself waits is not waited for (two mails that
        answer each other), and none waits past WAIT_LIMIT."""
        for other in unfinished:
            if other.message_id == mail.message_id and copies:
                if other.id > item.id:
                    continue
                why = "the same mail received earlier through another source"
            elif other.waiting:
                continue
            else:
                why = f"the mail it answers, {other.message_id}"
            return self._wait(item, other, why)
        return None

    def _wait(self, item: InboundItem, other: inbound.Unfinished, why: str) -> _Wait | None:
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
        return _Wait(f"waits for inbound {other.id} ({why})"[:MAX_REASON], until)

    def _attach(self, session: Session, message_id: int, files: Sequence[StoredFile]) -> None:
        if not files:
            return
        blobs.record(session, {file.sha256: file.size for file in files})
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

    def _set_aside(self, session: Session, decision: Decision, mail: ParsedMail) -> Outcome:
        ticket = None
        if decision.bounced_message_id is not None:
            ticket = self._ticket_of_our_mail(session, decision.bounced_message_id)
        if ticket is None:
            return Outcome(None, f"ignored: {decision.recorded}", Mark(None, decision.recorded))
        self.desk.journal(
            session,
            ticket,
            PIPELINE_ACTOR,
            "bounce_received",
            bounced_message_id=decision.bounced_message_id,
            reason=decision.reason,
            report_message_id=mail.message_id,
        )
        return Outcome(
            ticket.number,
            f"ignored: {decision.recorded}; journaled on {ticket.number}",
            Mark(ticket.id, decision.recorded),
        )

    def _ticket_of_our_mail(self, session: Session, message_id: str) -> Ticket | None:
        for model in (OutboxItem, Message):
            ticket_id = session.scalars(
                select(model.ticket_id).where(model.message_id == message_id).limit(1)
            ).first()
            if ticket_id is not None:
                return session.get(Ticket, ticket_id)
        return None

    def _refuse(self, session: Session, mail: ParsedMail, *, answer: bool) -> Outcome:
        """Unknown senders are refused by configuration: told politely, nothing registered."""
        reason = f"sender {mail.from_address or '(none)'} refused (unknown_sender = reject)"
        refused = Outcome(None, reason, Mark(None, reason))
        if not answer:
            return refused
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
        return refused


def _answered(mail: ParsedMail) -> list[str]:
    """The Message-IDs of the mails this one answers, the closest first."""
    answered = [mail.in_reply_to] if mail.in_reply_to else []
    answered += [ref for ref in reversed(mail.references) if ref not in answered]
    return answered


def _verdict(mail: ParsedMail) -> Verdict:
    """What the mail says of a solution; a reply that says nothing (a screenshot alone)
    acknowledges, so that it still reaches the staff."""
    said = verdict(
        mail.new_text, mail.signature, quoted=mail.quoted_text, sender_name=mail.sender_name
    )
    return said or Verdict.ACKNOWLEDGES


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
