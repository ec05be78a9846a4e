"""Call events become call records, and calls become requests.

Events are idempotent and ordered per call: the call's row is locked while an event is
applied, and an event not after the last one applied (a duplicate, or one that arrives
late) changes nothing. When a call ends the desk hears of it once: a missed inbound call
registers a "Missed call from …" ticket, or is journaled on the caller's open ticket; an
answered call is journaled on the caller's open ticket, or waits for the operator's log.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, bindparam, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from intake.desk import OPEN_STATUSES, SYSTEM_ACTOR, Desk, NewRequest
from intake.directory import add_customer
from intake.sources.telephony.model import CallEvent, EventKind, e164
from storage import inbound
from storage.db import Database
from storage.inbound import Claimed
from storage.models import (
    Base,
    CallDirection,
    CallOutcome,
    CallState,
    Channel,
    Customer,
    Priority,
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
    # Per provider: seconds an ended call waits for the final events of its other legs,
    # which the provider tells of only when they end (an adapter's ``settle``).
    settle: Mapping[str, float] = field(default_factory=dict)

    def priority_for(self, provider: str) -> Priority:
        return self.provider_priority.get(provider, self.missed_call_priority)

    def settle_for(self, provider: str) -> float:
        return self.settle.get(provider, 0.0)


def source_name(provider: str) -> str:
    return f"telephony:{provider}"


@dataclass(frozen=True)
class Received:
    """A verified webhook request, to be kept before it is acknowledged, and what its
    adapter read in it (so that the worker need not read the kept request again)."""

    provider: str
    source_ref: str
    raw: bytes
    events: tuple[CallEvent, ...]
    ignored: str | None = None


class FollowUp(enum.Enum):
    """What the desk must hear of after an event changed a call."""

    RECORDING = "call_recording"
    ANSWERED = "call_answered"
    MISSED = "missed_call"


@dataclass(slots=True)
class CallRecord:
    """A call's row as the worker reads and writes it: plain values, no ORM object, so that
    a batch of events costs a few statements rather than a unit of work per event."""

    id: int
    provider: str
    call_id: str
    direction: CallDirection | None
    from_number: str
    to_number: str
    agent: str | None
    state: CallState
    outcome: CallOutcome | None
    cause: str | None
    started_at: dt.datetime | None
    answered_at: dt.datetime | None
    ended_at: dt.datetime | None
    duration: int | None
    recording_url: str | None
    last_sequence: int
    legs: list[dict[str, Any]] | None
    tell_at: dt.datetime | None
    contact_id: int | None
    ticket_id: int | None
    updated_at: dt.datetime

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.call_id}"


# Legs of one call at most (Telnyx: a transfer each); more are logged and ignored.
MAX_LEGS = 50
# How long an ended call waits for its legs that are known to be ringing or talking.
LEG_WAIT = dt.timedelta(seconds=60)
# An agent's answer this long after the caller's end (in whole seconds) is still in time.
ANSWER_GRACE = dt.timedelta(seconds=2)
CALLS = Base.metadata.tables["calls"]
RECORD_FIELDS = tuple(f.name for f in fields(CallRecord))
# What an event may change (the numbers too: a leg heard of later may be the caller's);
# written back once per batch.
CHANGING = tuple(name for name in RECORD_FIELDS if name not in ("id", "provider", "call_id"))
# Built once: building a statement costs more than running it.
_LOCK_CALLS = (
    select(*(CALLS.c[name] for name in RECORD_FIELDS))
    .where(
        CALLS.c.provider == bindparam("provider"),
        CALLS.c.call_id.in_(bindparam("call_ids", expanding=True)),
    )
    # Ordered, so that daemons locking overlapping batches take the locks in one order.
    .order_by(CALLS.c.id)
    .with_for_update()
)
_WRITE_CALLS = update(CALLS).where(CALLS.c.id == bindparam("record_id"))
# Ended calls whose legs have settled by now, to be told to the desk.
_SETTLED_CALLS = (
    select(*(CALLS.c[name] for name in RECORD_FIELDS))
    .where(CALLS.c.tell_at <= bindparam("now"))
    .order_by(CALLS.c.tell_at, CALLS.c.id)
    .limit(bindparam("limit"))
    # A call an operator's log holds now is told on a later pass, rather than waited for
    # with the turn held (the turn keeps daemons apart).
    .with_for_update(skip_locked=True)
)
# Another daemon may create the same call at the same moment (PostgreSQL).
_CREATE_CALLS = {
    name: dialect.insert(CALLS)
    .on_conflict_do_nothing(index_elements=["provider", "call_id"])
    .returning(CALLS.c.id, CALLS.c.provider, CALLS.c.call_id)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
CONTACTS = Base.metadata.tables["contacts"]
_CONTACTS_BY_PHONE = (
    select(CONTACTS.c.phone, CONTACTS.c.id, CONTACTS.c.customer_id)
    .where(CONTACTS.c.phone.in_(bindparam("phones", expanding=True)))
    .order_by(CONTACTS.c.id)
)
_CONTACT_BY_ID = select(CONTACTS.c.phone, CONTACTS.c.id, CONTACTS.c.customer_id).where(
    CONTACTS.c.id == bindparam("contact_id")
)
_CONTACTS_OF_CALLS = (
    select(CONTACTS.c.phone, CONTACTS.c.id, CONTACTS.c.customer_id)
    .where(
        or_(
            CONTACTS.c.id.in_(bindparam("contact_ids", expanding=True)),
            CONTACTS.c.phone.in_(bindparam("phones", expanding=True)),
        )
    )
    .order_by(CONTACTS.c.id)
)
_CUSTOMER_BY_NAME = select(Customer.__table__.c.id).where(
    Customer.__table__.c.name == bindparam("name")
)
_ADD_CONTACT = (
    insert(CONTACTS)
    .values(customer_id=bindparam("customer_id"), phone=bindparam("phone"), name="")
    .returning(CONTACTS.c.id)
)
TICKETS = Base.metadata.tables["tickets"]
# The caller's open ticket that changed last.
_OPEN_TICKET = (
    select(TICKETS.c.id, TICKETS.c.number)
    .where(
        TICKETS.c.contact_id == bindparam("contact_id"),
        TICKETS.c.status.in_(sorted(OPEN_STATUSES)),
    )
    .order_by(TICKETS.c.updated_at.desc(), TICKETS.c.id.desc())
    .limit(1)
)
# The same for many callers: each one's first row is its open ticket that changed last.
_OPEN_TICKETS = (
    select(TICKETS.c.contact_id, TICKETS.c.id, TICKETS.c.number)
    .where(
        TICKETS.c.contact_id.in_(bindparam("contact_ids", expanding=True)),
        TICKETS.c.status.in_(sorted(OPEN_STATUSES)),
    )
    .order_by(TICKETS.c.updated_at.desc(), TICKETS.c.id.desc())
)
_INSERT_JOURNAL = insert(Base.metadata.tables["journal"])
_INSERT_OUTBOX = insert(Base.metadata.tables["outbox"])


def advance(
    record: CallRecord, event: CallEvent, now: dt.datetime, policy: CallPolicy
) -> FollowUp | None:
    """Apply one event to its call's record; what the desk must hear of, if anything."""
    if event.kind is EventKind.RECORDING:
        if not event.recording_url or record.recording_url == event.recording_url:
            return None
        record.recording_url = event.recording_url
        record.updated_at = now
        return FollowUp.RECORDING if record.ticket_id is not None else None
    # A call heard of before its provider's legs were told apart (before migration 0011)
    # goes on as it began: its record says nothing of its legs.
    if event.leg is not None and (record.legs is not None or record.last_sequence == 0):
        return _advance_leg(record, event, now, policy)
    if record.direction is None and event.direction is not None:
        # Which way the call went, however late the event that says it: a call that ended
        # before it was known is told to the desk now.
        record.direction = event.direction
        record.updated_at = now
        if record.state is CallState.ENDED:
            return _told(record)
    if record.state is CallState.ENDED or event.sequence <= record.last_sequence:
        log.info(
            "%s: %s event %d is late or repeated; ignored", event.label, event.kind, event.sequence
        )
        return None
    record.last_sequence = event.sequence
    record.updated_at = now
    if event.kind is EventKind.PROGRESS:
        return None
    record.agent = event.agent or record.agent
    at = event.occurred_at or now
    if record.started_at is None:
        record.started_at = event.started_at or at
    if event.kind is EventKind.ANSWERED:
        record.state = CallState.ANSWERED
        record.answered_at = event.answered_at or at
    elif event.kind is EventKind.ENDED:
        return _end(record, event, now)
    return None


