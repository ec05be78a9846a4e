"""Customer mail as the receiving server sees it: headers, parts, threading, authentication,
and no way for customer text to add headers or recipients."""

from __future__ import annotations

import datetime as dt
import os
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from intake.config import CommandSecret
from intake.desk import Desk, Environment
from notifiers.email import Sender, build_message
from notifiers.render import RenderedMail
from notifiers.transports import FolderTransport
from storage.db import Database
from storage.models import Contact, OutboxState, Status
from tests.notifiers.conftest import Clock, Seed, email_worker, register, rows, smtp_transport
from tests.peers.smtp import Certificate, SmtpPeer


def _parts(message: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.iter_parts()}


async def test_acknowledgement_carries_number_threading_and_automatic_mail_headers(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    ticket = register(
        db,
        desk,
        seed,
        environment=Environment(os="Windows", os_version="10", product="AgentZone"),
        message_id="<first@acme.example>",
    )
    await email_worker(db, smtp_transport(smtp_peer), clock).deliver_due()

    [received] = smtp_peer.received
    message = received.message
    [row] = rows(db, "email")
    assert received.sender == "support@intake.test"
    assert received.recipients == ["anna@acme.example"]
    assert (
        message["Subject"] == f"[{ticket.number}] Заявка зарегистрирована: Softphone does not ring"
    )
    assert message["Message-ID"] == row.message_id
    assert str(row.message_id).endswith("@intake.test>")
    assert message["In-Reply-To"] == "<first@acme.example>"
    assert message["References"] == "<first@acme.example>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Reply-To"] == "support@intake.test"
    assert message["From"] == "OmniVOX Support <support@intake.test>"
    assert message["To"] == "Anna Petrova <anna@acme.example>"
    assert message.get_content_type() == "multipart/alternative"
    parts = _parts(message)
    assert set(parts) == {"text/plain", "text/html"}
    for body in parts.values():
        assert ticket.number in body
        assert "Windows 10" in body
        assert "AgentZone" in body
        assert "скриншотов: 0" in body
        # The product's version and the browser are missing; the OS is not asked for.
        assert "версию OmniVOX" in body
        assert "браузер и его версию" in body
        assert "операционную систему" not in body


