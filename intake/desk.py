"""The desk's regulation: registration, numbering, transitions, priorities, assignment.

Every public operation takes the caller's session and does its work inside the caller's
transaction, so that a ticket, its journal entries and its outbox rows commit together or
not at all (ARCHITECTURE.md, reliability rule 3).
"""

from __future__ import annotations

import datetime as dt
import string
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import (
    CTE,
    Executable,
    Row,
    Select,
    Table,
    bindparam,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from parsers.verdict import Verdict
from storage.db import Database
from storage.models import (
    Channel,
    CloseReason,
    Direction,
    JournalEntry,
    Kind,
    Message,
    OutboxItem,
    Priority,
    Staff,
    StaffQueue,
    Status,
    Ticket,
    utcnow,
)

SYSTEM_ACTOR = "system"
# Staff notifications carry the start of a customer's message; Telegram cuts the rest.
STAFF_EXCERPT_CHARS = 4096
NO_EMAIL_REASON = "the contact has no email address"


# Registration's statements, built once: building and coercing a statement's values costs
# more than running it on SQLite.
_TABLES = Ticket.metadata.tables
_INSERT_TICKET = insert(_TABLES["tickets"]).returning(_TABLES["tickets"].c.id)
_INSERT_MESSAGE = insert(_TABLES["messages"]).returning(_TABLES["messages"].c.id)
_INSERT_JOURNAL = insert(_TABLES["journal"])
_INSERT_OUTBOX = insert(_TABLES["outbox"])
_MARK_ASSIGNED = (
    update(_TABLES["staff"])
    .where(_TABLES["staff"].c.id == bindparam("staff_id"))
    .values(last_assigned_at=bindparam("assigned_at"))
)


def _next_in_counter(
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert],
) -> ReturningInsert[tuple[int]]:
    counters = _TABLES["counters"]
    return (
        insert(counters)
        .values(scope=bindparam("scope"), value=1)
        .on_conflict_do_update(
            index_elements=[counters.c.scope], set_={"value": counters.c.value + 1}
        )
        .returning(counters.c.value)
    )


_NEXT_IN_COUNTER = {
    "postgresql": _next_in_counter(postgresql.insert),
    "sqlite": _next_in_counter(sqlite.insert),
}
_STAFF = _TABLES["staff"]
_ON_DUTY = (
    select(_STAFF.c.id, _STAFF.c.name)
    .join(StaffQueue)
    .where(StaffQueue.queue == bindparam("queue"), _STAFF.c.on_duty.is_(True))
    .order_by(_STAFF.c.last_assigned_at.asc().nulls_first(), _STAFF.c.id)
    .limit(1)
)


def _turn(*, skip_locked: bool) -> CTE:
    """PostgreSQL: the round-robin turn taken in one statement, the engineer (id, name).

    Two registrations at once take different engineers (SKIP LOCKED); without it, one
    that finds every engineer of the queue in another's turn waits for that statement.
    FOR NO KEY UPDATE (key_share): a ticket being inserted that names the engineer holds
    a KEY SHARE lock on their row until it commits, which FOR UPDATE would wait for."""
    candidate = _ON_DUTY.with_for_update(skip_locked=skip_locked, key_share=True, of=_STAFF)
    chosen = candidate.cte("candidate")
    return (
        update(_STAFF)
        .where(_STAFF.c.id == chosen.c.id)
        .values(last_assigned_at=bindparam("assigned_at"))
        .returning(_STAFF.c.id, _STAFF.c.name)
        .cte("turn")
    )