def _end(record: CallRecord, event: CallEvent, now: dt.datetime) -> FollowUp | None:
    record.state = CallState.ENDED
    record.ended_at = event.ended_at or event.occurred_at or now
    record.cause = event.cause
    record.recording_url = event.recording_url or record.recording_url
    if event.answered_at is not None:
        record.answered_at = event.answered_at
    answered = record.answered_at is not None or event.outcome is CallOutcome.ANSWERED
    record.outcome = CallOutcome.ANSWERED if answered else event.outcome or CallOutcome.MISSED
    if event.duration is not None:
        record.duration = event.duration
    elif record.answered_at is not None:
        record.duration = max(int((record.ended_at - record.answered_at).total_seconds()), 0)
    return _told(record)


def _advance_leg(
    record: CallRecord, event: CallEvent, now: dt.datetime, policy: CallPolicy
) -> FollowUp | None:
    """Apply an event of one leg of a call whose legs share its id (Telnyx: the caller's
    leg and a leg for each transfer of it; Twilio: the caller's call and the child calls
    of its <Dial>). What each leg's events say is kept in the record's ``legs``, and the
    call is what they say together (:func:`_as_legs_say`). So a leg that rang an agent who
    did not answer does not end the call, and the events may come in any order: until an
    inbound call has been told to the desk, a leg heard of later may turn out to be the
    caller's (an outbound leg that ended was not told, and the inbound leg heard of after
    it is the caller's), or the agent's who answered it."""
    if event.recording_url and event.recording_url != record.recording_url:
        record.recording_url = event.recording_url
        record.updated_at = now
        if _told_already(record):
            # As a recording event: journaled, if the call is on a ticket.
            return FollowUp.RECORDING if record.ticket_id is not None else None
    if _told_already(record):
        log.info("%s: leg %s %s after it was told; ignored", record.label, event.leg, event.kind)
        return None
    # New lists and dicts, never changed in place: the record's copy taken before the
    # event (to undo a failed item) shares the old ones.
    legs = [dict(leg) for leg in record.legs or ()]
    leg = next((leg for leg in legs if leg["id"] == event.leg), None)
    if leg is None:
        if len(legs) >= MAX_LEGS:
            log.warning("%s: more than %d legs; leg %s ignored", event.label, MAX_LEGS, event.leg)
            return None
        region = policy.default_region
        leg = {
            "id": event.leg,
            "direction": None,
            "from": e164(event.from_number, region) or event.from_number,
            "to": e164(event.to_number, region) or event.to_number,
        }
        legs.append(leg)
    # What each event says of its leg is a fact kept once, whatever the order in which
    # they come: a leg's answer applied after its hangup is still its answer.
    facts: dict[str, Any] = {}
    if leg["direction"] is None and event.direction is not None:
        facts["direction"] = str(event.direction)
    at = event.occurred_at or now
    # When it began: as the event says, or else when its first event came.
    began = event.started_at or at
    known = _moment(leg.get("started_at"))
    if known is None or began < known:
        facts["started_at"] = _stamp(began)
    answer = event.answered_at or (at if event.kind is EventKind.ANSWERED else None)
    if answer is not None and "answered_at" not in leg:
        facts["answered_at"] = _stamp(answer)
    if event.kind is EventKind.ENDED and "ended_at" not in leg:
        ended = event.ended_at or at
        if event.outcome is CallOutcome.ANSWERED and "answered_at" not in leg | facts:
            # Answered, says its end (Twilio tells only "completed" unless asked for more):
            # as long before its end as it lasted.
            lasted = dt.timedelta(seconds=event.duration or 0)
            facts["answered_at"] = _stamp(ended - lasted)
        facts["ended_at"] = _stamp(ended)
        # When its end was heard of: the other legs are waited for from then.
        facts["end_heard"] = _stamp(now)
        facts["outcome"] = None if event.outcome is None else str(event.outcome)
        facts["cause"] = event.cause
        facts["duration"] = event.duration
    if not facts:
        log.info(
            "%s: %s event of leg %s is repeated or says nothing new; ignored",
            event.label,
            event.kind,
            event.leg,
        )
        return None
    leg.update(facts)
    record.legs = legs
    record.agent = event.agent or record.agent
    record.updated_at = now
    return _as_legs_say(record, legs, now, policy.settle_for(record.provider))


