"""Wiring from settings to the running parts: database, desk, calendar, services."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url

from intake.calendar import WorkingCalendar
from intake.config import Settings, read_secret
from intake.desk import Desk, DeskRules, SupportPackage
from intake.http import http_services
from intake.mailflow import mail_services
from intake.notifications import OutboxWakeup, notification_services, staff_chats
from intake.scheduler import Scheduler
from intake.services import Service, StartupError
from storage.db import Database
from storage.migrate import current_revision, head_revision, upgrade
from storage.models import Priority

log = logging.getLogger(__name__)


def desk_rules(settings: Settings) -> DeskRules:
    return DeskRules(
        number_format=settings.desk.number_format,
        timezone=settings.desk.timezone,
        default_queue=settings.desk.default_queue,
        default_language=settings.desk.language,
        default_package=settings.desk.default_package,
        packages={
            name: SupportPackage(
                name=name,
                priority_shift=package.priority_shift,
                response_hours={Priority(p): h for p, h in package.response_hours.items()},
                resolution_hours={Priority(p): h for p, h in package.resolution_hours.items()},
            )
            for name, package in settings.packages.items()
        },
        message_id_domain=settings.outbound.message_id_domain,
        staff_chats=staff_chats(settings),
    )


def working_calendar(settings: Settings) -> WorkingCalendar:
    return WorkingCalendar(
        settings.desk.country,
        settings.desk.timezone,
        extra_holidays=settings.desk.extra_holidays,
        extra_working_days=settings.desk.extra_working_days,
    )


@dataclass
class App:
    settings: Settings
    db: Database
    desk: Desk
    calendar: WorkingCalendar

    def services(self) -> list[Service]:
        outbox_wakeup = OutboxWakeup()
        return [
            Scheduler(
                self.db,
                self.desk,
                self.calendar,
                auto_close_working_days=self.settings.desk.auto_close_working_days,
            ),
            *mail_services(self.settings, self.db, self.desk, outbox_wakeup),
            *notification_services(self.settings, self.db, outbox_wakeup),
            *http_services(self.settings, self.db, self.desk),
        ]

    def close(self) -> None:
        self.db.dispose()


def database_url(settings: Settings) -> URL:
    url = make_url(settings.storage.sqlalchemy_url)
    secret = settings.storage.password
    return url.set(password=read_secret(secret)) if secret is not None else url


def open_app(settings: Settings) -> App:
    """Connect to storage, migrating it first when configured to; StartupError otherwise."""
    db = Database.from_url(database_url(settings), pool_size=settings.storage.pool_size)
    try:
        revision = current_revision(db.engine)
        if revision != head_revision():
            if not settings.storage.auto_upgrade:
                raise StartupError(
                    f"the database is at revision {revision or 'none (empty)'}, not "
                    f"{head_revision()}; run `intake db upgrade`"
                )
            log.info("migrating the database from %s to %s", revision or "empty", head_revision())
            upgrade(db.engine)
    except BaseException:
        db.dispose()
        raise
    return App(settings, db, Desk(desk_rules(settings)), working_calendar(settings))
