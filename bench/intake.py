"""Mail intake end to end: ``.venv/bin/python bench/intake.py [--messages N] [--backlog N]
[--imap-messages N]``.

Generates its own corpus (plain; HTML; a 200 KB PNG screenshot attached; one pasted inline
into HTML; Russian in koi8-r and windows-1251; replies to earlier messages), sends it over
SMTP to the daemon's listener and waits until every message is a registered ticket, a
follow-up or set aside. Prints, from one run:

- messages/s on SQLite and on PostgreSQL (SMTP in, tickets out; the sending client runs
  in a process of its own),
- the time the standard library alone needs to parse the same messages
  (``email.message_from_bytes``), next to the end-to-end time,
- floors for that comparison: the same senders against a minimal SMTP responder (the
  least that any intake can take with these senders) and against stock aiosmtpd (whose
  data reading our listener replaces), each answering 250 to every message and keeping
  nothing,
- the latency of the IMAP source on SQLite, reading by IDLE a throw-away Dovecot on a
  loopback port: ``--imap-messages`` new requests of the corpus are APPENDed one at a time,
  each timed from APPEND's OK to its registered ticket (p50, p95, max),
- peak RSS of the daemon while a backlog of ``--backlog`` stored messages is worked off,
- the peak RSS growth caused by one message with a 25 MB attachment.

Each measurement runs in a fresh process, so that one peak does not hide another.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email
import io
import multiprocessing
import os
import queue
import random
import resource
import smtplib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from email.parser import BytesHeaderParser
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session
from imapclient import IMAPClient
from PIL import Image
from sqlalchemy import Engine, Select, create_engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from intake.app import open_app
from intake.config import load_settings
from intake.directory import add_contact, add_customer
from intake.mailflow import mail_services
from intake.sources.imap_sync import message_id_of, source_name
from intake.sources.smtp import SOURCE as SMTP_SOURCE
from intake.sources.smtp import SmtpListener
from parsers.request import parse_mail
from storage import inbound
from storage.db import Database
from storage.migrate import upgrade
from storage.models import InboundItem, InboundState, Message, Ticket
from tests.peers.dovecot import Dovecot, ImapUser

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SENDER_CONNECTIONS = 4
FINISHED = (InboundState.DONE, InboundState.IGNORED, InboundState.QUARANTINED)
CUSTOMERS = ("acme.example", "globex.example", "initech.example")
RU_TEXT = (
    "Здравствуйте! После обновления у операторов не звонит софтфон в AgentZone 3.2.1.\n"
    "ОС: Windows 10 Pro, браузер Google Chrome 120.0.6099.130.\n"
    "Прошу помочь, работа колл-центра остановлена.\n\nС уважением,\nИван Петров\n"
)
EN_TEXT = (
    "Hello,\nOne agent gets an error when closing a chat in OmniVOX Chat 2.4.1.\n"
    "OS version: Ubuntu 22.04\nBrowser: Firefox 121.0\n\nBest regards,\nJohn\n"
)


# --- corpus ---------------------------------------------------------------------------------


def screenshot(rng: random.Random, size: int = 200 * 1024) -> bytes:
    """A PNG of noise: incompressible, so the file is about ``size`` bytes."""
    side = int((size / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _b64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))


def _headers(i: int, subject: bytes, extra: bytes = b"") -> bytes:
    domain = CUSTOMERS[i % len(CUSTOMERS)]
    return (
        b"From: Customer %d <user%d@%s>\r\n" % (i, i % 50, domain.encode())
        + b"To: support@omnivox.example\r\n"
        + b"Subject: "
        + subject
        + b"\r\n"
        + b"Date: Wed, 25 Nov 2026 12:00:00 +0300\r\n"
        + b"Message-ID: <bench-%d@%s>\r\n" % (i, domain.encode())
        + b"MIME-Version: 1.0\r\n"
        + extra
    )


def message(i: int, seed: int = 7) -> bytes:
    """Message ``i`` of the corpus; the same bytes for the same ``i`` in every process."""
    rng = random.Random(seed * 1_000_003 + i)
    kind = i % 20
    if kind in (0, 1, 2, 3, 4, 5):
        return _headers(
            i, b"Chat closes with an error %d" % i, b"Content-Type: text/plain; charset=utf-8\r\n"
        ) + (b"\r\n" + EN_TEXT.encode().replace(b"\n", b"\r\n"))
    if kind in (6, 7, 8):
        html = (
            b"<html><body><p>Hello,</p><p>The <b>softphone</b> in AgentZone 3.2.1 does not "
            b"ring. Windows 11, Edge 120.</p><p>Regards</p></body></html>"
        )
        return _headers(
            i,
            b"Softphone does not ring %d" % i,
            b'Content-Type: multipart/alternative; boundary="alt"\r\n',
        ) + (
            b"\r\n--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            b"Hello, the softphone in AgentZone 3.2.1 does not ring. Windows 11, Edge 120.\r\n"
            b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + b"\r\n--alt--\r\n"
        )
    if kind in (9, 10):
        charset = "koi8-r" if kind == 9 else "windows-1251"
        body = RU_TEXT.encode(charset).replace(b"\n", b"\r\n")
        subject = b"=?%s?B?%s?=" % (
            charset.encode(),
            base64.b64encode(f"Не звонит софтфон {i}".encode(charset)),
        )
        return (
            _headers(
                i,
                subject,
                b"Content-Type: text/plain; charset=%s\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n" % charset.encode(),
            )
            + b"\r\n"
            + body
        )
    if kind in (11, 12):
        png = screenshot(rng)
        return _headers(
            i, b"Error screen attached %d" % i, b'Content-Type: multipart/mixed; boundary="mix"\r\n'
        ) + (
            b"\r\n--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + EN_TEXT.encode().replace(b"\n", b"\r\n")
            + b"\r\n--mix\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="screen.png"\r\n\r\n'
            + _b64_lines(png)
            + b"\r\n--mix--\r\n"
        )
    if kind == 13:
        png = screenshot(rng)
        return _headers(
            i, b"Pasted screenshot %d" % i, b'Content-Type: multipart/related; boundary="rel"\r\n'
        ) + (
            b"\r\n--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b'<p>See the error, AgentZone 3.2.1, Windows 10:</p><img src="cid:shot1@x">\r\n'
            b"--rel\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-ID: <shot1@x>\r\nContent-Disposition: inline\r\n\r\n"
            + _b64_lines(png)
            + b"\r\n--rel--\r\n"
        )
    # A reply to the message seven before this one, quoting it.
    earlier = i - 7 if i >= 7 else 0
    domain = CUSTOMERS[i % len(CUSTOMERS)]
    reply_to = b"<bench-%d@%s>" % (earlier, CUSTOMERS[earlier % len(CUSTOMERS)].encode())
    return _headers(
        i,
        b"Re: Chat closes with an error",
        b"In-Reply-To: " + reply_to + b"\r\nReferences: " + reply_to + b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n",
    ) + (
        b"\r\nIt happens again today, on all three workstations.\r\n\r\n"
        b"On Wed, 25 Nov 2026 at 10:00, user@"
        + domain.encode()
        + b" wrote:\r\n"
        + b"".join(b"> " + line + b"\r\n" for line in EN_TEXT.encode().splitlines())
    )


def corpus(n: int) -> Iterator[bytes]:
    return (message(i) for i in range(n))


# --- a daemon of our own, and a sending MTA ---------------------------------------------------


def _config(state: Path, url: str, workers: int, max_size: int) -> Path:
    path = state / "config.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{state}"\n[storage]\nurl = "{url}"\npool_size = 8\n'
        f"[smtp]\nport = 0\nmax_message_size = {max_size}\n"
        f"[pipeline]\nworkers = {workers}\npoll_interval = 1.0\n"
        '[outbound]\nfrom_address = "support@omnivox.example"\n',
        encoding="utf-8",
    )
    return path


def _seed(db: Database) -> None:
    with db.transaction() as session:
        for domain in CUSTOMERS:
            name = domain.split(".")[0].title()
            add_customer(
                session, name, package="standard", known_packages=["standard"], domains=[domain]
            )
            add_contact(session, name, email=f"user0@{domain}", responsible=True)


def _send(port: int, first: int, step: int, n: int, ready: ProcessEvent, go: ProcessEvent) -> None:
    messages = [message(i) for i in range(first, n, step)]
    ready.set()
    go.wait()
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        for index, raw in zip(range(first, n, step), messages, strict=True):
            client.sendmail(f"user{index}@example.org", ["support@omnivox.example"], raw)


_FINISHED_COUNT = (
    select(func.count()).select_from(InboundItem).where(InboundItem.state.in_(FINISHED))
)


def _finished(observer: Engine) -> int:
    with observer.connect() as connection:
        return int(connection.execute(_FINISHED_COUNT).scalar() or 0)


async def _serve(settings_path: Path, until: Any) -> dict[str, Any]:
    settings = load_settings(settings_path)
    app = open_app(settings)
    _seed(app.db)
    services = mail_services(settings, app.db, app.desk)
    listener = next(s for s in services if isinstance(s, SmtpListener))
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stopping)) for s in services]
    await listener.ready.wait()
    assert listener.address is not None
    try:
        return await until(app.db, listener.address[1])
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
        app.close()


async def _wait_finished(db: Database, n: int) -> None:
    # The outcome is in the database, written by the workers' threads: look every 20 ms,
    # through an engine of the bench's own. A plain one: on SQLite it only reads (WAL), and
    # it neither takes the daemon's writer lock nor a connection of its pool.
    observer = create_engine(db.engine.url)
    try:
        async with asyncio.timeout(1800):
            while await asyncio.to_thread(_finished, observer) < n:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        observer.dispose()


async def _send_corpus(
    port: int, n: int, done: Callable[[], Awaitable[None]] | None = None
) -> tuple[float, float]:
    """The corpus sent over SENDER_CONNECTIONS connections, a process each, all at once:
    the seconds and this process's CPU seconds from the start until ``done`` returns (by
    default, until the senders have their last answer)."""
    spawn = multiprocessing.get_context("spawn")
    ready = [spawn.Event() for _ in range(SENDER_CONNECTIONS)]
    go = spawn.Event()
    senders = [
        spawn.Process(target=_send, args=(port, k, SENDER_CONNECTIONS, n, ready[k], go))
        for k in range(SENDER_CONNECTIONS)
    ]
    for sender in senders:
        sender.start()
    for event in ready:
        await asyncio.to_thread(event.wait)
    started = time.perf_counter()
    cpu_started = time.process_time()
    go.set()
    await (done() if done is not None else _joined(senders))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await _joined(senders)
    return elapsed, cpu


async def _joined(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        await asyncio.to_thread(process.join)


class _Sink:
    """aiosmtpd's handler that keeps nothing: every message is answered 250 at once."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


