"""The ticket lifecycle, every (status, event) pair, against ARCHITECTURE.md's table."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import func, select

from intake.desk import EVENTS, Desk, IllegalTransitionError, next_status
from storage.db import Database
from storage.models import CloseReason, JournalEntry, OutboxItem, Status, Ticket
from tests.intake.conftest import Seed, register

S = Status
# Written out from the design document, independently of intake.desk.TRANSITIONS.
EXPECTED: dict[tuple[Status, str], tuple[Status, CloseReason | None]] = {
    (S.NEW, "take"): (S.IN_PROGRESS, None),
    (S.IN_PROGRESS, "ask_customer"): (S.WAITING_CUSTOMER, None),
    (S.WAITING_CUSTOMER, "customer_replied"): (S.IN_PROGRESS, None),
    (S.NEW, "resolve"): (S.RESOLVED, None),
    (S.IN_PROGRESS, "resolve"): (S.RESOLVED, None),
    (S.WAITING_CUSTOMER, "resolve"): (S.RESOLVED, None),
    (S.RESOLVED, "confirm"): (S.CLOSED, CloseReason.CONFIRMED),
    (S.RESOLVED, "reopen"): (S.IN_PROGRESS, None),
    (S.RESOLVED, "auto_close"): (S.CLOSED, CloseReason.TIMEOUT),
    (S.NEW, "withdraw"): (S.CLOSED, CloseReason.WITHDRAWN),
    (S.IN_PROGRESS, "withdraw"): (S.CLOSED, CloseReason.WITHDRAWN),
    (S.WAITING_CUSTOMER, "withdraw"): (S.CLOSED, CloseReason.WITHDRAWN),
    (S.RESOLVED, "withdraw"): (S.CLOSED, CloseReason.WITHDRAWN),
}
PAIRS = list(itertools.product(Status, EVENTS))


def test_the_table_knows_exactly_the_documented_events() -> None:
    assert set(EVENTS) == {event for _, event in EXPECTED}


@pytest.mark.parametrize(("status", "event"), PAIRS, ids=[f"{s.value}-{e}" for s, e in PAIRS])
def test_pure_transition_table(status: Status, event: str) -> None:
    if (status, event) in EXPECTED:
        assert next_status(status, event) is EXPECTED[status, event][0]
    else:
        with pytest.raises(IllegalTransitionError, match=f"cannot {event.replace('_', ' ')}"):
            next_status(status, event)


def test_unknown_event_is_a_clear_error() -> None:
    with pytest.raises(IllegalTransitionError, match="unknown event 'explode'"):
        next_status(Status.NEW, "explode")


def _counts(db: Database, ticket_id: int) -> tuple[int, int]:
    with db.transaction() as session:
        journal = session.scalar(
            select(func.count())
            .select_from(JournalEntry)
            .where(JournalEntry.ticket_id == ticket_id)
        )
        outbox = session.scalar(
            select(func.count()).select_from(OutboxItem).where(OutboxItem.ticket_id == ticket_id)
        )
    return journal or 0, outbox or 0


@pytest.mark.parametrize(("status", "event"), PAIRS, ids=[f"{s.value}-{e}" for s, e in PAIRS])
def test_transition_on_a_stored_ticket(
    db: Database, desk: Desk, seed: Seed, status: Status, event: str
) -> None:
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        session.get_one(Ticket, ticket.id).status = status
    journal_before, outbox_before = _counts(db, ticket.id)

    if (status, event) in EXPECTED:
        target, reason = EXPECTED[status, event]
        with db.transaction() as session:
            desk.apply(session, session.get_one(Ticket, ticket.id), event, actor="alice")
        with db.transaction() as session:
            stored = session.get_one(Ticket, ticket.id)
            assert stored.status is target
            assert stored.close_reason is reason
            assert (stored.closed_at is not None) == (target is S.CLOSED)
            last = stored.journal[-1]
            assert (last.actor, last.action) == ("alice", "status_changed")
            assert last.details["event"] == event
            assert (last.details["from"], last.details["to"]) == (status.value, target.value)
        journal_after, outbox_after = _counts(db, ticket.id)
        assert journal_after == journal_before + 1
        assert outbox_after == outbox_before + 1
    else:
        with pytest.raises(IllegalTransitionError), db.transaction() as session:
            desk.apply(session, session.get_one(Ticket, ticket.id), event, actor="alice")
        with db.transaction() as session:
            stored = session.get_one(Ticket, ticket.id)
            assert stored.status is status
            assert stored.close_reason is None
        assert _counts(db, ticket.id) == (journal_before, outbox_before)
