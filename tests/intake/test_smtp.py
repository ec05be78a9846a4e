"""The SMTP/LMTP listener, spoken to with smtplib as a sending MTA would."""

from __future__ import annotations

import asyncio
import logging
import random
import smtplib
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from intake.desk import Desk
from intake.pipeline import Pipeline
from intake.sources import smtp
from intake.sources.smtp import (
    ListenerConfig,
    ReceivedMail,
    SmtpListener,
    _DataReceiver,
    _read_data,
    _Smtp,
    store_mails,
)
from storage import inbound
from storage.db import Database
from storage.migrate import upgrade
from storage.models import InboundItem, InboundState, Ticket
from tests.intake.conftest import RULES
from tests.intake.mailmaker import mail_bytes, make_registrar

SENDER = "anna@acme.example"
SUPPORT = "support@omnivox.example"


@asynccontextmanager
async def listening(
    db: Database, stored: asyncio.Event | None = None, **options: object
) -> AsyncIterator[SmtpListener]:
    config = ListenerConfig(**{"host": "127.0.0.1", "port": 0, **options})  # type: ignore[arg-type]
    listener = SmtpListener(db, config, stored)
    stopping = asyncio.Event()
    task = asyncio.create_task(listener.run(stopping))
    ready = asyncio.create_task(listener.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield listener
    finally:
        stopping.set()
        await task


@asynccontextmanager
async def serving(
    db: Database, stored: asyncio.Event | None = None, **options: object
) -> AsyncIterator[tuple[str, int]]:
    async with listening(db, stored, **options) as listener:
        assert listener.address is not None
        yield listener.address


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


def deliver(address: tuple[str, int], raw: bytes) -> tuple[int, bytes]:
    """One mail in a session of its own; the reply to its data."""
    with smtplib.SMTP(*address, timeout=30) as client:
        client.ehlo()
        client.mail(SENDER)
        client.rcpt(SUPPORT)
        return client.data(raw)


async def test_concurrent_clients_have_each_mail_stored_once_before_its_250(
    db: Database,
) -> None:
    mails = {
        f"<m{n}@acme.example>": mail_bytes(subject=f"Mail {n}", message_id=f"<m{n}@acme.example>")
        for n in range(16)
    }
    async with serving(db) as address:
        replies = await asyncio.gather(
            *(asyncio.to_thread(deliver, address, raw) for raw in mails.values())
        )
        stored = {item.id: item for item in items(db)}
    assert all(code == 250 for code, _ in replies)
    # Each 250 names the row that holds its own mail.
    for raw, (_, message) in zip(mails.values(), replies, strict=True):
        queued_as = int(message.rsplit(b" ", 1)[1])
        assert stored[queued_as].raw == raw
    assert sorted(item.source_ref for item in stored.values()) == sorted(mails)


async def test_mails_from_several_sessions_at_once_are_all_stored_once(db: Database) -> None:
    sessions, per_session = 4, 5
    mails = [
        [mail_bytes(subject=f"Session {s}, mail {m}") for m in range(per_session)]
        for s in range(sessions)
    ]

    def one_session(address: tuple[str, int], raws: list[bytes]) -> None:
        with smtplib.SMTP(*address, timeout=30) as client:
            for raw in raws:
                assert client.sendmail(SENDER, [SUPPORT], raw) == {}

    async with serving(db) as address:
        await asyncio.gather(*(asyncio.to_thread(one_session, address, raws) for raws in mails))
    assert sorted(item.raw for item in items(db)) == sorted(raw for raws in mails for raw in raws)


BAD = "<bad@acme.example>"


@contextmanager
def refusing(db: Database, source_ref: str) -> Iterator[None]:
    """The database refuses to store the mail of ``source_ref``, as a broken row would fail."""
    if db.dialect == "sqlite":
        create = [
            "CREATE TRIGGER refuse_one BEFORE INSERT ON inbound "
            f"WHEN NEW.source_ref = '{source_ref}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ]
        drop = ["DROP TRIGGER refuse_one"]
    else:
        create = [
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.source_ref = '{source_ref}' THEN RAISE EXCEPTION 'refused by the test'; "
            "END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_one BEFORE INSERT ON inbound "
            "FOR EACH ROW EXECUTE FUNCTION refuse_one()",
        ]
        drop = ["DROP TRIGGER refuse_one ON inbound", "DROP FUNCTION refuse_one()"]
    with db.engine.begin() as connection:
        for statement in create:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with db.engine.begin() as connection:
            for statement in drop:
                connection.execute(text(statement))


@contextmanager
def storage_held(db: Database) -> Iterator[None]:
    """Another writer holds the inbound table: the listener's writes wait for it."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        # On SQLite, the transaction holds the daemon's writer lock; on PostgreSQL, the
        # table lock holds every insert.
        with db.transaction() as session:
            if db.dialect == "postgresql":
                session.execute(text("LOCK TABLE inbound IN EXCLUSIVE MODE"))
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    try:
        yield
    finally:
        release.set()
        holder.join()


async def test_a_mail_that_cannot_be_stored_is_answered_451_and_its_batch_still_250(
    db: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, bad, last = (
        mail_bytes(subject=name, message_id=ref)
        for name, ref in (
            ("First", "<first@acme.example>"),
            ("Bad", BAD),
            ("Last", "<last@acme.example>"),
        )
    )
    writing = threading.Event()

    def store(db: Database, mails: list[ReceivedMail]) -> list[inbound.Stored]:
        writing.set()
        return store_mails(db, mails)

    monkeypatch.setattr(smtp, "store_mails", store)
    handed = asyncio.Condition()
    with refusing(db, BAD):
        async with listening(db) as listener:
            assert listener.address is not None
            assert listener.writer is not None
            writer = listener.writer
            write = writer.write

            async def counted(mail: ReceivedMail) -> inbound.Stored:
                async with handed:
                    handed.notify_all()
                return await write(mail)

            monkeypatch.setattr(writer, "write", counted)
            with storage_held(db):
                sent = [asyncio.create_task(asyncio.to_thread(deliver, listener.address, first))]
                # The first mail's transaction waits for the holder; the next two come
                # meanwhile, and share the transaction after it.
                await asyncio.to_thread(writing.wait)
                async with handed:
                    sent += [
                        asyncio.create_task(asyncio.to_thread(deliver, listener.address, raw))
                        for raw in (bad, last)
                    ]
                    await handed.wait_for(lambda: writer.waiting == 3)
                assert not any(task.done() for task in sent)
            replies = await asyncio.gather(*sent)
        stored = items(db)
    assert [code for code, _ in replies] == [250, 451, 250]
    assert replies[1][1].startswith(b"4.3.0")
    assert [item.raw for item in stored] == [first, last]
    assert "a transaction of 2 items failed" in caplog.text


async def test_storage_down_answers_every_concurrent_mail_451(tmp_path: Path) -> None:
    db = Database.from_url(make_url(f"sqlite:///{tmp_path / 'down.sqlite3'}"))
    raws = [mail_bytes(subject=f"Mail {n}") for n in range(4)]
    try:
        async with serving(db) as address:
            replies = await asyncio.gather(
                *(asyncio.to_thread(deliver, address, raw) for raw in raws)
            )
    finally:
        db.dispose()
    assert [code for code, _ in replies] == [451] * len(raws)


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


# --- DATA as it comes over the wire -------------------------------------------------------


class _Client:
    """A sending MTA spoken for byte by byte, for what smtplib cannot be made to send."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.replies = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> bytes:
        """One reply, all of its lines."""
        lines = [self.replies.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(self.replies.readline())
        return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def envelope(self, *recipients: str, hello: bytes = b"EHLO client.example") -> None:
        assert self.command(hello).startswith(b"250")
        assert self.command(f"MAIL FROM:<{SENDER}>".encode()).startswith(b"250")
        for recipient in recipients or (SUPPORT,):
            assert self.command(f"RCPT TO:<{recipient}>".encode()).startswith(b"250")
        assert self.command(b"DATA").startswith(b"354 ")

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def talk(address: tuple[str, int], *segments: bytes, recipients: tuple[str, ...] = ()) -> bytes:
    """Sends DATA as the given TCP segments; the server's first reply after them."""
    client = _Client(address)
    try:
        client.envelope(*recipients)
        for segment in segments:
            client.sock.sendall(segment)
        return client.reply()
    finally:
        client.close()


async def test_dot_stuffing_is_undone_byte_for_byte(db: Database) -> None:
    # smtplib doubles every leading dot; among many such lines, some fall on read blocks'
    # edges. A line of a single dot in the text is sent as "..".
    lines = [b".", b"..", b".hidden", b"...three", b"plain.", b"ends with a dot ."] * 4000
    raw = mail_bytes(subject="Dots", message_id="<dots@acme.example>")
    raw += b"\r\n".join(lines) + b"\r\n.\r\n.."
    async with serving(db) as address:
        await asyncio.to_thread(send, address, raw)
    (item,) = items(db)
    # smtplib ends the data with CRLF when it does not.
    assert item.raw == raw + b"\r\n"


async def test_a_message_starting_with_a_dot_line_keeps_it(db: Database) -> None:
    raw = b".\r\nSubject: odd\r\n\r\nbody\r\n"
    async with serving(db) as address:
        reply = await asyncio.to_thread(talk, address, b"..\r\nSubject: odd\r\n\r\nbody\r\n.\r\n")
    assert reply.startswith(b"250 ")
    assert [i.raw for i in items(db)] == [raw]


async def test_bare_lf_neither_ends_lines_nor_the_data(db: Database) -> None:
    # Lines end at CRLF only: a dot after a bare LF is data, and "\n.\r\n" is no end.
    wire = b"Subject: lf\r\n\r\none\ntwo\n..three\n.\r\nfour\r\n"
    async with serving(db) as address:
        reply = await asyncio.to_thread(talk, address, wire + b".\r\n")
    assert reply.startswith(b"250 ")
    assert [i.raw for i in items(db)] == [wire]


async def test_empty_data_is_stored_empty(db: Database) -> None:
    async with serving(db) as address:
        reply = await asyncio.to_thread(talk, address, b".\r\n")
    assert reply.startswith(b"250 ")
    assert [i.raw for i in items(db)] == [b""]


async def test_terminator_in_a_segment_of_its_own(db: Database) -> None:
    wire = b"Subject: split\r\n\r\n" + b"x" * 70 + b"\r\n"
    async with serving(db) as address:
        for cut in (b".\r\n", b"\r\n.\r\n", b"\n.\r\n", b"\r\n", b"\n"):
            body = wire + b".\r\n"
            reply = await asyncio.to_thread(talk, address, body[: -len(cut)], cut)
            assert reply.startswith(b"250 "), cut
    assert [i.raw for i in items(db)] == [wire]  # the same message each time: one item


async def test_size_limit_counts_the_data_exactly(db: Database) -> None:
    head = b"Subject: size\r\n\r\n"
    at_limit = head + b"a" * (1000 - len(head) - 2) + b"\r\n"
    over = head + b"b" * (1001 - len(head) - 2) + b"\r\n"
    assert (len(at_limit), len(over)) == (1000, 1001)
    async with serving(db, max_message_size=1000) as address:
        accepted = await asyncio.to_thread(talk, address, at_limit + b".\r\n")
        refused = await asyncio.to_thread(talk, address, over + b".\r\n")
    assert accepted.startswith(b"250 ")
    assert refused.startswith(b"552 ")
    assert b"1000 bytes" in refused
    assert [i.raw for i in items(db)] == [at_limit]


async def test_lines_longer_than_rfc_5321_allows_are_refused_500(db: Database) -> None:
    longest = b"Subject: long\r\n\r\n" + b"." * 999 + b"\r\n"  # 998 + its stuffed dot
    too_long = b"Subject: long\r\n\r\n" + b"y" * 1000 + b"\r\n"
    async with serving(db) as address:
        accepted = await asyncio.to_thread(talk, address, longest + b".\r\n")
        client = await asyncio.to_thread(_Client, address)
        try:
            await asyncio.to_thread(client.envelope)
            client.sock.sendall(too_long + b".\r\n")
            refused = await asyncio.to_thread(client.reply)
            # The session goes on: a new transaction on the same connection.
            again = await asyncio.to_thread(client.command, f"MAIL FROM:<{SENDER}>".encode())
        finally:
            client.close()
    assert accepted.startswith(b"250 ")
    assert refused.startswith(b"500 Line too long")
    assert again.startswith(b"250 ")
    assert [i.raw for i in items(db)] == [longest[:-1001] + longest[-1000:]]


async def test_data_before_rcpt_is_answered_503(db: Database) -> None:
    async with serving(db) as address:
        client = await asyncio.to_thread(_Client, address)
        try:
            await asyncio.to_thread(client.command, b"EHLO client.example")
            await asyncio.to_thread(client.command, f"MAIL FROM:<{SENDER}>".encode())
            reply = await asyncio.to_thread(client.command, b"DATA")
        finally:
            client.close()
    assert reply.startswith(b"503 ")


async def test_commands_pipelined_after_the_data_are_answered(db: Database) -> None:
    wire = b"Subject: pipelined\r\n\r\nbody\r\n"
    async with serving(db) as address:
        client = await asyncio.to_thread(_Client, address)
        try:
            await asyncio.to_thread(client.envelope)
            client.sock.sendall(wire + b".\r\nRSET\r\nQUIT\r\n")
            replies = [await asyncio.to_thread(client.reply) for _ in range(3)]
        finally:
            client.close()
    assert [r[:4] for r in replies] == [b"250 ", b"250 ", b"221 "]
    assert [i.raw for i in items(db)] == [wire]


async def _over_lmtp(
    address: tuple[str, int], recipients: tuple[str, ...], data: bytes
) -> tuple[list[bytes], bytes]:
    """The replies to ``data`` sent over LMTP to ``recipients``, and to a NOOP after it."""
    client = await asyncio.to_thread(_Client, address)
    try:
        await asyncio.to_thread(client.envelope, *recipients, hello=b"LHLO client.example")
        client.sock.sendall(data + b".\r\n")
        replies = [await asyncio.to_thread(client.reply) for _ in recipients]
        return replies, await asyncio.to_thread(client.command, b"NOOP")
    finally:
        client.close()


async def test_lmtp_answers_each_of_several_recipients(db: Database) -> None:
    wire = b"Subject: three\r\n\r\nbody\r\n"
    recipients = (SUPPORT, "help@omnivox.example", "desk@omnivox.example")
    async with serving(db, lmtp=True) as address:
        replies, after = await _over_lmtp(address, recipients, wire)
    assert [r[:4] for r in replies] == [b"250 "] * 3
    assert after.startswith(b"250 ")
    assert [i.raw for i in items(db)] == [wire]


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"Subject: big\r\n\r\n" + b"x" * 300 + b"\r\n", b"552 "),
        (b"Subject: long\r\n\r\n" + b"x" * 1200 + b"\r\n", b"500 "),
    ],
)
async def test_lmtp_refuses_data_once_per_recipient(
    db: Database, data: bytes, reply: bytes
) -> None:
    # A client waits for one reply per recipient, refusals too (RFC 2033 4.2).
    recipients = (SUPPORT, "help@omnivox.example")
    async with serving(db, lmtp=True, max_message_size=200) as address:
        replies, after = await _over_lmtp(address, recipients, data)
    assert [r[:4] for r in replies] == [reply] * 2
    assert after.startswith(b"250 ")
    assert items(db) == []