class _Responder(asyncio.Protocol):
    """The least an SMTP server can do for these senders: a canned answer to each command,
    and 250 when the end of DATA goes by (found with bytes.find, nothing parsed or kept)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""
        self.in_data = False
        self.transport.write(b"220 floor ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    # Keep what may be the start of the terminator.
                    self.buffer = self.buffer[-4:]
                    return
                self.buffer, self.in_data = self.buffer[end + 5 :], False
                self.transport.write(b"250 OK\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            command, self.buffer = self.buffer[:4].upper(), self.buffer[end + 2 :]
            if command == b"EHLO":
                self.transport.write(b"250-floor\r\n250 8BITMIME\r\n")
            elif command == b"DATA":
                self.transport.write(b"354 go ahead\r\n")
                self.in_data = True
            elif command == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            else:
                self.transport.write(b"250 OK\r\n")


def floor(n: int, server: str, results: Any) -> None:
    """In a child process: the same senders against a server that answers 250 to every
    message without storing or parsing it: stock aiosmtpd (``aiosmtpd``), or the least any
    SMTP server can do (``responder``)."""

    async def measure() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        listening = await loop.create_server(
            (lambda: SMTP(_Sink(), data_size_limit=64 * 1024 * 1024))
            if server == "aiosmtpd"
            else _Responder,
            "127.0.0.1",
            0,
        )
        try:
            elapsed, cpu = await _send_corpus(listening.sockets[0].getsockname()[1], n)
        finally:
            listening.close()
            await listening.wait_closed()
        return {"elapsed": elapsed, "cpu": cpu}

    results.put(asyncio.run(measure()))


def throughput(url: str, n: int, workers: int, results: Any) -> None:
    """In a child process: n messages over SMTP into tickets; messages/s and peak RSS."""

    async def measure(db: Database, port: int) -> dict[str, Any]:
        elapsed, cpu = await _send_corpus(port, n, lambda: _wait_finished(db, n))
        with db.transaction() as session:
            tickets = session.scalar(select(func.count()).select_from(Ticket))
            messages = session.scalar(select(func.count()).select_from(Message))
            states = dict(
                session.execute(
                    select(InboundItem.state, func.count()).group_by(InboundItem.state)
                ).all()
            )
        return {
            "elapsed": elapsed,
            "cpu": cpu,
            "tickets": tickets,
            "follow_ups": (messages or 0) - (tickets or 0),
            "states": {k.value: v for k, v in states.items()},
        }

    with tempfile.TemporaryDirectory() as state:
        config = _config(Path(state), url.replace("STATE", state), workers, 32 * 1024 * 1024)
        result = asyncio.run(_serve(config, measure))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put(result)


def backlog(url: str, n: int, results: Any) -> None:
    """In a child process: n messages already stored; the daemon works them off."""
    with tempfile.TemporaryDirectory() as state:
        config = _config(Path(state), url.replace("STATE", state), 4, 32 * 1024 * 1024)
        settings = load_settings(config)
        db = Database.from_url(settings.storage.sqlalchemy_url)
        upgrade(db.engine)
        _seed(db)
        batch: list[bytes] = []
        for i, raw in enumerate(corpus(n)):
            batch.append(raw)
            if len(batch) == 200 or i == n - 1:
                with db.transaction() as session:
                    # Stored as the SMTP listener stores mail: the pipeline takes mail only.
                    for j, item in enumerate(batch):
                        inbound.store(session, source=SMTP_SOURCE, source_ref=f"{i}-{j}", raw=item)
                batch = []
        db.dispose()
        filled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # The daemon's part runs in a process of its own, so that the filler's peak is not its.
        spawn = multiprocessing.get_context("spawn")
        inner = spawn.Queue()
        worker = spawn.Process(target=_work_off, args=(config, n, inner))
        worker.start()
        result = inner.get()
        worker.join()
        result["filler_rss_mb"] = filled
        results.put(result)


def _work_off(config: Path, n: int, results: Any) -> None:
    async def measure(db: Database, port: int) -> dict[str, Any]:
        started = time.perf_counter()
        await _wait_finished(db, n)
        return {"elapsed": time.perf_counter() - started}

    result = asyncio.run(_serve_without_smtp(config, measure))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put(result)


async def _serve_without_smtp(config: Path, until: Any) -> dict[str, Any]:
    settings = load_settings(config)
    app = open_app(settings)
    # The pipeline, and the IMAP mailboxes of the configuration, if any.
    services = [
        s for s in mail_services(settings, app.db, app.desk) if not isinstance(s, SmtpListener)
    ]
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stopping)) for s in services]
    try:
        return await until(app.db, 0)
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
        app.close()


def big_attachment(size: int, results: Any) -> None:
    """In a child process: peak RSS before and after one mail with a ``size`` attachment,
    sent from another process so that only the daemon's side is measured."""
    spawn = multiprocessing.get_context("spawn")

    async def measure(db: Database, port: int) -> dict[str, Any]:
        await asyncio.to_thread(_deliver_in_child, spawn, port, 0)
        await _wait_finished(db, 1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        await asyncio.to_thread(_deliver_in_child, spawn, port, size)
        await _wait_finished(db, 2)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"before_mb": before, "after_mb": after}

    with tempfile.TemporaryDirectory() as state:
        config = _config(Path(state), f"sqlite:///{state}/intake.sqlite3", 1, 48 * 1024 * 1024)
        results.put(asyncio.run(_serve(config, measure)))