def _told_already(record: CallRecord) -> bool:
    """Whether the desk has been told of the call (an inbound call that ended, and is not
    waiting for its legs to settle)."""
    return (
        record.state is CallState.ENDED
        and record.direction is CallDirection.IN
        and record.tell_at is None
    )


def _as_legs_say(
    record: CallRecord, legs: Sequence[Mapping[str, Any]], now: dt.datetime, settle: float
) -> FollowUp | None:
    """Set the call from its legs; what the desk must hear of, if the call has ended and
    its legs have settled (see :func:`settled`).

    The caller's leg says when the call began and ended: the inbound leg, or else the
    provider's call itself (Twilio's parent call), or else the leg that began first. The
    provider's application (an IVR, TwiML) answers the caller's leg and rings agents on
    legs of their own: when it did, the call was answered only if an agent answered
    before the caller hung up; when no other leg is known, the caller's answer counts."""
    caller = next((leg for leg in legs if leg["direction"] == CallDirection.IN), None)
    if caller is None:
        caller = next((leg for leg in legs if leg["id"] == record.call_id), None)
    if caller is None:
        caller = min(legs, key=lambda leg: _moment(leg["started_at"]) or _NEVER)
    direction = None if caller["direction"] is None else CallDirection(caller["direction"])
    if (direction, caller["from"], caller["to"]) != (
        record.direction,
        record.from_number,
        record.to_number,
    ):
        # Another leg is the caller's than was thought when the call was first heard of:
        # its contact is looked up again when the desk is told.
        record.direction = direction
        record.from_number = caller["from"]
        record.to_number = caller["to"]
        record.contact_id = None
    record.started_at = _moment(caller.get("started_at")) or record.started_at
    ended_at = _moment(caller.get("ended_at"))
    others = [leg for leg in legs if leg is not caller]
    # Providers count whole seconds: an answer a moment after the caller's end is in time.
    latest = None if ended_at is None else ended_at + ANSWER_GRACE
    answering = min(
        (
            (moment, leg)
            for leg in others or [caller]
            if (moment := _moment(leg.get("answered_at"))) and (latest is None or moment <= latest)
        ),
        key=lambda pair: pair[0],
        default=None,
    )
    record.answered_at = None if answering is None else answering[0]
    if ended_at is None:
        # The leg taken for the caller's until now may have ended: nothing was told yet.
        record.state = CallState.ANSWERED if record.answered_at else CallState.RINGING
        record.ended_at = record.outcome = record.cause = record.duration = None
        record.tell_at = None
        return None
    record.state = CallState.ENDED
    record.ended_at = ended_at
    record.cause = caller.get("cause")
    outcome = None if caller.get("outcome") is None else CallOutcome(caller["outcome"])
    if answering is not None:
        outcome = CallOutcome.ANSWERED
    elif outcome is CallOutcome.ANSWERED:
        # Its application answered the caller, and no agent did.
        outcome = None
    record.outcome = outcome or CallOutcome.MISSED
    record.duration = caller.get("duration")
    if answering is not None and (others or record.duration is None):
        # The conversation: from the answer to whichever side hung up first.
        moment, leg = answering
        record.duration = leg.get("duration") if others else None
        if record.duration is None:
            hung_up = min(ended_at, _moment(leg.get("ended_at")) or ended_at)
            record.duration = max(int((hung_up - moment).total_seconds()), 0)
    elif others:
        record.duration = None
    if record.direction is not CallDirection.IN:
        record.tell_at = None
        return _told(record)
    # Told once the other legs have settled: the provider's ``settle`` seconds have passed
    # since the last end of a leg was heard of (a leg it tells of late, or only once it
    # ends: Twilio's child calls, unless asked for more), and the legs known to be ringing
    # or talking have ended: waited for LEG_WAIT (or ``settle``, if longer) after the
    # caller's end at most, as a lost hangup must not keep a missed call from the desk.
    # Worked out again from the legs at each event, whatever the order they came in.
    quiet = dt.timedelta(seconds=settle)
    heard = _moment(caller.get("end_heard")) or ended_at
    settles = [heard + quiet]
    settles += [moment + quiet for leg in others if (moment := _moment(leg.get("end_heard")))]
    if any(leg.get("ended_at") is None for leg in others):
        settles.append(heard + max(LEG_WAIT, quiet))
    record.tell_at = max(settles)
    return settled(record, now)


def settled(record: CallRecord, now: dt.datetime) -> FollowUp | None:
    """What the desk must hear of a call whose legs were waited for, once it is time;
    None for a call that waits for nothing (not ended, or told already)."""
    if record.tell_at is None:
        return None
    if record.tell_at > now:
        log.info("%s: ended; told at %s, once its legs settle", record.label, record.tell_at)
        return None
    record.tell_at = None
    return _told(record)


_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat()


def _moment(stamp: str | None) -> dt.datetime | None:
    return None if stamp is None else dt.datetime.fromisoformat(stamp)


def _told(record: CallRecord) -> FollowUp | None:
    """What the desk hears of a call that has ended: an inbound one, missed or answered."""
    if record.direction is None:
        log.info("%s: ended; told to the desk once it is known which way it went", record.label)
        return None
    if record.direction is not CallDirection.IN:
        return None
    if record.outcome is not CallOutcome.ANSWERED:
        return FollowUp.MISSED
    # Journaled on the caller's open ticket, if the caller has one by now (a contact added
    # since the call began, by another call's missed-call ticket or an operator).
    return FollowUp.ANSWERED


class Work(NamedTuple):
    """A claimed item and what its kept request says: events to apply, or why it is ignored."""

    item: Claimed
    events: Sequence[CallEvent]
    ignored: str | None


class Meaning(NamedTuple):
    """What the adapter read in a request when it arrived."""

    events: tuple[CallEvent, ...]
    ignored: str | None


class ReadAhead:
    """What the adapter read in each request this process kept, until the worker claims it.

    Reading a request costs about as much as keeping it; the kept raw request stays the
    record, read again only for what is not here (kept by another daemon, or before a
    restart). Bounded: past LIMIT the oldest are dropped (items that another daemon
    claimed, or whose batch failed), and read again from the raw request if need be."""

    LIMIT = 50_000

    def __init__(self) -> None:
        self._meanings: dict[tuple[str, str], Meaning] = {}
        # The HTTP edge adds and the worker takes, from different threads on PostgreSQL.
        self._lock = threading.Lock()

    def add(self, meanings: Iterable[tuple[tuple[str, str], Meaning]]) -> None:
        with self._lock:
            self._meanings.update(meanings)
            while len(self._meanings) > self.LIMIT:
                del self._meanings[next(iter(self._meanings))]

    def take(self, source: str, source_ref: str) -> Meaning | None:
        with self._lock:
            return self._meanings.pop((source, source_ref), None)


