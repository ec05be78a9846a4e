"""Wiring from settings to the outbox workers: customer mail, and staff Telegram chats."""

from __future__ import annotations

import asyncio

from telegram import Bot

from intake.config import OutboundSmtpSettings, Settings, read_secret
from notifiers.email import EmailChannel, PreparedMail, Sender
from notifiers.outbox import OutboxWorker
from notifiers.policy import MailPolicy
from notifiers.render import environment
from notifiers.telegram import PreparedPost, TelegramChannel
from notifiers.transports import FolderTransport, SmtpSettings, SmtpTransport, Transport
from storage.db import Database


def smtp_settings(smtp: OutboundSmtpSettings) -> SmtpSettings:
    secret = {"password": smtp.password, "xoauth2": smtp.token}.get(smtp.auth)
    return SmtpSettings(
        host=smtp.host,
        port=smtp.port,
        security=smtp.security,
        username=smtp.username,
        auth=smtp.auth,
        read_secret=None if secret is None else (lambda: read_secret(secret)),
        timeout=smtp.timeout,
    )


def email_worker(
    settings: Settings, db: Database, wakeup: asyncio.Event | None = None
) -> OutboxWorker[PreparedMail]:
    outbound = settings.outbound
    transport: Transport
    if outbound.transport == "smtp":
        transport = SmtpTransport(smtp_settings(outbound.smtp))
    else:
        transport = FolderTransport(outbound.folder)
    channel = EmailChannel(
        transport,
        environment(outbound.templates_dir),
        sender=Sender(outbound.from_address),
        policy=MailPolicy(rate_limit_per_hour=outbound.rate_limit_per_hour),
    )
    return OutboxWorker(
        db,
        channel,
        max_attempts=outbound.max_attempts,
        workers=outbound.workers,
        wakeup=wakeup,
    )


def telegram_worker(
    settings: Settings, db: Database, wakeup: asyncio.Event | None = None
) -> OutboxWorker[PreparedPost] | None:
    telegram = settings.telegram
    if not telegram.enabled or telegram.token is None:
        return None
    bot = Bot(read_secret(telegram.token), base_url=f"{telegram.base_url}/bot")
    channel = TelegramChannel(
        bot,
        environment(settings.outbound.templates_dir),
        support_address=settings.outbound.from_address,
    )
    return OutboxWorker(db, channel, max_attempts=telegram.max_attempts, wakeup=wakeup)


class OutboxWakeup:
    """Wakes every outbox worker of this process: rows were just committed here."""

    def __init__(self) -> None:
        self.events: list[asyncio.Event] = []

    def event(self) -> asyncio.Event:
        self.events.append(asyncio.Event())
        return self.events[-1]

    def __call__(self) -> None:
        for event in self.events:
            event.set()


def notification_services(
    settings: Settings, db: Database, wakeup: OutboxWakeup | None = None
) -> list[OutboxWorker[PreparedMail] | OutboxWorker[PreparedPost]]:
    """The email worker always (the folder transport is the embedded default); Telegram's
    when it is enabled."""
    wakeup = wakeup or OutboxWakeup()
    telegram = telegram_worker(settings, db, wakeup.event())
    return [email_worker(settings, db, wakeup.event()), *([telegram] if telegram else [])]


def staff_chats(settings: Settings) -> tuple[int, ...]:
    return settings.telegram.chat_ids if settings.telegram.enabled else ()