async def test_client_gone_mid_data_stores_nothing(db: Database) -> None:
    def leave_mid_data(address: tuple[str, int]) -> None:
        client = _Client(address)
        client.envelope()
        client.sock.sendall(b"Subject: gone\r\n\r\nhalf a message\r\n")
        client.close()

    later = mail_bytes(subject="After the broken one")
    async with serving(db) as address:
        await asyncio.to_thread(leave_mid_data, address)
        await asyncio.to_thread(send, address, later)
    assert [i.raw for i in items(db)] == [later]


# The reader on its own, fed so that read blocks end at every position of the wire bytes.

_WIRE = (
    b"..first\r\n"
    + b"a" * 1100  # beyond the stream's line limit, so that blocks are cut mid-line
    + b"\r\n..\r\n.\rx\n.\r\n...\r\nend.\r\n"
)
_CONTENT = b".first\r\n" + b"a" * 1100 + b"\r\n.\r\n\rx\n.\r\n..\r\nend.\r\n"


async def _received(first: bytes, rest: bytes) -> tuple[_DataReceiver, bytes]:
    reader = asyncio.StreamReader(limit=1001)
    receiver = _DataReceiver(None, 10_000)
    reader.feed_data(first)
    reading = asyncio.create_task(_read_data(reader, receiver))
    await asyncio.sleep(0)  # the reader takes what it has and waits for more
    reader.feed_data(rest)
    reader.feed_eof()
    await reading
    return receiver, await reader.read()