_FREE_TURN = _turn(skip_locked=True)
_WAITING_TURN = _turn(skip_locked=False)
_PG_NUMBER = _NEXT_IN_COUNTER["postgresql"].cte("number")
# Registration's number and round-robin turn in one statement; ``staffed`` tells a turn
# that is empty because no one is on duty from one that is empty because every engineer
# on duty is in another registration's turn, which is then waited for.
_NUMBER_AND_TURN = select(
    _PG_NUMBER.c.value, _FREE_TURN.c.id, _FREE_TURN.c.name, _ON_DUTY.exists().label("staffed")
).select_from(_PG_NUMBER.outerjoin(_FREE_TURN, true()))
_TAKE_FREE_TURN = select(_FREE_TURN.c.id, _FREE_TURN.c.name)
_WAIT_FOR_TURN = select(_WAITING_TURN.c.id, _WAITING_TURN.c.name)
_STAFF_BY_NAME = select(_STAFF.c.id, _STAFF.c.name).where(_STAFF.c.name == bindparam("name"))
_CUSTOMERS = _TABLES["customers"]
_CONTACTS = _TABLES["contacts"]
# The customer, and the contact when one is named, in one query.
_REQUESTER = (
    select(
        _CUSTOMERS.c.id,
        _CUSTOMERS.c.name,
        _CUSTOMERS.c.package,
        _CONTACTS.c.id.label("contact_id"),
        _CONTACTS.c.customer_id.label("contact_customer_id"),
        _CONTACTS.c.email,
        _CONTACTS.c.language,
    )
    .select_from(_CUSTOMERS.outerjoin(_CONTACTS, _CONTACTS.c.id == bindparam("contact_id")))
    .where(_CUSTOMERS.c.id == bindparam("customer_id"))
)
_TICKETS = _TABLES["tickets"]
# What a follow-up needs of its ticket, locked until the commit.
_FOLLOWED_TICKET = (
    select(
        _TICKETS.c.number,
        _TICKETS.c.status,
        _TICKETS.c.customer_id,
        _TICKETS.c.contact_id,
        _CONTACTS.c.email,
        _CONTACTS.c.language,
    )
    .select_from(_TICKETS.outerjoin(_CONTACTS, _CONTACTS.c.id == _TICKETS.c.contact_id))
    .where(_TICKETS.c.id == bindparam("ticket_id"))
    .with_for_update(of=_TICKETS)
)
# Exact first (the unique index); people also type numbers in lower case.
_TICKET_ID_BY_NUMBER: tuple[Select[int], ...] = (
    select(_TICKETS.c.id).where(_TICKETS.c.number == bindparam("number")),
    select(_TICKETS.c.id).where(func.upper(_TICKETS.c.number) == bindparam("upper")),
)
# Whether the sender may confirm a solution for the ticket's customer. Addresses are
# compared whole and without case: a mail server may write Anna@ for anna@.
_RESPONSIBLE = select(_CONTACTS.c.id).where(
    func.lower(_CONTACTS.c.email) == func.lower(bindparam("email")),
    _CONTACTS.c.customer_id == bindparam("customer_id"),
    _CONTACTS.c.responsible.is_(True),
)
# Whether the sender speaks for the ticket's customer: the one who asked, a responsible
# contact, or an address at one of its domains (space-separated; compared whole in Python).
# Not every contact: unknown senders are all contacts of one "unassigned" customer.
_OF_CUSTOMER = select(
    _CUSTOMERS.c.domains,
    select(_CONTACTS.c.id)
    .where(
        func.lower(_CONTACTS.c.email) == func.lower(bindparam("email")),
        _CONTACTS.c.customer_id == _CUSTOMERS.c.id,
        or_(_CONTACTS.c.responsible.is_(True), _CONTACTS.c.id == bindparam("asked_by")),
    )
    .exists()
    .label("contact"),
).where(_CUSTOMERS.c.id == bindparam("customer_id"))
_TOUCH_TICKET = (
    update(_TICKETS)
    .where(_TICKETS.c.id == bindparam("ticket_id"))
    .values(status=bindparam("new_status"), updated_at=bindparam("touched_at"))
)


class Engineer(NamedTuple):
    """A staff member as assignment names them."""

    id: int
    name: str


def _on_its_own(
    session: Session, statement: Executable, params: Mapping[str, Any]
) -> Row[Any] | None:
    """PostgreSQL: a shared counter's ``statement``, committed on its own
    (``Database.side_statement``); its first row. In the caller's transaction for a
    session that is not a :class:`Database`'s."""
    database: Database | None = session.info.get("database")
    if database is not None:
        return database.side_statement(statement, params)
    return session.connection().execute(statement, params).first()


def _engineer(row: Row[Any] | None) -> Engineer | None:
    return Engineer(row.id, row.name) if row is not None and row.id is not None else None


class DeskError(Exception):
    """A request the desk's rules refuse; the message is meant for the person who asked."""


class NotFoundError(DeskError):
    pass


class IllegalTransitionError(DeskError):
    pass


# --- transitions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    event: str
    sources: frozenset[Status]
    target: Status
    close_reason: CloseReason | None = None
    description: str = ""


OPEN_STATUSES = frozenset(
    {Status.NEW, Status.IN_PROGRESS, Status.WAITING_CUSTOMER, Status.RESOLVED}
)
WORKING_STATUSES = frozenset({Status.NEW, Status.IN_PROGRESS, Status.WAITING_CUSTOMER})

# The one table of the ticket lifecycle (ARCHITECTURE.md, "Ticket states"); everything else
# asks it.  A resolved ticket is still open: it waits for the customer's confirmation.
TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        "take",
        frozenset({Status.NEW}),
        Status.IN_PROGRESS,
        description="staff takes the request or it is assigned",
    ),
    Transition(
        "ask_customer",
        frozenset({Status.IN_PROGRESS}),
        Status.WAITING_CUSTOMER,
        description="staff asks the customer for information",
    ),
    Transition(
        "customer_replied",
        frozenset({Status.WAITING_CUSTOMER}),
        Status.IN_PROGRESS,
        description="the customer answers the question",
    ),
    Transition(
        "resolve",
        WORKING_STATUSES,
        Status.RESOLVED,
        description="staff delivers the answer; the customer must confirm",
    ),
    Transition(
        "confirm",
        frozenset({Status.RESOLVED}),
        Status.CLOSED,
        CloseReason.CONFIRMED,
        description="a responsible contact of the customer confirms the solution",
    ),
    Transition(
        "reopen",
        frozenset({Status.RESOLVED}),
        Status.IN_PROGRESS,
        description="the customer objects to the solution with reasons",
    ),
    Transition(
        "auto_close",
        frozenset({Status.RESOLVED}),
        Status.CLOSED,
        CloseReason.TIMEOUT,
        description="no answer from the customer within the working-day limit",
    ),
    Transition(
        "withdraw",
        OPEN_STATUSES,
        Status.CLOSED,
        CloseReason.WITHDRAWN,
        description="the customer withdraws the request",
    ),
)
TRANSITIONS_BY_EVENT: Mapping[str, Transition] = {t.event: t for t in TRANSITIONS}
EVENTS = tuple(TRANSITIONS_BY_EVENT)