def _deliver_in_child(spawn: Any, port: int, size: int) -> None:
    process = spawn.Process(target=_deliver, args=(port, size))
    process.start()
    process.join()


def _deliver(port: int, size: int) -> None:
    """A small mail (size 0) or one with a ``size``-byte attachment."""
    if size == 0:
        raw = message(0)
    else:
        data = random.Random(1).randbytes(size)
        raw = (
            _headers(1, b"Big log attached", b'Content-Type: multipart/mixed; boundary="m"\r\n')
            + b"\r\n--m\r\nContent-Type: text/plain\r\n\r\nThe log is attached.\r\n"
            b"--m\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="agentzone.log"\r\n\r\n'
            + _b64_lines(data)
            + b"\r\n--m--\r\n"
        )
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
        client.sendmail("user0@acme.example", ["support@omnivox.example"], raw)


# --- IMAP IDLE: from APPEND to a registered ticket ------------------------------------------

IMAP_MAILBOX = "bench"
# The environment variable that the mailbox's password_env names.
IMAP_ENV_VARIABLE = "BENCH_IMAP_PASSWORD"
IMAP_TIMEOUT = 30.0
"""Seconds one message may take from APPEND to its ticket before the run is a failure."""
IMAP_LOOK_EVERY = 0.005


def new_requests(n: int) -> list[bytes]:
    """The first ``n`` messages of the corpus that are not replies: each becomes a ticket."""
    headers = BytesHeaderParser()
    found: list[bytes] = []
    i = 0
    while len(found) < n:
        raw = message(i)
        if headers.parsebytes(raw)["In-Reply-To"] is None:
            found.append(raw)
        i += 1
    return found