class CallRecorder:
    def __init__(self, db: Database, desk: Desk, policy: CallPolicy) -> None:
        self.db = db
        self.desk = desk
        self.policy = policy
        self.read_ahead = ReadAhead()

    def store(self, batch: Sequence[Received]) -> list[bool]:
        """Keep each raw request, all in one transaction: many webhooks share one commit,
        and each is acknowledged only after it. For each, False for a duplicate delivery.
        The events are acted on afterwards (see :meth:`process`), from what the adapter
        read, kept here for the worker before the commit lets it claim them."""
        if not batch:
            return []
        kept = [inbound.Received(source_name(r.provider), r.source_ref, r.raw) for r in batch]
        # On SQLite through the driver's own connection: the batch's few statements cost
        # SQLite less than SQLAlchemy's transaction around them would.
        with (
            self.db.sqlite_transaction()
            if self.db.dialect == "sqlite"
            else self.db.connection_transaction()
        ) as connection:
            # What inbound.store() does for one item, for the batch at once (a statement
            # for its items and one for their bytes, as a rule): building statements per
            # webhook costs more than its share of the commit.
            new = inbound.store_received(connection, kept)
            results = []
            meanings = []
            for received, item in zip(batch, kept, strict=True):
                key = (item.source, item.source_ref)
                results.append(key in new)
                if key in new:
                    new.discard(key)
                    meanings.append((key, Meaning(received.events, received.ignored)))
            # Before the commit: once it is in, a worker may claim the items.
            self.read_ahead.add(meanings)
        return results

    def process(self, session: Session, work: Sequence[Work]) -> None:
        """Act on claimed items' events, in order, and mark each done, ignored, or failed
        (its events' work undone, to be retried with backoff).

        The calls of the whole batch are read and locked at once and written back at once;
        only an event the desk must hear of (a missed call, a call or recording of a caller
        with an open ticket) goes through the desk. The batch is first tried whole, in one
        savepoint; should any item fail, it is undone and tried again with a savepoint per
        item that tells the desk, so that the failing item is undone alone."""
        try:
            with session.begin_nested():
                self._act(session, work, guarded=False)
            return
        except Exception as error:
            log.warning(
                "telephony: a batch of %d call events failed (%s: %s); acting on each on its own",
                len(work),
                type(error).__name__,
                error,
            )
        self._act(session, work, guarded=True)

    def tell_settled(
        self, session: Session, sources: Collection[str], limit: int = 100
    ) -> tuple[int, bool]:
        """Tell the desk of the ended calls whose legs have settled; how many, and whether
        more are due.

        Due: its ``tell_at`` has passed, and so has the arrival of every stored event of
        ``sources`` not applied yet (a backlog may hold the final event of one of its
        legs, received in time). Each call in a savepoint of its own: one the desk cannot
        be told of now is tried again after LEG_WAIT, and holds up no other."""
        connection = session.connection()
        now = utcnow()
        rows = connection.execute(_SETTLED_CALLS, {"now": now, "limit": limit + 1}).all()
        if not rows:
            return 0, False
        waiting = inbound.oldest_pending(connection, sources)
        horizon = now if waiting is None else min(now, waiting)
        taken = [CallRecord(*row) for row in rows[:limit]]
        records = [r for r in taken if r.tell_at is not None and r.tell_at <= horizon]
        if not records:
            return 0, False
        desk = _DeskWork(session, self)
        desk.look_up(record for record in records if record.direction is CallDirection.IN)
        for record in records:
            try:
                with session.begin_nested():
                    follow_up = settled(record, horizon)
                    if follow_up is not None:
                        desk.tell(record, follow_up)
                        desk.write()
                    connection.execute(_WRITE_CALLS, [_written(record)])
            except Exception:
                log.exception("%s: the desk cannot be told of the call now", record.label)
                desk.forget()
                try:
                    with session.begin_nested():
                        connection.execute(
                            update(CALLS)
                            .where(CALLS.c.id == record.id)
                            .values(tell_at=now + LEG_WAIT)
                        )
                except Exception:
                    log.exception("%s: nor can it be put off", record.label)
        return len(records), len(rows) > limit and len(records) == limit

    def _act(self, session: Session, work: Sequence[Work], *, guarded: bool) -> None:
        """The batch's work; unguarded, an item's failure fails the batch."""
        now = utcnow()
        desk = _DeskWork(session, self)
        records, created = self._lock_calls(
            session, [event for w in work if w.ignored is None for event in w.events], now, desk
        )
        # Only an ended inbound call is told to the desk with its caller (missed or answered).
        ending = {
            (event.provider, event.call_id)
            for w in work
            if w.ignored is None
            for event in w.events
            if event.kind is EventKind.ENDED
        }
        desk.look_up(
            record
            for key, record in records.items()
            if key in ending and record.direction is CallDirection.IN
        )
        changed: set[tuple[str, str]] = set()
        finished: list[tuple[int, int | None]] = []
        set_aside: list[tuple[int, str]] = []
        for item, events, ignored in work:
            if ignored is not None:
                set_aside.append((item.id, ignored))
                continue
            keys = {(event.provider, event.call_id) for event in events}
            before = {key: replace(records[key]) for key in keys} if guarded else None
            try:
                ticket_id = self._apply(desk, records, events, now, guarded=guarded)
            except Exception as error:
                if before is None:
                    raise
                records.update(before)
                # What it looked up or added was in its savepoint, now rolled back.
                desk.forget()
                label = events[0].label if events else f"{item.source}:{item.source_ref}"
                log.exception("%s: call event not processed; kept as inbound %d", label, item.id)
                inbound.failed(
                    session,
                    item.id,
                    error=f"{type(error).__name__}: {error}",
                    max_attempts=self.policy.max_attempts,
                )
                continue
            changed |= keys
            finished.append((item.id, ticket_id))
        desk.write()
        inbound.ignored_batch(session, set_aside)
        inbound.done_batch(session, finished)
        if changed:
            session.connection().execute(_WRITE_CALLS, [_written(records[key]) for key in changed])
        # A call first heard of in an item that failed is not kept, as if never inserted.
        orphans = [records[key].id for key in created - changed]
        if orphans:
            session.connection().execute(delete(CALLS).where(CALLS.c.id.in_(orphans)))

    def _apply(
        self,
        desk: _DeskWork,
        records: Mapping[tuple[str, str], CallRecord],
        events: Sequence[CallEvent],
        now: dt.datetime,
        *,
        guarded: bool,
    ) -> int | None:
        """One item's events; the first ticket the desk touched, if any. Guarded, what the
        desk does is in a savepoint of the item's own, so that a failing item is undone alone."""
        ticket_id = None
        told = False
        with ExitStack() as savepoint:
            for event in events:
                record = records[event.provider, event.call_id]
                follow_up = advance(record, event, now, self.policy)
                if follow_up is None:
                    continue
                if guarded and not told:
                    savepoint.enter_context(desk.session.begin_nested())
                told = True
                touched = desk.tell(record, follow_up)
                if ticket_id is None:
                    ticket_id = touched
            if guarded and told:
                # Within the savepoint: an item whose rows cannot be written fails alone.
                desk.write()
        return ticket_id

    def _lock_calls(
        self, session: Session, events: Sequence[CallEvent], now: dt.datetime, desk: _DeskWork
    ) -> tuple[dict[tuple[str, str], CallRecord], set[tuple[str, str]]]:
        """The records of the events' calls, locked until the commit, each created on its
        first event; and which ones this batch created. The callers' contacts looked up
        for the new calls are handed to ``desk``, which need not look them up again."""
        first = {(e.provider, e.call_id): e for e in reversed(events)}
        if not first:
            return {}, set()
        connection = session.connection()
        records = self._read_calls(connection, first)
        missing = [event for key, event in first.items() if key not in records]
        created: set[tuple[str, str]] = set()
        if missing:
            region = self.policy.default_region
            callers = {
                event: e164(event.caller, region) if event.caller else None for event in missing
            }
            contacts: dict[str, int] = {}
            phones = {phone for phone in callers.values() if phone}
            if phones:
                found = connection.execute(_CONTACTS_BY_PHONE, {"phones": list(phones)}).all()
                for phone, contact_id, _ in found:
                    contacts.setdefault(phone or "", contact_id)
                desk.found(phones, found)
            rows = [
                {
                    "provider": event.provider,
                    "call_id": event.call_id,
                    "direction": event.direction,
                    "from_number": e164(event.from_number, region) or event.from_number,
                    "to_number": e164(event.to_number, region) or event.to_number,
                    "state": CallState.RINGING,
                    "last_sequence": 0,
                    "contact_id": contacts.get(phone) if phone else None,
                    "created_at": now,
                    "updated_at": now,
                }
                for event, phone in callers.items()
            ]
            new = {
                (row.provider, row.call_id): row.id
                for row in connection.execute(_CREATE_CALLS[connection.dialect.name], rows)
            }
            for event, row in zip(callers, rows, strict=True):
                key = (event.provider, event.call_id)
                if key in new:
                    values = {name: row.get(name) for name in RECORD_FIELDS}
                    records[key] = CallRecord(**{**values, "id": new[key]})
            created = set(new)
            # Created by another daemon since it was looked for: read as it is now.
            taken = [key for key in first if key not in records]
            if taken:
                records.update(self._read_calls(connection, taken))
        return records, created

    @staticmethod
    def _read_calls(
        connection: Connection, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], CallRecord]:
        by_provider: dict[str, list[str]] = {}
        for provider, call_id in keys:
            by_provider.setdefault(provider, []).append(call_id)
        records = {}
        # Per provider rather than a row-value IN, which SQLite answers by scanning the
        # table; providers in one order, so that daemons locking overlapping batches take
        # the locks in one order (the rows of each are ordered by id).
        for provider in sorted(by_provider):
            rows = connection.execute(
                _LOCK_CALLS, {"provider": provider, "call_ids": by_provider[provider]}
            )
            records.update({(row.provider, row.call_id): CallRecord(*row) for row in rows})
        return records