async def test_reader_is_exact_wherever_the_blocks_end() -> None:
    wire = _WIRE + b".\r\nQUIT\r\n"
    for cut in range(len(wire) + 1):
        receiver, left = await _received(wire[:cut], wire[cut:])
        assert (receiver.problem, receiver.size, left) == (None, len(_WIRE), b"QUIT\r\n"), cut
        assert receiver.content() == _CONTENT, cut


async def test_reader_measures_lines_across_blocks() -> None:
    fits = b"b" * 999 + b"\r\n"  # 1001 bytes with its CRLF: aiosmtpd's limit
    too_long = b"b" * 1000 + b"\r\n"
    for line, problem in ((fits, None), (too_long, "500 Line too long (see RFC5321 4.5.3.1.6)")):
        wire = b"x\r\n" + line + b"y\r\n.\r\n"
        for cut in range(len(wire) + 1):
            reader = asyncio.StreamReader(limit=1001)
            receiver = _DataReceiver(None, 1001)
            reader.feed_data(wire[:cut])
            reading = asyncio.create_task(_read_data(reader, receiver))
            await asyncio.sleep(0)
            reader.feed_data(wire[cut:])
            await reading
            assert receiver.problem == problem, (len(line), cut)


# MAIL FROM and RCPT TO: plain addresses are read without the email package's parser, with
# the same outcome as aiosmtpd's reading (the address, the parameters, or None for a reply
# of 553), whatever the argument.