def next_status(status: Status, event: str) -> Status:
    """The status that ``event`` leads to from ``status``, or IllegalTransitionError."""
    transition = TRANSITIONS_BY_EVENT.get(event)
    if transition is None:
        raise IllegalTransitionError(f"unknown event {event!r}; known events: {', '.join(EVENTS)}")
    if status not in transition.sources:
        allowed = ", ".join(sorted(s.value for s in transition.sources))
        raise IllegalTransitionError(
            f"cannot {event.replace('_', ' ')} a ticket that is {status.value} "
            f"(only from: {allowed})"
        )
    return transition.target


def _transition_details(
    event: str, source: Status, target: Status, *, note: str | None
) -> dict[str, Any]:
    """What the journal records of a status change."""
    details: dict[str, Any] = {"event": event, "from": source.value, "to": target.value}
    close_reason = TRANSITIONS_BY_EVENT[event].close_reason
    if close_reason is not None:
        details["close_reason"] = close_reason.value
    if note:
        details["note"] = note
    return details


def events_between(source: Status, target: Status) -> list[Transition]:
    return [t for t in TRANSITIONS if source in t.sources and t.target is target]


# --- priorities ---------------------------------------------------------------------------

PRIORITY_BY_KIND: Mapping[Kind, Priority] = {
    Kind.PROBLEM: Priority.P1,
    Kind.INCIDENT: Priority.P2,
    Kind.SERVICE_REQUEST: Priority.P3,
    Kind.DEVELOPMENT_REQUEST: Priority.P4,
}
PRIORITIES = tuple(Priority)


def shift_priority(priority: Priority, shift: int) -> Priority:
    """Raise urgency by ``shift`` levels (negative lowers it), kept within P1..P4."""
    index = PRIORITIES.index(priority) - shift
    return PRIORITIES[min(max(index, 0), len(PRIORITIES) - 1)]