def _imap_config(state: Path, url: str, port: int, user: ImapUser) -> Path:
    path = _config(state, url, 1, 32 * 1024 * 1024)
    with path.open("a", encoding="utf-8") as config:
        config.write(
            f'[[imap]]\nname = "{IMAP_MAILBOX}"\nhost = "127.0.0.1"\nport = {port}\n'
            f'security = "none"\nusername = "{user.name}"\n'
            f'password_env = "{IMAP_ENV_VARIABLE}"\nidle = true\n'
        )
    return path


def _imap_login(server: Dovecot, user: ImapUser) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=IMAP_TIMEOUT)
    client.login(user.name, user.password)
    return client


def _append(client: IMAPClient, raw: bytes) -> float:
    """APPEND ``raw`` to the inbox; the moment the server answered OK."""
    client.append("INBOX", raw)
    return time.perf_counter()


def _found_at(observer: Engine, query: Select[Any], deadline: float, what: str) -> float:
    """The moment ``query`` first finds a row (``what``), looking every few milliseconds."""
    while True:
        with observer.connect() as connection:
            found = connection.execute(query).first()
        now = time.perf_counter()
        if found is not None:
            return now
        if now > deadline:
            raise TimeoutError(f"{what}: not there {IMAP_TIMEOUT:g} s after APPEND")
        time.sleep(IMAP_LOOK_EVERY)


