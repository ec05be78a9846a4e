"""The SMTP/LMTP listener, spoken to with smtplib as a sending MTA would."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from intake.desk import Desk
from intake.pipeline import Pipeline
from intake.sources.smtp import ListenerConfig, SmtpListener
from storage.db import Database
from storage.migrate import upgrade
from storage.models import InboundItem, InboundState, Ticket
from tests.intake.conftest import RULES
from tests.intake.mailmaker import mail_bytes, make_registrar

SENDER = "anna@acme.example"
SUPPORT = "support@omnivox.example"


@asynccontextmanager
async def serving(
    db: Database, stored: asyncio.Event | None = None, **options: object
) -> AsyncIterator[tuple[str, int]]:
    config = ListenerConfig(**{"host": "127.0.0.1", "port": 0, **options})  # type: ignore[arg-type]
    listener = SmtpListener(db, config, stored)
    stopping = asyncio.Event()
    task = asyncio.create_task(listener.run(stopping))
    ready = asyncio.create_task(listener.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert listener.address is not None
    try:
        yield listener.address
    finally:
        stopping.set()
        await task


def send(
    address: tuple[str, int], raw: bytes, to: tuple[str, ...] = (SUPPORT,), **kwargs: object
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(*address, timeout=30) as client:
        return client.sendmail(SENDER, list(to), raw, **kwargs)  # type: ignore[arg-type]


def items(db: Database) -> list[InboundItem]:
    with db.transaction() as session:
        return list(session.scalars(select(InboundItem).order_by(InboundItem.id)))


async def test_mail_is_acknowledged_only_once_stored_byte_for_byte(db: Database) -> None:
    raw = mail_bytes(subject="Softphone does not ring", message_id="<first@acme.example>")
    async with serving(db) as address:
        refused = await asyncio.to_thread(send, address, raw)
        # sendmail returned: the 250 came, so the row must already be there.
        (item,) = items(db)
    assert refused == {}
    assert (item.source, item.source_ref, item.message_id) == (
        "smtp",
        "<first@acme.example>",
        "<first@acme.example>",
    )
    assert item.raw == raw
    assert item.state is InboundState.PENDING


async def test_mail_without_message_id_is_keyed_by_its_hash(db: Database) -> None:
    raw = mail_bytes(subject="No id", message_id=None)
    async with serving(db) as address:
        await asyncio.to_thread(send, address, raw)
        await asyncio.to_thread(send, address, raw)
    (item,) = items(db)
    assert item.source_ref.startswith("sha256:")
    assert item.message_id is None


async def test_recipients_outside_the_accept_list_are_refused_550(db: Database) -> None:
    raw = mail_bytes(subject="Hello")
    accept = ("support@omnivox.example", "@help.omnivox.example")
    async with serving(db, accept=accept) as address:
        refused = await asyncio.to_thread(
            send, address, raw, ("SUPPORT@omnivox.example", "x@help.omnivox.example", "a@b.example")
        )
        with pytest.raises(smtplib.SMTPRecipientsRefused) as all_refused:
            await asyncio.to_thread(send, address, raw, ("someone@elsewhere.example",))
    assert list(refused) == ["a@b.example"]
    assert refused["a@b.example"][0] == 550
    ((code, _),) = all_refused.value.recipients.values()
    assert code == 550
    assert len(items(db)) == 1


async def test_mail_over_the_limit_is_refused_552_naming_the_limit(db: Database) -> None:
    raw = mail_bytes(subject="Big", body="x" * 5000)

    def without_size_declaration() -> tuple[int, bytes]:
        with smtplib.SMTP(*address, timeout=30) as client:
            client.ehlo()
            client.mail(SENDER)
            client.rcpt(SUPPORT)
            return client.data(raw)

    async with serving(db, max_message_size=2000) as address:
        # A client that declares SIZE is refused at MAIL FROM, one that does not after DATA.
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:
            await asyncio.to_thread(send, address, raw)
        code, message = await asyncio.to_thread(without_size_declaration)
    assert declared.value.smtp_code == 552
    assert b"2000 bytes" in declared.value.smtp_error
    assert (code, b"2000 bytes" in message) == (552, True)
    assert items(db) == []


async def test_storage_failure_is_answered_451_and_the_retry_is_accepted(tmp_path: Path) -> None:
    # A database without the schema refuses every write, as a broken one would.
    db = Database.from_url(make_url(f"sqlite:///{tmp_path / 'down.sqlite3'}"))
    raw = mail_bytes(subject="Retry me", message_id="<retry@acme.example>")
    try:
        async with serving(db) as address:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                await asyncio.to_thread(send, address, raw)
            upgrade(db.engine)
            await asyncio.to_thread(send, address, raw)
        (item,) = items(db)
    finally:
        db.dispose()
    assert refused.value.smtp_code == 451
    assert refused.value.smtp_error.startswith(b"4.3.0")
    assert item.raw == raw


async def test_duplicate_delivery_makes_one_item_and_one_ticket(
    db: Database, tmp_path: Path
) -> None:
    raw = mail_bytes(subject="Twice", message_id="<twice@acme.example>")
    async with serving(db) as address:
        await asyncio.to_thread(send, address, raw)
        await asyncio.to_thread(send, address, raw)
    pipeline = Pipeline(
        db, make_registrar(Desk(RULES), tmp_path), workers=1, max_attempts=3, poll_interval=60
    )
    assert pipeline.work_all() == 1
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Ticket)) == 1
    assert [i.state for i in items(db)] == [InboundState.DONE]


class _Registered(logging.Handler):
    """Sets an event when the pipeline logs a registration (from its worker thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "registered" in record.getMessage():
            self.loop.call_soon_threadsafe(self.event.set)


async def test_stored_mail_wakes_the_pipeline_at_once(db: Database, tmp_path: Path) -> None:
    arrived = asyncio.Event()
    # An hour between polls: only the listener's wake-up can get the mail registered.
    pipeline = Pipeline(
        db,
        make_registrar(Desk(RULES), tmp_path),
        workers=1,
        max_attempts=3,
        poll_interval=3600,
        wakeup=arrived,
    )
    registered = _Registered()
    logger = logging.getLogger("intake.pipeline")
    logger.addHandler(registered)
    logger.setLevel(logging.INFO)
    stopping = asyncio.Event()
    worker = asyncio.create_task(pipeline.run(stopping))
    try:
        async with serving(db, arrived) as address:
            await asyncio.to_thread(send, address, mail_bytes(subject="Wake up"))
            async with asyncio.timeout(20):
                await registered.event.wait()
    finally:
        stopping.set()
        await worker
        logger.removeHandler(registered)
    assert [i.state for i in items(db)] == [InboundState.DONE]


async def test_lmtp_answers_per_recipient_after_storing(db: Database) -> None:
    raw = mail_bytes(subject="Over LMTP")

    def deliver(address: tuple[str, int]) -> dict[str, tuple[int, bytes]]:
        with smtplib.LMTP(*address, timeout=30) as client:
            return client.sendmail(SENDER, [SUPPORT], raw)

    async with serving(db, lmtp=True) as address:
        refused = await asyncio.to_thread(deliver, address)
    assert refused == {}
    assert [i.raw for i in items(db)] == [raw]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_starttls_with_the_configured_certificate(db: Database, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    raw = mail_bytes(subject="Encrypted")
    client_context = ssl.create_default_context(cafile=str(cert))
    client_context.check_hostname = False

    def deliver(address: tuple[str, int]) -> str | None:
        with smtplib.SMTP(*address, timeout=30) as client:
            client.starttls(context=client_context)
            client.sendmail(SENDER, [SUPPORT], raw)
            sock = client.sock
            return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    async with serving(db, tls_cert=cert, tls_key=key) as address:
        version = await asyncio.to_thread(deliver, address)
    assert version is not None
    assert version.startswith("TLS")
    assert [i.raw for i in items(db)] == [raw]