_ADDRESS_CASES = [
    "<anna@acme.example>",
    "<Anna.Berg+tickets@Mail.ACME.example> SIZE=43000 BODY=8BITMIME",
    "<anna@acme.example>\tSMTPUTF8",
    "<anna@acme.example>  SIZE=1  BODY=7BIT",
    "<anna@acme.example> (a comment) SIZE=1",
    "<anna@acme.example>SIZE=1",
    "<anna@acme.example> \xa0SIZE=1",
    "<anna@acme.example> )",
    "<>",
    "<anna@[192.0.2.1]>",
    '<"anna berg"@acme.example>',
    "<anna..berg@acme.example>",
    "<.anna@acme.example>",
    "<anna@acme.example.>",
    "<anna@acme_example>",
    "<=?utf-8?q?anna?=@acme.example>",
    "<анна@пример.example>",
    "<@relay.example:anna@acme.example>",
    "<anna@acme.example",
    "<anna>",
    "anna@acme.example",
    "<anna@acme.example>>",
    "<a@b>",
    "",
]


def _random_addresses(count: int) -> list[str]:
    rnd = random.Random(20240611)
    locals_ = ["anna", "B", "x.y", ".", "..", "-", "+tag", "=?", "?=", "é", '"q"', "(c)", " ", "'"]
    domains = ["acme", ".", "example", "-", "x1", "é", "[192.0.2.1]", "_", ""]
    params = ["", " SIZE=100", " BODY=8BITMIME", "\tSMTPUTF8", " (x) SIZE=1", "X", " )", " a(b)"]
    return [
        "<"
        + "".join(rnd.choices(locals_, k=rnd.randint(1, 3)))
        + "@"
        + "".join(rnd.choices(domains, k=rnd.randint(1, 3)))
        + ">"
        + rnd.choice(params)
        for _ in range(count)
    ]


@pytest.mark.parametrize("local_part_limit", [0, 4])
def test_addresses_are_read_as_aiosmtpd_reads_them(local_part_limit: int) -> None:
    ours, theirs = _Smtp(object()), SMTP(object())
    ours.local_part_limit = theirs.local_part_limit = local_part_limit
    for argument in _ADDRESS_CASES + _random_addresses(5000):
        assert ours._getaddr(argument) == theirs._getaddr(argument), argument
    # The cases include plain addresses, which the fast path reads.
    assert ours._getaddr("<anna@acme.example> SIZE=1") == ("anna@acme.example", "SIZE=1")