def imap_latency(url: str, n: int, pause: float, results: Any) -> None:
    """In a child process: a throw-away Dovecot, and the daemon's IMAP source reading it by
    IDLE; n new requests APPENDed one at a time, ``pause`` seconds after the previous one
    became a ticket, each timed from APPEND's OK to its ticket in the database."""

    async def measure(db: Database, port: int) -> dict[str, Any]:
        # Its own engine, reading without a transaction: the daemon's sessions begin theirs
        # IMMEDIATE on SQLite, and looking every few ms that way would queue on its writers.
        observer = create_engine(db.engine.url)
        client = await asyncio.to_thread(_imap_login, server, user)
        stored: list[float] = []
        registered: list[float] = []
        try:
            # The first one is not counted: it waits for the source's first session.
            for index, raw in enumerate(new_requests(n + 1)):
                message_id = message_id_of(raw)
                this = (
                    InboundItem.source == source_name(IMAP_MAILBOX),
                    InboundItem.message_id == message_id,
                )
                inbound_of = select(InboundItem.id).where(*this)
                ticket_of = (
                    select(Ticket.number)
                    .join(InboundItem, InboundItem.ticket_id == Ticket.id)
                    .where(*this)
                )
                appended = await asyncio.to_thread(_append, client, raw)
                deadline = appended + IMAP_TIMEOUT
                in_store = await asyncio.to_thread(
                    _found_at, observer, inbound_of, deadline, f"{message_id} stored"
                )
                as_ticket = await asyncio.to_thread(
                    _found_at, observer, ticket_of, deadline, f"{message_id} as a ticket"
                )
                if index:
                    stored.append(in_store - appended)
                    registered.append(as_ticket - appended)
                await asyncio.sleep(pause)
        finally:
            await asyncio.to_thread(client.logout)
            observer.dispose()
        return {"stored": stored, "registered": registered}

    server = Dovecot()
    try:
        server.start()
        user = server.add_user()
        os.environ[IMAP_ENV_VARIABLE] = user.password
        with tempfile.TemporaryDirectory() as state:
            config = _imap_config(Path(state), url.replace("STATE", state), server.port, user)
            result = asyncio.run(_serve_without_smtp(config, measure))
    finally:
        server.destroy()
    results.put(result)