async def test_status_mail_answers_the_customers_last_message(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    ticket = register(db, desk, seed, message_id="<first@acme.example>")
    with db.transaction() as session:
        desk.set_status(session, ticket.number, Status.IN_PROGRESS, actor="alice")
        desk.set_status(
            session,
            ticket.number,
            Status.WAITING_CUSTOMER,
            actor="alice",
            note="Which browser version do the operators use?",
        )
    await email_worker(db, smtp_transport(smtp_peer), clock).deliver_due()

    ack, progress, question = (r.message for r in smtp_peer.received)
    assert question["Subject"] == (
        f"[{ticket.number}] Нужна ваша информация: Softphone does not ring"
    )
    assert question["In-Reply-To"] == "<first@acme.example>"
    assert question["References"] == "<first@acme.example>"
    assert "Which browser version do the operators use?" in _parts(question)["text/plain"]
    assert len({ack["Message-ID"], progress["Message-ID"], question["Message-ID"]}) == 3


async def test_crlf_in_customer_subject_and_name_cannot_add_headers_or_recipients(
    db: Database, desk: Desk, seed: Seed, clock: Clock, smtp_peer: SmtpPeer
) -> None:
    with db.transaction() as session:
        contact = session.get(Contact, seed.contact_id)
        assert contact is not None
        contact.name = "Anna\r\nBcc: thief@evil.example"
    ticket = register(
        db,
        desk,
        seed,
        subject="Help\r\nBcc: thief@evil.example\r\n\r\n<b>fake body</b>",
        message_id="<c1@acme.example>\r\nBcc: thief@evil.example",
    )
    await email_worker(db, smtp_transport(smtp_peer), clock).deliver_due()

    [received] = smtp_peer.received
    message = received.message
    assert received.recipients == ["anna@acme.example"]
    assert message["Bcc"] is None
    assert not any(line.lower().startswith(b"bcc:") for line in received.data.splitlines())
    assert message["Subject"] == (
        f"[{ticket.number}] Заявка зарегистрирована: Help Bcc: thief@evil.example <b>fake body</b>"
    )
    assert message["To"].addresses[0].display_name == "Anna Bcc: thief@evil.example"
    assert message["In-Reply-To"] == "<c1@acme.example> Bcc: thief@evil.example"
    assert "&lt;b&gt;fake body&lt;/b&gt;" in _parts(message)["text/html"]


async def test_smtp_password_login_reads_the_secret_at_send_time(
    db: Database, desk: Desk, seed: Seed, clock: Clock
) -> None:
    peer = SmtpPeer(password="s3cret")
    await peer.start()
    secrets = iter(["wrong", "s3cret"])
    try:
        register(db, desk, seed)
        worker = email_worker(
            db,
            smtp_transport(
                peer, auth="password", username="support", read_secret=lambda: next(secrets)
            ),
            clock,
        )
        [refused] = await worker.deliver_due()
        first_error = rows(db, "email")[0].last_error
        clock.advance(dt.timedelta(minutes=1))
        [accepted] = await worker.deliver_due()
    finally:
        await peer.stop()

    assert (refused.state, accepted.state) == (OutboxState.PENDING, OutboxState.SENT)
    assert "535" in (first_error or "")
    assert [r.login for r in peer.received] == ["support"]


async def test_smtp_xoauth2_takes_its_token_from_a_command(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path
) -> None:
    peer = SmtpPeer(token="ya29.fresh-token")
    await peer.start()
    command = CommandSecret((sys.executable, "-c", "print('ya29.fresh-token')"))
    try:
        register(db, desk, seed)
        worker = email_worker(
            db,
            smtp_transport(
                peer, auth="xoauth2", username="support@intake.test", read_secret=command.read
            ),
            clock,
        )
        [outcome] = await worker.deliver_due()
    finally:
        await peer.stop()

    assert outcome.state is OutboxState.SENT
    assert [r.login for r in peer.received] == ["support@intake.test"]


async def test_folder_transport_writes_each_mail_whole_under_timestamp_and_id(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path
) -> None:
    ticket = register(db, desk, seed)
    folder = tmp_path / "outbound"
    worker = email_worker(db, FolderTransport(folder, clock), clock)

    [outcome] = await worker.deliver_due()

    [row] = rows(db, "email")
    assert [p.name for p in folder.iterdir()] == [f"20260302T090000000000Z-{row.id}.eml"]
    text = (folder / f"20260302T090000000000Z-{row.id}.eml").read_bytes()
    assert text.startswith(b"Subject: [" + ticket.number.encode())
    assert b"\r\nMessage-ID: " + str(row.message_id).encode() in text
    assert outcome.state is OutboxState.SENT


async def test_folder_transport_leaves_nothing_behind_when_a_write_fails(
    db: Database,
    desk: Desk,
    seed: Seed,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(db, desk, seed)
    folder = tmp_path / "outbound"
    worker = email_worker(db, FolderTransport(folder, clock), clock)

    def disk_full(_: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    [outcome] = await worker.deliver_due()

    assert outcome.state is OutboxState.PENDING
    assert list(folder.iterdir()) == []
    assert "No space left on device" in (rows(db, "email")[0].last_error or "")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return Certificate.make(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_smtp_over_starttls_or_implicit_tls_with_a_password(
    db: Database, desk: Desk, seed: Seed, clock: Clock, certificate: Certificate, security: str
) -> None:
    peer = SmtpPeer(password="s3cret", security=security, certificate=certificate)
    await peer.start()
    try:
        register(db, desk, seed)
        transport = smtp_transport(
            peer,
            security=security,
            auth="password",
            username="support",
            read_secret=lambda: "s3cret",
            tls_context=certificate.trusted_by(),
        )
        [outcome] = await email_worker(db, transport, clock).deliver_due()
    finally:
        await peer.stop()

    assert outcome.state is OutboxState.SENT
    assert [r.login for r in peer.received] == ["support"]


async def test_smtp_peer_with_an_untrusted_certificate_gets_no_mail(
    db: Database, desk: Desk, seed: Seed, clock: Clock, certificate: Certificate
) -> None:
    peer = SmtpPeer(security="tls", certificate=certificate)
    await peer.start()
    try:
        register(db, desk, seed)
        transport = smtp_transport(peer, security="tls")
        [outcome] = await email_worker(db, transport, clock).deliver_due()
    finally:
        await peer.stop()

    assert outcome.state is OutboxState.PENDING
    assert "CERTIFICATE_VERIFY_FAILED" in (rows(db, "email")[0].last_error or "")
    assert peer.received == []


def test_mail_about_no_ticket_has_no_empty_number_tag() -> None:
    message = build_message(
        number="",
        rendered=RenderedMail(subject="Request not registered: Help", text="t", html="<p>h</p>"),
        sender=Sender(address="support@intake.test"),
        recipient="stranger@elsewhere.example",
        message_id="<refusal@intake.test>",
        in_reply_to="<theirs@elsewhere.example>",
        references=["<theirs@elsewhere.example>"],
        date=dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC),
    )
    assert message["Subject"] == "Request not registered: Help"
    assert message["Auto-Submitted"] == "auto-replied"