# --- rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupportPackage:
    name: str
    priority_shift: int = 0
    response_hours: Mapping[Priority, float] = field(default_factory=dict)
    resolution_hours: Mapping[Priority, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeskRules:
    """What the desk needs from the configuration, as plain values."""

    number_format: str = "OV-{year}-{seq:06d}"
    timezone: str = "Europe/Moscow"
    default_queue: str = "support"
    default_language: str = "ru"
    default_package: str = "standard"
    packages: Mapping[str, SupportPackage] = field(
        default_factory=lambda: {"standard": SupportPackage("standard")}
    )
    message_id_domain: str = "localhost"
    # Staff chats told of new, followed-up and escalated tickets; empty when Telegram is off.
    staff_chats: tuple[int, ...] = ()

    def package(self, name: str) -> SupportPackage:
        return (
            self.packages.get(name)
            or self.packages.get(self.default_package)
            or (SupportPackage(name))
        )


def number_scope(number_format: str) -> str:
    fields = {name for _, name, _, _ in string.Formatter().parse(number_format) if name}
    return "year" if "year" in fields else "all"


# --- registration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    os: str | None = None
    os_version: str | None = None
    product: str | None = None
    product_version: str | None = None
    browser: str | None = None
    browser_version: str | None = None


@dataclass(frozen=True)
class NewRequest:
    subject: str
    channel: Channel
    customer_id: int
    description: str = ""
    contact_id: int | None = None
    kind: Kind = Kind.INCIDENT
    priority: Priority | None = None
    priority_hint: Priority | None = None
    environment: Environment = Environment()
    queue: str | None = None
    assignee: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    html: str | None = None
    inbound_id: int | None = None
    author: str = ""
    # Environment fields the request lacks; the acknowledgement asks for them.
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class FollowUp:
    """A further message from the customer about an existing ticket."""

    text: str
    author: str = ""
    subject: str = ""
    html: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    inbound_id: int | None = None
    matched_by: str = ""
    # What a customer's mail says of a resolved ticket's solution, read only when the
    # ticket is resolved; and who wrote it (the address, normalised): only a contact
    # responsible for the customer may confirm.
    judge: Callable[[], Verdict] | None = None
    sender_email: str | None = None
    # False when our receiving server was to vouch for the sender and did not.
    authenticated: bool = True


@dataclass(frozen=True)
class Registration:
    ticket_id: int
    number: str
    # The request's own message, to which the pipeline attaches the mail's files.
    message_id: int


@dataclass(frozen=True)
class FollowedUp:
    ticket_id: int
    number: str
    # The customer's message, to which the pipeline attaches the mail's files.
    message_id: int


def _due_times(
    created_at: dt.datetime, priority: Priority, package: SupportPackage
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """When the first response and the resolution are due, from the package's targets."""
    response = package.response_hours.get(priority)
    resolution = package.resolution_hours.get(priority)
    return (
        created_at + dt.timedelta(hours=response) if response else None,
        created_at + dt.timedelta(hours=resolution) if resolution else None,
    )


class Desk:
    def __init__(self, rules: DeskRules, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.rules = rules
        self.clock = clock
        self.zone = ZoneInfo(rules.timezone)

    # numbers ------------------------------------------------------------------------------

    def allocate_number(self, session: Session, now: dt.datetime) -> str:
        """Next registration number: unique, never reused; a rollback leaves a gap."""
        return self._number_and_turn(session, now, queue=None)[0]

    def _number_and_turn(
        self, session: Session, now: dt.datetime, *, queue: str | None
    ) -> tuple[str, Engineer | None]:
        """The next registration number and, for a ``queue``, the round-robin turn in it.

        On SQLite both are taken in the caller's transaction (one writer: nothing to wait
        for). On PostgreSQL both are taken in one statement committed on its own, so that
        the counter's and the engineer's row locks are not held until the caller's commit
        while every other worker and daemon queues behind them; what it takes stays taken
        when the caller rolls back (see :meth:`next_on_duty`).
        """
        year = now.astimezone(self.zone).year
        scope = str(year) if number_scope(self.rules.number_format) == "year" else "all"
        params = {"scope": scope, "queue": queue, "assigned_at": now}
        engineer = None
        if session.get_bind().dialect.name == "sqlite":
            if queue is not None:
                engineer = self.next_on_duty(session, queue, now)
            seq = session.connection().execute(_NEXT_IN_COUNTER["sqlite"], params).scalar_one()
        elif queue is None:
            taken = _on_its_own(session, _NEXT_IN_COUNTER["postgresql"], params)
            assert taken is not None  # an upsert's RETURNING always has its row
            seq = taken.value
        else:
            taken = _on_its_own(session, _NUMBER_AND_TURN, params)
            assert taken is not None
            seq, engineer = taken.value, _engineer(taken)
            if engineer is None and taken.staffed:
                engineer = _engineer(_on_its_own(session, _WAIT_FOR_TURN, params))
        return self.rules.number_format.format(year=year, seq=seq), engineer

    # registration -------------------------------------------------------------------------

    def register(self, session: Session, request: NewRequest, *, actor: str) -> Ticket:
        registration = self.register_request(session, request, actor=actor)
        return session.get_one(Ticket, registration.ticket_id)

    def register_request(
        self, session: Session, request: NewRequest, *, actor: str
    ) -> Registration:
        """Register ``request``: the ticket, its first message, journal and outbox rows.

        Written with plain INSERTs rather than the ORM's unit of work: registration is the
        hot path of every mail and call, and the flush bookkeeping cost more than the SQL.
        """
        requester = session.execute(
            _REQUESTER,
            {"customer_id": request.customer_id, "contact_id": request.contact_id or None},
        ).first()
        if requester is None:
            raise NotFoundError(f"no customer with id {request.customer_id}")
        if request.contact_id and requester.contact_customer_id != requester.id:
            raise NotFoundError(
                f"no contact with id {request.contact_id} at customer {requester.name!r}"
            )
        contact_id = requester.contact_id if request.contact_id else None
        now = self.clock()
        package = self.rules.package(requester.package)
        priority = request.priority or self._priority_for(request, package)
        queue = request.queue or self.rules.default_queue
        assignee: Row[int, str] | Engineer | None
        if request.assignee:
            assignee = session.execute(_STAFF_BY_NAME, {"name": request.assignee}).first()
            if assignee is None:
                raise NotFoundError(f"no staff member {request.assignee!r}")
            number, rule = self.allocate_number(session, now), "explicit"
        else:
            number, assignee = self._number_and_turn(session, now, queue=queue)
            rule = "round-robin"
        env = request.environment
        subject = request.subject.strip() or "(no subject)"
        response_due_at, resolution_due_at = _due_times(now, priority, package)
        ticket_id = session.execute(
            _INSERT_TICKET,
            {
                "number": number,
                "kind": request.kind,
                "priority": priority,
                "status": Status.NEW,
                "subject": subject,
                "description": request.description,
                "channel": request.channel,
                "queue": queue,
                "customer_id": requester.id,
                "contact_id": contact_id,
                "assignee_id": assignee.id if assignee else None,
                "env_os": env.os,
                "env_os_version": env.os_version,
                "env_product": env.product,
                "env_product_version": env.product_version,
                "env_browser": env.browser,
                "env_browser_version": env.browser_version,
                "created_at": now,
                "updated_at": now,
                "response_due_at": response_due_at,
                "resolution_due_at": resolution_due_at,
            },
        ).scalar_one()
        message_id = session.execute(
            _INSERT_MESSAGE,
            {
                "ticket_id": ticket_id,
                "direction": Direction.IN,
                "author": request.author,
                "subject": subject,
                "text": request.description,
                "html": request.html,
                "message_id": request.message_id,
                "in_reply_to": request.in_reply_to,
                "inbound_id": request.inbound_id,
                "created_at": now,
            },
        ).scalar_one()
        journal = [
            self._journal_row(
                ticket_id,
                actor,
                "registered",
                number=number,
                kind=request.kind.value,
                priority=priority.value,
                channel=request.channel.value,
                queue=queue,
                package=package.name,
            )
        ]
        if assignee is not None:
            if rule == "explicit":
                # A round-robin pick took its turn already (_number_and_turn).
                session.execute(_MARK_ASSIGNED, {"staff_id": assignee.id, "assigned_at": now})
            journal.append(
                self._journal_row(
                    ticket_id,
                    actor if rule == "explicit" else SYSTEM_ACTOR,
                    "assigned",
                    assignee=assignee.name,
                    previous=None,
                    rule=rule,
                )
            )
        outbox = []
        acknowledgement = self._contact_mail(
            requester.email if contact_id else None,
            requester.language,
            number,
            Status.NEW,
            "acknowledgement",
            in_reply_to=request.message_id,
            missing=list(request.missing) or None,
        )
        if acknowledgement is None:
            journal.append(self._skipped_row(ticket_id, "acknowledgement"))
        else:
            outbox.append({"ticket_id": ticket_id, **acknowledgement})
        outbox += [
            {"ticket_id": ticket_id, **row} for row in self._staff_rows(number, "new_ticket")
        ]
        session.execute(_INSERT_JOURNAL, journal)
        if outbox:
            session.execute(_INSERT_OUTBOX, outbox)
        return Registration(ticket_id, number, message_id)

    def follow_up(
        self, session: Session, ticket: Ticket, follow: FollowUp, *, actor: str
    ) -> Message:
        """``add_follow_up`` for a loaded ticket, which then reads what it wrote."""
        session.flush()
        added = self.add_follow_up(session, ticket.id, follow, actor=actor)
        session.expire(ticket, ["status", "updated_at", "messages", "journal"])
        return session.get_one(Message, added.message_id)

    def add_follow_up(
        self, session: Session, ticket_id: int, follow: FollowUp, *, actor: str
    ) -> FollowedUp:
        """Append the customer's message; an answer to our question puts the ticket back in
        progress. On a resolved ticket the mail's verdict decides (``_answer_to_solution``);
        a closed ticket keeps the message and its journal entry only.

        Plain statements, like registration: every reply to our mail comes this way."""
        ticket = session.execute(_FOLLOWED_TICKET, {"ticket_id": ticket_id}).first()
        if ticket is None:
            raise NotFoundError(f"no ticket with id {ticket_id}")
        now = self.clock()
        message_id = session.execute(
            _INSERT_MESSAGE,
            {
                "ticket_id": ticket_id,
                "direction": Direction.IN,
                "author": follow.author,
                "subject": follow.subject,
                "text": follow.text,
                "html": follow.html,
                "message_id": follow.message_id,
                "in_reply_to": follow.in_reply_to,
                "inbound_id": follow.inbound_id,
                "created_at": now,
            },
        ).scalar_one()
        journal = [
            self._journal_row(
                ticket_id,
                actor,
                "follow_up_received",
                message_id=follow.message_id,
                matched_by=follow.matched_by,
                status=ticket.status.value,
            )
        ]
        outbox = []
        status = ticket.status
        template, mail = None, None
        # What a mail about a resolved ticket did, for the staff's notification.
        judged = None
        if status is Status.WAITING_CUSTOMER:
            event = "customer_replied"
            status = next_status(ticket.status, event)
            journal.append(
                self._journal_row(
                    ticket_id,
                    actor,
                    "status_changed",
                    **_transition_details(event, ticket.status, status, note=None),
                )
            )
            template = f"status_{status.value}"
            mail = self._contact_mail(
                ticket.email, ticket.language, ticket.number, status, template, event=event
            )
        elif status is Status.RESOLVED and follow.judge is not None:
            # The journal first, then the change it leads to.
            session.execute(_INSERT_JOURNAL, journal)
            status, judged = self._answer_to_solution(
                session,
                ticket_id,
                (ticket.customer_id, ticket.contact_id),
                follow,
                follow.judge(),
                actor,
            )
            journal = []
        elif status in (Status.NEW, Status.IN_PROGRESS):
            template = "follow_up_received"
            mail = self._contact_mail(
                ticket.email,
                ticket.language,
                ticket.number,
                status,
                template,
                in_reply_to=follow.message_id,
            )
        if template is not None:
            if mail is None:
                journal.append(self._skipped_row(ticket_id, template))
            else:
                outbox.append({"ticket_id": ticket_id, **mail})
        if status is Status.IN_PROGRESS or judged is not None:
            outbox += [
                {"ticket_id": ticket_id, **row}
                for row in self._staff_rows(
                    ticket.number,
                    "follow_up",
                    message=follow.text[:STAFF_EXCERPT_CHARS],
                    verdict=judged,
                )
            ]
        session.execute(
            _TOUCH_TICKET, {"ticket_id": ticket_id, "new_status": status, "touched_at": now}
        )
        if journal:
            session.execute(_INSERT_JOURNAL, journal)
        if outbox:
            session.execute(_INSERT_OUTBOX, outbox)
        return FollowedUp(ticket_id, ticket.number, message_id)

    def _answer_to_solution(
        self,
        session: Session,
        ticket_id: int,
        asked: tuple[int, int | None],
        follow: FollowUp,
        verdict: Verdict,
        actor: str,
    ) -> tuple[Status, str]:
        """A customer's mail about a resolved ticket (ARCHITECTURE.md, the regulation): a
        responsible contact's confirmation closes it, an argued objection from the
        customer's people reopens it, and anything else leaves it resolved (the staff are
        told of every such mail). ``asked`` is the ticket's customer and contact. The
        status it is left in, and what was judged (for the staff's notification)."""
        customer_id, contact_id = asked
        event, judged = None, "acknowledged"
        if verdict is Verdict.OBJECTS:
            if self._of_customer(session, follow.sender_email, customer_id, contact_id):
                event, judged = "reopen", "reopened"
            else:
                # Someone outside the customer, on the thread: the staff read it.
                judged = "not_customer"
        elif verdict is Verdict.CONFIRMS:
            responsible = follow.sender_email is not None and session.execute(
                _RESPONSIBLE, {"email": follow.sender_email, "customer_id": customer_id}
            ).first()
            if responsible and follow.authenticated:
                event, judged = "confirm", "confirmed"
            else:
                judged, reason = (
                    ("unauthenticated", "the receiving server did not vouch for the sender")
                    if responsible
                    else ("not_responsible", "not a responsible contact of the customer")
                )
                session.execute(
                    _INSERT_JOURNAL,
                    [
                        self._journal_row(
                            ticket_id,
                            actor,
                            "confirmation_refused",
                            sender=follow.sender_email or follow.author,
                            reason=reason,
                        )
                    ],
                )
        if event is None:
            return Status.RESOLVED, judged
        ticket = session.get_one(Ticket, ticket_id)
        session.refresh(ticket, ["status"])
        self.apply(session, ticket, event, actor=actor)
        return ticket.status, judged

    def _of_customer(
        self, session: Session, email: str | None, customer_id: int, asked_by: int | None
    ) -> bool:
        """Whether ``email`` speaks for the customer: the contact who asked (``asked_by``),
        a responsible contact, or an address at one of its domains."""
        if email is None:
            return False
        found = session.execute(
            _OF_CUSTOMER, {"email": email, "customer_id": customer_id, "asked_by": asked_by}
        ).first()
        if found is None:
            return False
        domain = email.rpartition("@")[2].lower()
        return bool(found.contact) or domain in found.domains.lower().split()

    def _priority_for(self, request: NewRequest, package: SupportPackage) -> Priority:
        base = PRIORITY_BY_KIND[request.kind]
        if request.priority_hint is not None and PRIORITIES.index(
            request.priority_hint
        ) < PRIORITIES.index(base):
            base = request.priority_hint
        return shift_priority(base, package.priority_shift)

    def _set_due_times(self, ticket: Ticket, package: SupportPackage) -> None:
        ticket.response_due_at, ticket.resolution_due_at = _due_times(
            ticket.created_at, ticket.priority, package
        )

    # lookup -------------------------------------------------------------------------------

    def ticket(self, session: Session, number: str, *, for_update: bool = False) -> Ticket:
        wanted = number.strip()
        ticket = None
        # Exact first (the unique index); people also type numbers in lower case.
        for condition in (Ticket.number == wanted, func.upper(Ticket.number) == wanted.upper()):
            stmt = select(Ticket).where(condition)
            if for_update:
                stmt = stmt.with_for_update()
            ticket = session.scalars(stmt).first()
            if ticket is not None:
                break
        if ticket is None:
            raise NotFoundError(f"no ticket {number!r}")
        return ticket

    def ticket_id(self, session: Session, number: str) -> int:
        """The id of the ticket numbered ``number``, as ``ticket`` finds it."""
        wanted = {"number": number.strip(), "upper": number.strip().upper()}
        for stmt in _TICKET_ID_BY_NUMBER:
            found = session.execute(stmt, wanted).scalar()
            if found is not None:
                return found
        raise NotFoundError(f"no ticket {number!r}")

    def _staff_by_name(self, session: Session, name: str) -> Staff:
        staff = session.scalars(select(Staff).where(Staff.name == name)).one_or_none()
        if staff is None:
            raise NotFoundError(f"no staff member {name!r}")
        return staff

    # transitions --------------------------------------------------------------------------

    def apply(
        self,
        session: Session,
        ticket: Ticket,
        event: str,
        *,
        actor: str,
        note: str | None = None,
    ) -> Ticket:
        """Move ``ticket`` by ``event``; journal it and queue the customer's notification."""
        source = ticket.status
        target = next_status(source, event)
        transition = TRANSITIONS_BY_EVENT[event]
        now = self.clock()
        ticket.status = target
        ticket.updated_at = now
        if target is Status.RESOLVED:
            ticket.resolved_at = now
        if target is Status.CLOSED:
            ticket.closed_at = now
            ticket.close_reason = transition.close_reason
        elif source is Status.RESOLVED:
            ticket.resolved_at = None
        if note:
            session.add(
                Message(
                    ticket=ticket,
                    direction=Direction.OUT
                    if event in ("ask_customer", "resolve")
                    else Direction.NOTE,
                    author=actor,
                    subject=ticket.subject,
                    text=note,
                    created_at=now,
                )
            )
        details = _transition_details(event, source, target, note=note)
        self.journal(session, ticket, actor, "status_changed", **details)
        if event in ("ask_customer", "resolve") and ticket.first_response_at is None:
            ticket.first_response_at = now
        self._notify_contact(session, ticket, f"status_{target.value}", note=note, event=event)
        session.flush()
        return ticket

    def set_status(
        self,
        session: Session,
        number: str,
        status: Status,
        *,
        actor: str,
        note: str | None = None,
        reason: CloseReason | None = None,
    ) -> Ticket:
        """Staff's way to move a ticket: the event is found from the transition table."""
        ticket = self.ticket(session, number, for_update=True)
        candidates = events_between(ticket.status, status)
        if reason is not None:
            candidates = [t for t in candidates if t.close_reason is reason]
        if not candidates:
            raise IllegalTransitionError(
                f"{ticket.number}: cannot go from {ticket.status.value} to {status.value}"
                + (f" with reason {reason.value}" if reason else "")
            )
        # Closing always says why: a ticket closed without the customer's word must not
        # read as "confirmed" or "withdrawn" by accident.
        if len(candidates) > 1 or (status is Status.CLOSED and reason is None):
            options = ", ".join(t.close_reason.value for t in candidates if t.close_reason)
            raise DeskError(
                f"{ticket.number}: going from {ticket.status.value} to {status.value} "
                f"needs a reason: {options}"
            )
        return self.apply(session, ticket, candidates[0].event, actor=actor, note=note)

    # assignment ---------------------------------------------------------------------------

    def assign(self, session: Session, number: str, staff_name: str, *, actor: str) -> Ticket:
        """Explicit assignment by staff; a new ticket is thereby taken into work."""
        ticket = self.ticket(session, number, for_update=True)
        if ticket.status is Status.CLOSED:
            raise IllegalTransitionError(f"{ticket.number} is closed; it cannot be assigned")
        self._assign(session, ticket, self._staff_by_name(session, staff_name), actor)
        if ticket.status is Status.NEW:
            self.apply(session, ticket, "take", actor=actor)
        session.flush()
        return ticket

    def next_on_duty(self, session: Session, queue: str, now: dt.datetime) -> Engineer | None:
        """Round-robin: the on-duty engineer of ``queue`` who was assigned longest ago;
        their turn is taken (``last_assigned_at`` = ``now``).

        On PostgreSQL the turn is taken in a statement committed on its own, like the
        number: two registrations at once take different engineers (SKIP LOCKED), and
        one that finds every engineer of the queue in another's turn waits for it rather
        than leave its ticket unassigned. A rolled-back registration keeps the turn taken.
        """
        params = {"queue": queue, "assigned_at": now}
        if session.get_bind().dialect.name != "sqlite":
            return _engineer(_on_its_own(session, _TAKE_FREE_TURN, params)) or _engineer(
                _on_its_own(session, _WAIT_FOR_TURN, params)
            )
        staff = session.execute(_ON_DUTY, params).first()
        if staff is None:
            return None
        session.execute(_MARK_ASSIGNED, {"staff_id": staff.id, "assigned_at": now})
        return Engineer(staff.id, staff.name)

    def _assign(
        self, session: Session, ticket: Ticket, staff: Staff, actor: str, *, rule: str = "explicit"
    ) -> None:
        previous = ticket.assignee.name if ticket.assignee else None
        ticket.assignee = staff
        ticket.updated_at = self.clock()
        staff.last_assigned_at = ticket.updated_at
        self.journal(
            session, ticket, actor, "assigned", assignee=staff.name, previous=previous, rule=rule
        )

    # due times ----------------------------------------------------------------------------

    def escalate_overdue(self, session: Session, ticket: Ticket, *, actor: str) -> list[str]:
        """Tell the staff, once each, that the ticket's response or resolution is overdue.

        The response is overdue until staff first answer the customer; the resolution only
        while the desk holds the ticket (not while it waits for the customer, nor once
        resolved). Which targets were escalated now is returned.
        """
        now = self.clock()
        overdue = []
        if (
            ticket.status in WORKING_STATUSES
            and ticket.first_response_at is None
            and ticket.response_due_at is not None
            and ticket.response_due_at <= now
            and ticket.response_escalated_at is None
        ):
            ticket.response_escalated_at = now
            overdue.append(("response", ticket.response_due_at))
        if (
            ticket.status in (Status.NEW, Status.IN_PROGRESS)
            and ticket.resolution_due_at is not None
            and ticket.resolution_due_at <= now
            and ticket.resolution_escalated_at is None
        ):
            ticket.resolution_escalated_at = now
            overdue.append(("resolution", ticket.resolution_due_at))
        for target, due in overdue:
            due_local = due.astimezone(self.zone).strftime("%Y-%m-%d %H:%M")
            self.journal(session, ticket, actor, "sla_breached", target=target, due_at=due_local)
            self._notify_staff(session, ticket, "sla_breach", event=target, reason=due_local)
        session.flush()
        return [target for target, _ in overdue]

    # priority -----------------------------------------------------------------------------

    def set_priority(
        self, session: Session, number: str, priority: Priority, *, actor: str, reason: str = ""
    ) -> Ticket:
        ticket = self.ticket(session, number, for_update=True)
        if ticket.status is Status.CLOSED:
            raise IllegalTransitionError(f"{ticket.number} is closed; its priority is final")
        previous = ticket.priority
        ticket.priority = priority
        ticket.updated_at = self.clock()
        self._set_due_times(ticket, self.rules.package(ticket.customer.package))
        self.journal(
            session,
            ticket,
            actor,
            "priority_changed",
            **{"from": previous.value, "to": priority.value, "reason": reason},
        )
        if priority is Priority.P1 and previous is not Priority.P1:
            self._notify_staff(
                session, ticket, "escalation", previous=previous.value, reason=reason
            )
        session.flush()
        return ticket

    # journal and notifications ------------------------------------------------------------

    def journal(
        self, session: Session, ticket: Ticket, actor: str, action: str, **details: Any
    ) -> JournalEntry:
        entry = JournalEntry(
            ticket=ticket, actor=actor, action=action, details=details, at=self.clock()
        )
        session.add(entry)
        return entry

    def _journal_row(
        self, ticket_id: int, actor: str, action: str, **details: Any
    ) -> dict[str, Any]:
        """A journal entry as column values, for an INSERT of several at once."""
        return {
            "ticket_id": ticket_id,
            "actor": actor,
            "action": action,
            "details": details,
            "at": self.clock(),
        }

    def _skipped_row(self, ticket_id: int, template: str) -> dict[str, Any]:
        return self._journal_row(
            ticket_id,
            SYSTEM_ACTOR,
            "notification_skipped",
            template=template,
            reason=NO_EMAIL_REASON,
        )

    def _notify_staff(
        self, session: Session, ticket: Ticket, template: str, **payload: Any
    ) -> None:
        """One Telegram row per staff chat; rendered from the ticket when it is sent."""
        for row in self._staff_rows(ticket.number, template, **payload):
            session.add(OutboxItem(ticket=ticket, **row))

    def _staff_rows(self, number: str, template: str, **payload: Any) -> list[dict[str, Any]]:
        return [
            {
                "channel": "telegram",
                "template": template,
                "recipient": str(chat),
                # Every row of one INSERT names the same columns.
                "message_id": None,
                "payload": {
                    "number": number,
                    "language": self.rules.default_language,
                    **{k: v for k, v in payload.items() if v is not None},
                },
            }
            for chat in self.rules.staff_chats
        ]

    def _notify_contact(
        self,
        session: Session,
        ticket: Ticket,
        template: str,
        *,
        in_reply_to: str | None = None,
        **payload: Any,
    ) -> None:
        contact = ticket.contact
        row = self._contact_mail(
            contact.email if contact else None,
            contact.language if contact else None,
            ticket.number,
            ticket.status,
            template,
            in_reply_to=in_reply_to,
            **payload,
        )
        if row is None:
            self.journal(
                session,
                ticket,
                SYSTEM_ACTOR,
                "notification_skipped",
                template=template,
                reason=NO_EMAIL_REASON,
            )
            return
        session.add(OutboxItem(ticket=ticket, **row))

    def _contact_mail(
        self,
        email: str | None,
        language: str | None,
        number: str,
        status: Status,
        template: str,
        *,
        in_reply_to: str | None = None,
        **payload: Any,
    ) -> dict[str, Any] | None:
        """The contact's email as outbox column values; None when there is no address."""
        if not email:
            return None
        return {
            "channel": "email",
            "template": template,
            "recipient": email,
            "message_id": f"<{uuid.uuid4().hex}@{self.rules.message_id_domain}>",
            "payload": {
                "number": number,
                "status": status.value,
                "language": language or self.rules.default_language,
                "in_reply_to": in_reply_to,
                **{k: v for k, v in payload.items() if v is not None},
            },
        }