# --- baseline and driver ----------------------------------------------------------------------


def parse_seconds(n: int) -> tuple[float, float, int]:
    """The standard library's bare parse of the corpus, and ours (``parse_mail``)."""
    messages = list(corpus(n))
    started = time.perf_counter()
    for raw in messages:
        email.message_from_bytes(raw)
    stdlib = time.perf_counter() - started
    started = time.perf_counter()
    for raw in messages:
        parse_mail(raw)
    return stdlib, time.perf_counter() - started, sum(map(len, messages))


def _in_child(target: Any, *args: Any) -> dict[str, Any]:
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    process = spawn.Process(target=target, args=(*args, results))
    process.start()
    while True:
        # A child that died without a result (its traceback is on stderr) fails the bench
        # instead of leaving it waiting for ever.
        alive = process.is_alive()
        try:
            result: dict[str, Any] = results.get(timeout=1)
        except queue.Empty:
            if not alive:
                raise RuntimeError(
                    f"{target.__name__} ended without a result (exit code {process.exitcode})"
                ) from None
            continue
        process.join()
        return result


def _postgres_database() -> tuple[str, Any]:
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"intake_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return f"postgresql://postgres@127.0.0.1:5432/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--attachment-mb", type=int, default=25)
    parser.add_argument("--workers", type=int, default=4, help="pipeline workers (PostgreSQL)")
    parser.add_argument(
        "--imap-messages", type=int, default=100, help="APPENDed for the IMAP latency; 0: none"
    )
    parser.add_argument("--imap-pause", type=float, default=0.2, help="seconds between two APPENDs")
    parser.add_argument(
        "--only",
        choices=("sqlite", "postgresql"),
        help="measure the throughput on this database alone (default: both)",
    )
    args = parser.parse_args()
    if args.imap_messages == 1:
        parser.error("--imap-messages: 0 (none) or at least 2, for percentiles")
    n = args.messages

    baseline, ours, size = parse_seconds(n)
    print(
        f"corpus: {n} messages, {size / 1e6:.1f} MB "
        "(plain, HTML, 200 KB PNG attached and pasted inline, koi8-r, windows-1251, replies)"
    )
    print(
        f"stdlib email.message_from_bytes: {baseline:.2f} s ({n / baseline:.0f} messages/s); "
        f"our parse_mail: {ours:.2f} s ({n / ours:.0f} messages/s)"
    )

    for server, what in (
        ("responder", "a minimal SMTP responder"),
        ("aiosmtpd", "aiosmtpd"),
    ):
        sink = _in_child(floor, n, server)
        print(
            f"floor: the same senders against {what} answering 250 and keeping nothing: "
            f"{sink['elapsed']:.2f} s = {sink['elapsed'] / baseline:.1f}x the stdlib parse "
            f"(target for the whole way: 1.5x); server CPU {sink['cpu'] / n * 1000:.1f} ms/message"
        )
    if args.only != "postgresql":
        lite = _in_child(throughput, "sqlite:///STATE/intake.sqlite3", n, 1)
        _report("SQLite", n, lite, baseline, target=150)
    if args.only != "sqlite":
        url, drop = _postgres_database()
        try:
            pg = _in_child(throughput, url, n, args.workers)
        finally:
            drop()
        _report(f"PostgreSQL ({args.workers} workers)", n, pg, baseline, target=100)

    if args.imap_messages:
        imap = _in_child(
            imap_latency, "sqlite:///STATE/intake.sqlite3", args.imap_messages, args.imap_pause
        )
        registered = _milliseconds(imap["registered"])
        stored = _milliseconds(imap["stored"])
        # Most of "stored" is Dovecot's: it tells an IDLE session of new mail only after
        # waiting 0.5 s for more changes (NOTIFY_DELAY_MSECS in its mailbox-watch.c).
        print(
            f"IMAP IDLE on SQLite: {args.imap_messages} new requests APPENDed one at a time, "
            f"{args.imap_pause:g} s apart -> registered ticket: p50 {registered['p50']:.0f} ms, "
            f"p95 {registered['p95']:.0f} ms (target <= 2000 ms), max {registered['max']:.0f} ms; "
            f"of which APPEND -> stored by the IMAP source: p50 {stored['p50']:.0f} ms, "
            f"p95 {stored['p95']:.0f} ms"
        )

    if args.backlog:
        work = _in_child(backlog, "sqlite:///STATE/intake.sqlite3", args.backlog)
        print(
            f"backlog of {args.backlog} stored messages worked off in {work['elapsed']:.1f} s "
            f"({args.backlog / work['elapsed']:.0f} messages/s); daemon peak RSS "
            f"{work['peak_rss_mb']:.0f} MB (target < 200 MB)"
        )

    if not args.attachment_mb:
        return
    big = _in_child(big_attachment, args.attachment_mb * 1024 * 1024)
    growth = big["after_mb"] - big["before_mb"]
    print(
        f"one {args.attachment_mb} MB attachment: peak RSS {big['before_mb']:.0f} MB -> "
        f"{big['after_mb']:.0f} MB, +{growth:.0f} MB = {growth / args.attachment_mb:.1f}x its "
        "size (target < 4x)"
    )


def _milliseconds(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p95": cuts[94] * 1000, "max": max(seconds) * 1000}


def _report(name: str, n: int, result: dict[str, Any], baseline: float, *, target: int) -> None:
    rate = n / result["elapsed"]
    print(
        f"{name}: {n} messages SMTP -> registered in {result['elapsed']:.2f} s = "
        f"{rate:.0f} messages/s (target >= {target}); {result['tickets']} tickets, "
        f"{result['follow_ups']} follow-ups, states {result['states']}; "
        f"end to end = {result['elapsed'] / baseline:.1f}x the stdlib parse; "
        f"daemon CPU {result['cpu'] / n * 1000:.1f} ms/message; "
        f"daemon peak RSS {result['peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
