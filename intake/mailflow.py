"""Wiring of the mail path from settings: the SMTP listener, the pipeline, the registrar."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from intake.config import Settings
from intake.desk import Desk
from intake.parsing import parse_options
from intake.pipeline import Pipeline
from intake.registrar import MailIdentity, Registrar
from intake.rules.builtin import builtin_rules
from intake.senders import SenderPolicy
from intake.services import Service
from intake.sources.imap import imap_services
from intake.sources.smtp import ListenerConfig, SmtpListener
from storage.blobs import BlobStore
from storage.db import Database


def registrar(settings: Settings, desk: Desk) -> Registrar:
    pipeline = settings.pipeline
    return Registrar(
        desk,
        BlobStore(settings.daemon.state_dir / "blobs"),
        builtin_rules(),
        SenderPolicy(
            unknown_sender=pipeline.unknown_sender,
            unassigned_customer=pipeline.unassigned_customer,
            default_package=settings.desk.default_package,
            default_language=settings.desk.language,
        ),
        MailIdentity(
            from_address=settings.outbound.from_address,
            message_id_domain=settings.outbound.message_id_domain,
            authserv_id=pipeline.authserv_id,
        ),
        parse_options(settings),
    )


def pipeline(
    settings: Settings,
    db: Database,
    desk: Desk,
    wakeup: asyncio.Event,
    after_commit: Callable[[], None] | None = None,
) -> Pipeline:
    return Pipeline(
        db,
        registrar(settings, desk),
        workers=settings.pipeline.workers,
        max_attempts=settings.pipeline.max_attempts,
        poll_interval=settings.pipeline.poll_interval,
        lease=dt.timedelta(seconds=settings.pipeline.lease),
        wakeup=wakeup,
        after_commit=after_commit,
    )


def listener_config(settings: Settings) -> ListenerConfig:
    smtp = settings.smtp
    return ListenerConfig(
        host=smtp.host,
        port=smtp.port,
        accept=smtp.accept,
        max_message_size=smtp.max_message_size,
        lmtp=smtp.lmtp,
        tls_cert=smtp.tls_cert,
        tls_key=smtp.tls_key,
    )


def mail_services(
    settings: Settings,
    db: Database,
    desk: Desk,
    after_commit: Callable[[], None] | None = None,
) -> list[Service]:
    """The pipeline always; the SMTP listener and the IMAP mailboxes when enabled, each
    waking the pipeline when it has stored mail."""
    arrived = asyncio.Event()
    services: list[Service] = [pipeline(settings, db, desk, arrived, after_commit)]
    if settings.smtp.enabled:
        services.append(SmtpListener(db, listener_config(settings), arrived))
    services.extend(imap_services(settings, db, arrived))
    return services
