from __future__ import annotations

import datetime as dt
from dataclasses import replace

from sqlalchemy import select

from intake.calendar import WorkingCalendar
from intake.desk import Desk, SupportPackage
from intake.scheduler import Scheduler
from storage.db import Database
from storage.models import CloseReason, OutboxItem, Priority, Status, Ticket
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


STAFF_RULES = replace(
    RULES,
    staff_chats=(-100123,),
    packages={
        "standard": SupportPackage(
            "standard",
            response_hours={p: 4.0 for p in Priority},
            resolution_hours={p: 24.0 for p in Priority},
        )
    },
)
T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=MSK)


def _staff_alerts(db: Database, number: str) -> list[tuple[str, str]]:
    with db.transaction() as session:
        rows = session.scalars(
            select(OutboxItem)
            .join(Ticket)
            .where(Ticket.number == number, OutboxItem.channel == "telegram")
            .order_by(OutboxItem.id)
        ).all()
        return [(r.template, r.payload.get("event", "")) for r in rows]


def _escalate(db: Database, now: dt.datetime) -> list[tuple[str, str]]:
    desk = Desk(STAFF_RULES, clock=lambda: now)
    return Scheduler(
        db,
        desk,
        WorkingCalendar("RU", "Europe/Moscow"),
        auto_close_working_days=14,
        clock=lambda: now,
    ).escalate_overdue()


def test_overdue_response_and_resolution_are_escalated_once_each(db: Database, seed: Seed) -> None:
    number = register(db, Desk(STAFF_RULES, clock=lambda: T0), seed).number  # P2: 4 h / 24 h
    assert _escalate(db, T0 + dt.timedelta(hours=3, minutes=59)) == []
    assert _escalate(db, T0 + dt.timedelta(hours=4)) == [(number, "response")]
    assert _escalate(db, T0 + dt.timedelta(hours=5)) == []
    assert _escalate(db, T0 + dt.timedelta(hours=24)) == [(number, "resolution")]
    assert _escalate(db, T0 + dt.timedelta(hours=48)) == []
    assert _staff_alerts(db, number) == [
        ("new_ticket", ""),
        ("sla_breach", "response"),
        ("sla_breach", "resolution"),
    ]
    with db.transaction() as session:
        entries = [
            (e.actor, e.details["target"], e.details["due_at"])
            for e in Desk(RULES).ticket(session, number).journal
            if e.action == "sla_breached"
        ]
    assert entries == [
        ("scheduler", "response", "2026-11-25 13:00"),
        ("scheduler", "resolution", "2026-11-26 09:00"),
    ]


def test_answered_or_waiting_tickets_are_not_escalated(db: Database, seed: Seed) -> None:
    desk = Desk(STAFF_RULES, clock=lambda: T0 + dt.timedelta(hours=1))
    number = register(db, desk, seed).number
    with db.transaction() as session:
        ticket = desk.ticket(session, number)
        desk.apply(session, ticket, "take", actor="alice")
        desk.apply(session, ticket, "ask_customer", actor="alice", note="Which browser?")
    assert _escalate(db, T0 + dt.timedelta(days=3)) == []
