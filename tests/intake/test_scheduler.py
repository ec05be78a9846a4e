from __future__ import annotations

import datetime as dt

from intake.calendar import WorkingCalendar
from intake.desk import Desk
from intake.scheduler import Scheduler
from storage.db import Database
from storage.models import CloseReason, Status, Ticket
from tests.intake.conftest import RULES, Seed, register

MSK = dt.timezone(dt.timedelta(hours=3))
RESOLVED = dt.datetime(2026, 10, 28, 15, 0, tzinfo=MSK)  # 14 working days: 18 Nov 15:00


def _resolved_ticket(db: Database, seed: Seed) -> str:
    desk = Desk(RULES, clock=lambda: RESOLVED)
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        desk.apply(session, session.get_one(Ticket, ticket.id), "resolve", actor="bob")
    return ticket.number


def _scheduler(db: Database, now: dt.datetime) -> Scheduler:
    return Scheduler(
        db,
        Desk(RULES, clock=lambda: now),
        WorkingCalendar("RU", "Europe/Moscow"),
        auto_close_working_days=14,
        clock=lambda: now,
    )


def test_resolved_ticket_is_closed_after_fourteen_working_days(db: Database, seed: Seed) -> None:
    number = _resolved_ticket(db, seed)
    assert _scheduler(db, dt.datetime(2026, 11, 18, 14, 59, tzinfo=MSK)).close_unanswered() == []
    assert _scheduler(db, dt.datetime(2026, 11, 18, 15, 0, tzinfo=MSK)).close_unanswered() == [
        number
    ]
    with db.transaction() as session:
        ticket = Desk(RULES).ticket(session, number)
        assert (ticket.status, ticket.close_reason) == (Status.CLOSED, CloseReason.TIMEOUT)
        last = ticket.journal[-1]
        assert (last.actor, last.details["event"]) == ("scheduler", "auto_close")


def test_a_reopened_ticket_is_not_auto_closed(db: Database, seed: Seed) -> None:
    number = _resolved_ticket(db, seed)
    with db.transaction() as session:
        Desk(RULES).set_status(session, number, Status.IN_PROGRESS, actor="anna")
    assert _scheduler(db, dt.datetime(2026, 12, 30, tzinfo=MSK)).close_unanswered() == []
