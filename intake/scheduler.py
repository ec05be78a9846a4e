"""Timed rules of the desk: close resolved tickets the customer never answered."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import and_, or_, select

from intake.calendar import WorkingCalendar
from intake.desk import WORKING_STATUSES, Desk
from intake.services import sleep_unless_stopped
from storage.db import Database
from storage.models import Status, Ticket, utcnow

log = logging.getLogger(__name__)

SCHEDULER_ACTOR = "scheduler"


class Scheduler:
    name = "scheduler"
    description = (
        "escalates overdue responses and resolutions; closes resolved tickets after the "
        "working-day limit without an answer"
    )

    def __init__(
        self,
        db: Database,
        desk: Desk,
        calendar: WorkingCalendar,
        *,
        auto_close_working_days: int,
        interval: float = 60.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.db = db
        self.desk = desk
        self.calendar = calendar
        self.auto_close_working_days = auto_close_working_days
        self.interval = interval
        self.clock = clock

    def close_unanswered(self) -> list[str]:
        """Auto-close every resolved ticket whose confirmation time is over; their numbers."""
        now = self.clock()
        # N working days are at least N calendar days, so older resolutions are the only
        # candidates; the calendar then decides each one.
        horizon = now - dt.timedelta(days=self.auto_close_working_days)
        with self.db.transaction() as session:
            candidates = session.execute(
                select(Ticket.number, Ticket.resolved_at).where(
                    Ticket.status == Status.RESOLVED, Ticket.resolved_at <= horizon
                )
            ).all()
        closed = []
        for number, resolved_at in candidates:
            if resolved_at is None:
                continue
            due = self.calendar.add_working_days(resolved_at, self.auto_close_working_days)
            if due > now:
                continue
            try:
                with self.db.transaction() as session:
                    ticket = self.desk.ticket(session, number, for_update=True)
                    # Another daemon, or the customer, may have moved it since the query.
                    if ticket.status is not Status.RESOLVED:
                        continue
                    self.desk.apply(session, ticket, "auto_close", actor=SCHEDULER_ACTOR)
                closed.append(number)
                log.info(
                    "%s: closed, no answer within %d working days",
                    number,
                    self.auto_close_working_days,
                )
            except Exception:
                log.exception("%s: auto-close failed; will try again", number)
        return closed

    def escalate_overdue(self) -> list[tuple[str, str]]:
        """Escalate every ticket whose response or resolution is overdue, once per target;
        the (number, target) pairs escalated."""
        now = self.clock()
        response_overdue = and_(
            Ticket.status.in_(WORKING_STATUSES),
            Ticket.first_response_at.is_(None),
            Ticket.response_due_at <= now,
            Ticket.response_escalated_at.is_(None),
        )
        resolution_overdue = and_(
            Ticket.status.in_([Status.NEW, Status.IN_PROGRESS]),
            Ticket.resolution_due_at <= now,
            Ticket.resolution_escalated_at.is_(None),
        )
        with self.db.transaction() as session:
            numbers = session.scalars(
                select(Ticket.number).where(or_(response_overdue, resolution_overdue))
            ).all()
        escalated = []
        for number in numbers:
            try:
                with self.db.transaction() as session:
                    ticket = self.desk.ticket(session, number, for_update=True)
                    targets = self.desk.escalate_overdue(session, ticket, actor=SCHEDULER_ACTOR)
            except Exception:
                log.exception("%s: escalation failed; will try again", number)
                continue
            for target in targets:
                log.warning("%s: %s overdue; staff told", number, target)
                escalated.append((number, target))
        return escalated

    def run_once(self) -> None:
        self.escalate_overdue()
        self.close_unanswered()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("scheduler pass failed; next pass in %.0f s", self.interval)
            if await sleep_unless_stopped(stopping, self.interval):
                return
