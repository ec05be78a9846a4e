"""The desk's tables.

One declarative model per table; the Alembic migrations under ``migrations/`` must
describe exactly these (a test runs autogenerate against both databases).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    case,
    event,
    select,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC timestamps on both databases.

    SQLite keeps no zone and hands back naive values; normalising on the way in and out
    keeps comparisons in the desk (due times, working-day arithmetic) free of surprises.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given where an aware one is required")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def text_fault(value: str) -> str | None:
    """Why the store cannot keep ``value`` as text, or None if it can: PostgreSQL's text
    holds no NUL, and neither backend takes a lone surrogate (no UTF-8 encodes one; JSON's
    "\\ud800" escape gives one). Checked where such input comes in, for a clear 422 rather
    than a failed transaction later."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid text (it holds a lone surrogate)"
    return None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Kind(enum.StrEnum):
    INCIDENT = "incident"
    PROBLEM = "problem"
    SERVICE_REQUEST = "service_request"
    DEVELOPMENT_REQUEST = "development_request"


class Priority(enum.StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"


class Status(enum.StrEnum):
    NEW = "new"
    IN_PROGRESS = "in_progress"
    WAITING_CUSTOMER = "waiting_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"


class CloseReason(enum.StrEnum):
    CONFIRMED = "confirmed"
    TIMEOUT = "timeout"
    WITHDRAWN = "withdrawn"


class Channel(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    STAFF = "staff"


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"
    NOTE = "note"


class InboundState(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    IGNORED = "ignored"
    FAILED = "failed"
    QUARANTINED = "quarantined"


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    WITHHELD = "withheld"
    DEAD = "dead"


class CallDirection(enum.StrEnum):
    IN = "in"
    OUT = "out"


class CallState(enum.StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


class CallOutcome(enum.StrEnum):
    ANSWERED = "answered"
    MISSED = "missed"
    BUSY = "busy"
    CANCELLED = "cancelled"
    FAILED = "failed"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Stored as plain strings with a CHECK: readable in psql/sqlite3 and no PostgreSQL
    # ENUM type whose ALTER would complicate later migrations.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Customer(Base):
    """An organisation that bought a support package."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    package: Mapped[str] = mapped_column(String(64))
    domains: Mapped[str] = mapped_column(
        String(1000), default="", doc="space-separated mail domains that identify the customer"
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    contacts: Mapped[list[Contact]] = relationship(back_populates="customer")


class Contact(Base):
    """A person at a customer; ``responsible`` contacts may confirm closure."""

    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("email"),
        UniqueConstraint("phone"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32), doc="E.164")
    language: Mapped[str] = mapped_column(String(8), default="ru")
    responsible: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="contacts")


class Staff(Base):
    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    telegram_chat_id: Mapped[int | None] = mapped_column(BigInteger)
    on_duty: Mapped[bool] = mapped_column(Boolean, default=True)
    last_assigned_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime(), doc="round-robin position: the longest-idle on-duty engineer is next"
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    queues: Mapped[list[StaffQueue]] = relationship(
        back_populates="staff", cascade="all, delete-orphan", order_by="StaffQueue.queue"
    )

    @property
    def queue_names(self) -> list[str]:
        return [q.queue for q in self.queues]


class StaffQueue(Base):
    __tablename__ = "staff_queues"

    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"), primary_key=True)
    queue: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)

    staff: Mapped[Staff] = relationship(back_populates="queues")


class Counter(Base):
    """Registration-number sequences, one row per scope (the year, or ``all``)."""

    __tablename__ = "counters"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_queue_order", "status", "priority", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[Kind] = mapped_column(_enum(Kind, "ticket_kind"))
    priority: Mapped[Priority] = mapped_column(_enum(Priority, "ticket_priority"))
    status: Mapped[Status] = mapped_column(_enum(Status, "ticket_status"), index=True)
    close_reason: Mapped[CloseReason | None] = mapped_column(
        _enum(CloseReason, "ticket_close_reason")
    )
    subject: Mapped[str] = mapped_column(String(998))
    description: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[Channel] = mapped_column(_enum(Channel, "ticket_channel"))
    queue: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"), index=True)

    env_os: Mapped[str | None] = mapped_column(String(64))
    env_os_version: Mapped[str | None] = mapped_column(String(64))
    env_product: Mapped[str | None] = mapped_column(String(64))
    env_product_version: Mapped[str | None] = mapped_column(String(64))
    env_browser: Mapped[str | None] = mapped_column(String(64))
    env_browser_version: Mapped[str | None] = mapped_column(String(64))

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    response_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    resolution_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    first_response_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # When the staff were told that a due time had passed; each breach is told once.
    response_escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    resolution_escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    customer: Mapped[Customer] = relationship()
    contact: Mapped[Contact | None] = relationship()
    assignee: Mapped[Staff | None] = relationship()
    messages: Mapped[list[Message]] = relationship(back_populates="ticket", order_by="Message.id")
    journal: Mapped[list[JournalEntry]] = relationship(
        back_populates="ticket", order_by="JournalEntry.id"
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    direction: Mapped[Direction] = mapped_column(_enum(Direction, "message_direction"))
    author: Mapped[str] = mapped_column(String(320), default="")
    subject: Mapped[str] = mapped_column(String(998), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text, doc="sanitized HTML for display")
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", order_by="Attachment.id"
    )


class Blob(Base):
    """Content-addressed file: the bytes live in the blob store under their sha256."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    filename: Mapped[str] = mapped_column(String(255), default="")
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    screenshot: Mapped[bool] = mapped_column(Boolean, default=False)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)

    message: Mapped[Message] = relationship(back_populates="attachments")


class JournalEntry(Base):
    """Append-only record of everything that happened to a ticket."""

    __tablename__ = "journal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    ticket: Mapped[Ticket] = relationship(back_populates="journal")


class InboundRaw(Base):
    """An inbound item's raw bytes, exactly as received: written once, never updated.

    A table of their own, because SQLite rewrites a whole row on any UPDATE: kept in the
    item's row, a mail's bytes would be read and written again at its claim and at its
    outcome, which costs memory for a large mail and write-ahead log for every one."""

    __tablename__ = "inbound_raw"

    inbound_id: Mapped[int] = mapped_column(
        ForeignKey("inbound.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class InboundItem(Base):
    """A received raw item (mail, call event), written before its source acknowledges it."""

    __tablename__ = "inbound"
    __table_args__ = (
        UniqueConstraint("source", "source_ref"),
        Index("ix_inbound_claim", "state", "next_attempt_at"),
        # An IMAP source asks "has this mailbox stored this Message-ID?" for every message;
        # the pipeline asks whether a mail answered, or the same mail from another source,
        # is still in the store (storage.inbound.unfinished). Each names a Message-ID, so
        # the items without one (call events) are left out: a commit of webhooks writes
        # one index fewer.
        Index(
            "ix_inbound_message_id",
            "message_id",
            "source",
            sqlite_where=text("message_id IS NOT NULL"),
            postgresql_where=text("message_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    source_ref: Mapped[str] = mapped_column(String(512))
    message_id: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    state: Mapped[InboundState] = mapped_column(
        _enum(InboundState, "inbound_state"), default=InboundState.PENDING
    )
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Read-only: written by storage.inbound.store(). Loaded with the item unless deferred;
    # the daemon's own paths defer it and read it apart (storage.inbound.raw_of). The CASE
    # names this table outside the subquery, so that `select(InboundItem.raw)` alone reads
    # FROM it and the subquery correlates, rather than the subquery joining it on its own
    # and answering every row with the first item's bytes.
    raw: Mapped[bytes] = column_property(
        case(
            (
                id.is_not(None),
                select(InboundRaw.raw).where(InboundRaw.inbound_id == id).scalar_subquery(),
            )
        )
    )


class MailboxCheckpoint(Base):
    """How far an IMAP mailbox has been read: every UID up to ``last_uid`` is stored.

    Written in the same transaction as the inbound items it covers, so a restart neither
    misses nor repeats mail; a new ``uidvalidity`` means the server renumbered the folder.
    """

    __tablename__ = "mailbox_checkpoints"

    mailbox: Mapped[str] = mapped_column(String(64), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OutboxItem(Base):
    """A notification queued in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_claim", "state", "next_attempt_at"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    template: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(320))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message_id: Mapped[str | None] = mapped_column(String(998), unique=True)
    state: Mapped[OutboxState] = mapped_column(
        _enum(OutboxState, "outbox_state"), default=OutboxState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    ticket: Mapped[Ticket | None] = relationship()


class Call(Base):
    """One phone call as its provider's events told it; linked to the caller and a ticket."""

    __tablename__ = "calls"
    __table_args__ = (UniqueConstraint("provider", "call_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    call_id: Mapped[str] = mapped_column(String(200))
    # None until an event that says which way the call went is applied (Telnyx says it only
    # when the call begins).
    direction: Mapped[CallDirection | None] = mapped_column(
        _enum(CallDirection, "call_direction")
    )
    from_number: Mapped[str] = mapped_column(String(64), doc="E.164 when it parses, else as sent")
    to_number: Mapped[str] = mapped_column(String(64), doc="E.164 when it parses, else as sent")
    agent: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[CallState] = mapped_column(_enum(CallState, "call_state"))
    outcome: Mapped[CallOutcome | None] = mapped_column(_enum(CallOutcome, "call_outcome"))
    cause: Mapped[str | None] = mapped_column(String(200), doc="the provider's own reason")
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    answered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    duration: Mapped[int | None] = mapped_column(Integer, doc="seconds of conversation")
    recording_url: Mapped[str | None] = mapped_column(Text)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    # The legs of a call whose provider names them (Telnyx's transfers share the caller's
    # call id), in the order first heard of: what each leg's events said (intake.calls).
    legs: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    # When an ended inbound call whose legs are still awaited is to be told to the desk
    # (the worker tells it then); None once told, or when nothing is awaited.
    tell_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    contact: Mapped[Contact | None] = relationship()
    ticket: Mapped[Ticket | None] = relationship()


class Suppression(Base):
    """An address automatic mail must never go to (a hard bounce, a complaint)."""

    __tablename__ = "suppressions"

    address: Mapped[str] = mapped_column(String(320), primary_key=True, doc="lower case")
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AppendOnlyError(RuntimeError):
    """Raised when code tries to change or delete a journal entry."""


@event.listens_for(JournalEntry, "before_update")
def _journal_is_append_only_update(*_: object) -> None:
    raise AppendOnlyError("journal entries are append-only; they cannot be changed")


@event.listens_for(JournalEntry, "before_delete")
def _journal_is_append_only_delete(*_: object) -> None:
    raise AppendOnlyError("journal entries are append-only; they cannot be deleted")