def _written(record: CallRecord) -> dict[str, Any]:
    """The parameters of _WRITE_CALLS for the record."""
    return {"record_id": record.id, **{name: getattr(record, name) for name in CHANGING}}


class _Caller(NamedTuple):
    id: int
    customer_id: int


class _OpenTicket(NamedTuple):
    id: int
    number: str


class _DeskWork:
    """What a batch's calls tell the desk: the contacts its missed calls are from, looked
    up or added once per batch, and its journal and outbox rows, written together
    (:meth:`write`) rather than as ORM objects flushed per item."""

    def __init__(self, session: Session, recorder: CallRecorder) -> None:
        self.session = session
        self.connection = session.connection()
        self.recorder = recorder
        self.desk = recorder.desk
        self.forget()

    def forget(self) -> None:
        """Drop what was looked up, added or queued since the last write (rolled back)."""
        self.by_phone: dict[str, _Caller] = {}
        self.by_id: dict[int, _Caller] = {}
        # Numbers looked up for the batch (look_up) that no contact has.
        self.unknown: set[str] = set()
        # A caller's open ticket that changed last, or None, by contact id: looked up for
        # the batch, and kept as the batch adds contacts (none) and registers tickets.
        self.open_tickets: dict[int, _OpenTicket | None] = {}
        self.unassigned_id: int | None = None
        self.journal: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []

    def found(self, phones: Collection[str], contacts: Sequence[Row[Any, Any, Any]]) -> None:
        """What a look-up of these numbers (and perhaps of contacts by id) found: contacts
        (phone, id, customer_id); the numbers of none have no contact."""
        for contact in contacts:
            caller = _Caller(contact.id, contact.customer_id)
            self.by_id[contact.id] = caller
            if contact.phone in phones:
                self.by_phone[contact.phone] = caller
        self.unknown.update(phone for phone in phones if phone not in self.by_phone)

    def look_up(self, records: Iterable[CallRecord]) -> None:
        """The contacts of these calls and their open tickets, each in one query for the
        batch rather than one per call told to the desk; what is known already is not
        looked up again."""
        region = self.recorder.policy.default_region
        contact_ids = set()
        phones = set()
        for record in records:
            if record.contact_id is not None:
                contact_ids.add(record.contact_id)
            elif phone := e164(record.from_number, region):
                phones.add(phone)
        unseen_ids = contact_ids - self.by_id.keys()
        unseen_phones = phones - self.by_phone.keys() - self.unknown
        if unseen_ids or unseen_phones:
            found = self.connection.execute(
                _CONTACTS_OF_CALLS,
                {"contact_ids": list(unseen_ids), "phones": list(unseen_phones)},
            ).all()
            self.found(unseen_phones, found)
        contact_ids |= {self.by_phone[phone].id for phone in phones if phone in self.by_phone}
        callers = [contact_id for contact_id in contact_ids if contact_id not in self.open_tickets]
        if not callers:
            return
        for contact_id, ticket_id, number in self.connection.execute(
            _OPEN_TICKETS, {"contact_ids": callers}
        ):
            self.open_tickets.setdefault(contact_id, _OpenTicket(ticket_id, number))
        for contact_id in callers:
            self.open_tickets.setdefault(contact_id, None)

    def write(self) -> None:
        if self.journal:
            self.connection.execute(_INSERT_JOURNAL, self.journal)
            self.journal = []
        if self.outbox:
            self.connection.execute(_INSERT_OUTBOX, self.outbox)
            self.outbox = []

    def tell(self, record: CallRecord, follow_up: FollowUp) -> int | None:
        """Tell the desk of ``follow_up``; the ticket it touched, if any."""
        if record.ticket_id is not None:
            # The call's own ticket: told of it before (its recording comes after its end),
            # or an operator logged the call on it before the desk heard that it ended.
            self._journal(record.ticket_id, ACTOR, follow_up, record)
            return record.ticket_id
        if follow_up is FollowUp.RECORDING:
            # Only a call with a ticket has its recording told (advance).
            return None
        if follow_up is FollowUp.ANSWERED:
            return self._answered(record)
        return self._missed(record)

    def _journal(self, ticket_id: int, actor: str, follow_up: FollowUp, record: CallRecord) -> None:
        self.journal.append(
            self.desk._journal_row(ticket_id, actor, follow_up.value, **_details(record))
        )

    def _answered(self, record: CallRecord) -> int | None:
        contact = self.contact(record, add=False)
        ticket = self.open_ticket(contact.id if contact else None)
        if ticket is None:
            log.info("%s: answered; waits for the operator's log", record.label)
            return None
        record.ticket_id = ticket.id
        self._journal(ticket.id, ACTOR, FollowUp.ANSWERED, record)
        log.info("%s: answered call %s journaled", ticket.number, record.label)
        return ticket.id

    def _missed(self, record: CallRecord) -> int:
        contact = self.contact(record)
        ticket = self.open_ticket(contact.id if contact else None)
        if ticket is not None:
            record.ticket_id = ticket.id
            self._journal(ticket.id, ACTOR, FollowUp.MISSED, record)
            self.outbox += [
                {"ticket_id": ticket.id, **row}
                for row in self.desk._staff_rows(
                    ticket.number, "follow_up", message=f"Missed call from {record.from_number}"
                )
            ]
            log.info("%s: missed call %s journaled", ticket.number, record.label)
            return ticket.id
        policy = self.recorder.policy
        registration = self.desk.register_request(
            self.session,
            NewRequest(
                subject=f"Missed call from {record.from_number}",
                channel=Channel.PHONE,
                customer_id=contact.customer_id if contact else self.unassigned(),
                contact_id=contact.id if contact else None,
                description=_describe(record),
                priority=policy.priority_for(record.provider),
                author=record.from_number,
            ),
            actor=ACTOR,
        )
        if contact is not None:
            # The caller had none open: the new ticket is now their open ticket.
            self.open_tickets[contact.id] = _OpenTicket(registration.ticket_id, registration.number)
        record.ticket_id = registration.ticket_id
        self._journal(registration.ticket_id, SYSTEM_ACTOR, FollowUp.MISSED, record)
        log.info("%s: registered for missed call %s", registration.number, record.label)
        return registration.ticket_id

    def unassigned(self) -> int:
        name = self.recorder.policy.unassigned_customer
        if self.unassigned_id is None:
            found = self.connection.execute(_CUSTOMER_BY_NAME, {"name": name})
            self.unassigned_id = found.scalar_one_or_none()
        if self.unassigned_id is None:
            self.unassigned_id = unassigned_customer(self.session, self.desk, name).id
        return self.unassigned_id

    def contact(self, record: CallRecord, *, add: bool = True) -> _Caller | None:
        """The caller's contact, added to the unassigned customer when the number is new
        (unless not ``add``); the call is linked to it."""
        if record.contact_id is not None:
            known = self.by_id.get(record.contact_id)
            if known is None:
                row = self.connection.execute(_CONTACT_BY_ID, {"contact_id": record.contact_id})
                known = self._keep(*row.one())
            return known
        phone = e164(record.from_number, self.recorder.policy.default_region)
        if phone is None:
            return None
        known = self.by_phone.get(phone)
        if known is None:
            # Perhaps added since the call was first heard of, by another call's event
            # (unless the batch's look-up has just found none).
            found = None
            if phone not in self.unknown:
                found = self.connection.execute(_CONTACTS_BY_PHONE, {"phones": [phone]}).first()
            if found is not None:
                known = self._keep(*found)
            elif not add:
                return None
            else:
                customer_id = self.unassigned()
                contact_id = self.connection.execute(
                    _ADD_CONTACT, {"customer_id": customer_id, "phone": phone}
                ).scalar_one()
                known = self._keep(phone, contact_id, customer_id)
                self.open_tickets[contact_id] = None
        record.contact_id = known.id
        return known

    def _keep(self, phone: str | None, contact_id: int, customer_id: int) -> _Caller:
        caller = _Caller(contact_id, customer_id)
        self.by_id[contact_id] = caller
        if phone:
            self.by_phone[phone] = caller
        return caller

    def open_ticket(self, contact_id: int | None) -> _OpenTicket | None:
        """The caller's open ticket that changed last, if any."""
        if contact_id is None:
            return None
        if contact_id not in self.open_tickets:
            found = self.connection.execute(_OPEN_TICKET, {"contact_id": contact_id}).first()
            self.open_tickets[contact_id] = None if found is None else _OpenTicket(*found)
        return self.open_tickets[contact_id]


def _details(record: CallRecord) -> dict[str, object]:
    return {
        "provider": record.provider,
        "call_id": record.call_id,
        "from": record.from_number,
        "to": record.to_number,
        "outcome": record.outcome.value if record.outcome else None,
        "cause": record.cause,
        "agent": record.agent,
        "duration": record.duration,
        "recording_url": record.recording_url,
    }


def _describe(record: CallRecord) -> str:
    started = record.started_at.isoformat(timespec="seconds") if record.started_at else "?"
    outcome = record.outcome.value if record.outcome else "missed"
    lines = [f"Call from {record.from_number} to {record.to_number} at {started}: {outcome}."]
    if record.cause:
        lines.append(f"Provider's cause: {record.cause}.")
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
