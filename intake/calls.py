"""Call events become call records, and calls become requests.

Events are idempotent and ordered per call: the call's row is locked while an event is
applied, and an event not after the last one applied (a duplicate, or one that arrives
late) changes nothing. When a call ends the desk hears of it once: a missed inbound call
registers a "Missed call from …" ticket, or is journaled on the caller's open ticket; an
answered call is journaled on the caller's open ticket, or waits for the operator's log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from intake.desk import OPEN_STATUSES, SYSTEM_ACTOR, Desk, NewRequest
from intake.directory import add_customer
from intake.sources.telephony.model import CallEvent, EventKind, e164
from storage import inbound
from storage.db import Database
from storage.models import (
    Call,
    CallDirection,
    CallOutcome,
    CallState,
    Channel,
    Contact,
    Customer,
    InboundItem,
    InboundState,
    Priority,
    Ticket,
    utcnow,
)

log = logging.getLogger(__name__)

ACTOR = "telephony"


@dataclass(frozen=True)
class CallPolicy:
    default_region: str = "RU"
    missed_call_priority: Priority = Priority.P2
    # Per provider, over missed_call_priority.
    provider_priority: Mapping[str, Priority] = field(default_factory=dict)
    # Callers of no known contact become contacts of this customer (created when needed).
    unassigned_customer: str = "unassigned"
    max_attempts: int = 5

    def priority_for(self, provider: str) -> Priority:
        return self.provider_priority.get(provider, self.missed_call_priority)


def source_name(provider: str) -> str:
    return f"telephony:{provider}"


@dataclass(frozen=True)
class Received:
    """A verified webhook request, to be kept before it is acknowledged."""

    provider: str
    source_ref: str
    raw: bytes


class CallRecorder:
    def __init__(self, db: Database, desk: Desk, policy: CallPolicy) -> None:
        self.db = db
        self.desk = desk
        self.policy = policy

    def store(self, batch: Sequence[Received]) -> list[bool]:
        """Keep each raw request, all in one transaction: many webhooks share one commit,
        and each is acknowledged only after it. For each, False for a duplicate delivery.
        The events are acted on afterwards, from the kept request (see :meth:`process`)."""
        if not batch:
            return []
        now = utcnow()
        rows = [
            {
                "source": source_name(r.provider),
                "source_ref": r.source_ref,
                "raw": r.raw,
                "size": len(r.raw),
                "received_at": now,
                "state": InboundState.PENDING,
                "attempts": 0,
            }
            for r in batch
        ]
        with self.db.transaction() as session:
            # What inbound.store() does for one item, as one statement for the batch:
            # building a statement per webhook costs more than its share of the commit.
            stmt = (
                _dialect_insert(session)(InboundItem)
                .on_conflict_do_nothing(index_elements=["source", "source_ref"])
                .returning(InboundItem.source, InboundItem.source_ref)
            )
            new = {(row.source, row.source_ref) for row in session.execute(stmt, rows)}
        results = []
        for row in rows:
            key = (row["source"], row["source_ref"])
            results.append(key in new)
            new.discard(key)
        return results

    def process(
        self,
        session: Session,
        item: InboundItem,
        events: Sequence[CallEvent],
        ignored: str | None,
    ) -> None:
        """Act on a claimed item's events and mark it done, ignored, or failed (its events'
        work rolled back, to be retried with backoff)."""
        if ignored is not None:
            inbound.ignored(session, item, reason=ignored)
            return
        try:
            with session.begin_nested():
                ticket_ids = [self.apply(session, event) for event in events]
        except Exception as error:
            label = events[0].label if events else f"{item.source}:{item.source_ref}"
            log.exception("%s: call event not processed; kept as inbound %d", label, item.id)
            inbound.failed(
                session,
                item.id,
                error=f"{type(error).__name__}: {error}",
                max_attempts=self.policy.max_attempts,
            )
            return
        inbound.done(session, item, ticket_id=next((t for t in ticket_ids if t), None))

    # one event -----------------------------------------------------------------------------

    def apply(self, session: Session, event: CallEvent) -> int | None:
        """Apply one event to its call; the ticket it touched, if any."""
        call = self._locked_call(session, event)
        now = utcnow()
        if event.kind is EventKind.RECORDING:
            return self._recording(session, call, event)
        if call.state is CallState.ENDED or event.sequence <= call.last_sequence:
            log.info(
                "%s: %s event %d is late or repeated; ignored",
                event.label,
                event.kind,
                event.sequence,
            )
            return None
        call.last_sequence = event.sequence
        call.updated_at = now
        if event.kind is EventKind.PROGRESS:
            return None
        call.agent = event.agent or call.agent
        at = event.occurred_at or now
        if call.started_at is None:
            call.started_at = event.started_at or at
        if event.kind is EventKind.ANSWERED:
            call.state = CallState.ANSWERED
            call.answered_at = event.answered_at or at
        elif event.kind is EventKind.ENDED:
            return self._ended(session, call, event)
        return None

    def _locked_call(self, session: Session, event: CallEvent) -> Call:
        """The event's call, created on its first event, locked until the commit."""
        find = (
            select(Call)
            .where(Call.provider == event.provider, Call.call_id == event.call_id)
            .with_for_update()
        )
        call = session.scalars(find).first()
        if call is not None:
            return call
        region = self.policy.default_region
        caller = e164(event.caller, region)
        contact_id = (
            session.scalars(select(Contact.id).where(Contact.phone == caller)).first()
            if caller
            else None
        )
        now = utcnow()
        # Another daemon may create the same call at the same moment (PostgreSQL).
        stmt = _dialect_insert(session)(Call).on_conflict_do_nothing(
            index_elements=["provider", "call_id"]
        )
        session.execute(
            stmt,
            {
                "provider": event.provider,
                "call_id": event.call_id,
                "direction": event.direction,
                "from_number": e164(event.from_number, region) or event.from_number,
                "to_number": e164(event.to_number, region) or event.to_number,
                "state": CallState.RINGING,
                "last_sequence": 0,
                "contact_id": contact_id,
                "created_at": now,
                "updated_at": now,
            },
        )
        return session.scalars(find).one()

    def _recording(self, session: Session, call: Call, event: CallEvent) -> int | None:
        if not event.recording_url or call.recording_url == event.recording_url:
            return None
        call.recording_url = event.recording_url
        call.updated_at = utcnow()
        if call.ticket is not None:
            self.desk.journal(session, call.ticket, ACTOR, "call_recording", **self._details(call))
        return call.ticket_id

    def _ended(self, session: Session, call: Call, event: CallEvent) -> int | None:
        call.state = CallState.ENDED
        call.ended_at = event.ended_at or event.occurred_at or utcnow()
        call.cause = event.cause
        call.recording_url = event.recording_url or call.recording_url
        if event.answered_at is not None:
            call.answered_at = event.answered_at
        answered = call.answered_at is not None or event.outcome is CallOutcome.ANSWERED
        call.outcome = CallOutcome.ANSWERED if answered else event.outcome or CallOutcome.MISSED
        if event.duration is not None:
            call.duration = event.duration
        elif call.answered_at is not None:
            call.duration = max(int((call.ended_at - call.answered_at).total_seconds()), 0)
        if call.direction is not CallDirection.IN:
            return None
        if call.outcome is CallOutcome.ANSWERED:
            return self._answered(session, call)
        return self._missed(session, call)

    def _answered(self, session: Session, call: Call) -> int | None:
        ticket = self._open_ticket(session, call.contact_id)
        if ticket is None:
            log.info("%s:%s: answered; waits for the operator's log", call.provider, call.call_id)
            return None
        call.ticket = ticket
        self.desk.journal(session, ticket, ACTOR, "call_answered", **self._details(call))
        log.info("%s: answered call %s:%s journaled", ticket.number, call.provider, call.call_id)
        return ticket.id

    def _missed(self, session: Session, call: Call) -> int:
        contact = self._caller_contact(session, call)
        ticket = self._open_ticket(session, contact.id if contact else None)
        if ticket is not None:
            call.ticket = ticket
            self.desk.journal(session, ticket, ACTOR, "missed_call", **self._details(call))
            self.desk._notify_staff(
                session, ticket, "follow_up", message=f"Missed call from {call.from_number}"
            )
            log.info("%s: missed call %s:%s journaled", ticket.number, call.provider, call.call_id)
            return ticket.id
        customer_id = (
            contact.customer_id
            if contact
            else unassigned_customer(session, self.desk, self.policy.unassigned_customer).id
        )
        ticket = self.desk.register(
            session,
            NewRequest(
                subject=f"Missed call from {call.from_number}",
                channel=Channel.PHONE,
                customer_id=customer_id,
                contact_id=contact.id if contact else None,
                description=_describe(call),
                priority=self.policy.priority_for(call.provider),
                author=call.from_number,
            ),
            actor=ACTOR,
        )
        call.ticket = ticket
        self.desk.journal(session, ticket, SYSTEM_ACTOR, "missed_call", **self._details(call))
        log.info("%s: registered for missed call %s:%s", ticket.number, call.provider, call.call_id)
        return ticket.id

    def _caller_contact(self, session: Session, call: Call) -> Contact | None:
        if call.contact is not None:
            return call.contact
        phone = e164(call.from_number, self.policy.default_region)
        if phone is None:
            return None
        customer = unassigned_customer(session, self.desk, self.policy.unassigned_customer)
        contact = Contact(customer=customer, phone=phone, name="")
        session.add(contact)
        session.flush()
        call.contact = contact
        return contact

    def _open_ticket(self, session: Session, contact_id: int | None) -> Ticket | None:
        if contact_id is None:
            return None
        return session.scalars(
            select(Ticket)
            .where(Ticket.contact_id == contact_id, Ticket.status.in_(OPEN_STATUSES))
            .order_by(Ticket.updated_at.desc(), Ticket.id.desc())
            .limit(1)
        ).first()

    @staticmethod
    def _details(call: Call) -> dict[str, object]:
        return {
            "provider": call.provider,
            "call_id": call.call_id,
            "from": call.from_number,
            "to": call.to_number,
            "outcome": call.outcome.value if call.outcome else None,
            "cause": call.cause,
            "agent": call.agent,
            "duration": call.duration,
            "recording_url": call.recording_url,
        }


def _describe(call: Call) -> str:
    started = call.started_at.isoformat(timespec="seconds") if call.started_at else "?"
    outcome = call.outcome.value if call.outcome else "missed"
    lines = [f"Call from {call.from_number} to {call.to_number} at {started}: {outcome}."]
    if call.cause:
        lines.append(f"Provider's cause: {call.cause}.")
    return "\n".join(lines)


def unassigned_customer(session: Session, desk: Desk, name: str) -> Customer:
    """The customer that callers of no known contact are added to, created when first needed."""
    customer = session.scalars(select(Customer).where(Customer.name == name)).one_or_none()
    if customer is None:
        rules = desk.rules
        customer = add_customer(
            session, name, package=rules.default_package, known_packages=rules.packages
        )
    return customer


def _dialect_insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert
