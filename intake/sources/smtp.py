"""The built-in SMTP/LMTP listener: the mail server hands support mail to us here.

The protocol edge is thin: ``handle_DATA`` stores the raw message in the inbound store and
answers 250 only after that commit; a storage failure is answered 451, so the sending MTA
keeps the message and tries again. Parsing and registration happen in the pipeline.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from intake.services import cannot_listen
from parsers.headers import parse_msg_ids, split_header_block
from storage import inbound
from storage.db import Database

log = logging.getLogger(__name__)

SOURCE = "smtp"
HEADER_SCAN = 256 * 1024
MAX_SOURCE_REF = 512


@dataclass(frozen=True)
class ListenerConfig:
    host: str
    port: int
    accept: tuple[str, ...] = ()
    max_message_size: int = 32 * 1024 * 1024
    lmtp: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None


def recipient_accepted(address: str, accept: Sequence[str]) -> bool:
    """Empty ``accept`` takes any recipient; else an exact address or an ``@domain``."""
    if not accept:
        return True
    wanted = address.strip().lower()
    domain = "@" + wanted.rpartition("@")[2]
    return any(rule.lower() in (wanted, domain) for rule in accept)


def source_ref(raw: bytes) -> tuple[str, str | None]:
    """The inbound store's key for a mail: its Message-ID, else the hash of its bytes."""
    headers, _, _ = split_header_block(raw, 0, min(len(raw), HEADER_SCAN))
    ids = parse_msg_ids(headers.raw("message-id"))
    message_id = ids[0] if ids else None
    if message_id is not None and len(message_id) <= MAX_SOURCE_REF:
        return message_id, message_id
    return f"sha256:{hashlib.sha256(raw).hexdigest()}", message_id


class InboundHandler:
    """aiosmtpd hooks: recipients by the accept list, and the durable write of the data."""

    def __init__(
        self, db: Database, config: ListenerConfig, stored: asyncio.Event | None = None
    ) -> None:
        self.db = db
        self.config = config
        self.stored = stored

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not recipient_accepted(address, self.config.accept):
            return f"550 5.1.1 <{address}>: recipient not accepted here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        # aiosmtpd enforces the limit while reading; this also covers a limit it was not given.
        if len(raw) > self.config.max_message_size:
            return _too_big(self.config.max_message_size)
        ref, message_id = source_ref(raw)
        try:
            stored = await asyncio.to_thread(self._store, ref, message_id, raw)
        except Exception:
            log.exception("%s: cannot store the message; answered 451", message_id or ref)
            reply = "451 4.3.0 Cannot store the message now; try again later"
        else:
            log.info(
                "%s: %s as inbound %d (%d bytes, from %s)",
                message_id or ref,
                "duplicate, already stored" if stored.duplicate else "stored",
                stored.id,
                len(raw),
                envelope.mail_from,
            )
            if self.stored is not None:
                self.stored.set()
            reply = f"250 2.0.0 OK: queued as {stored.id}"
        # LMTP answers once per recipient (RFC 2033 4.2); the stored message is one for all.
        if isinstance(server, LMTP):
            return "\r\n".join([reply] * len(envelope.rcpt_tos))
        return reply

    def _store(self, ref: str, message_id: str | None, raw: bytes) -> inbound.Stored:
        with self.db.transaction() as session:
            return inbound.store(
                session, source=SOURCE, source_ref=ref, raw=raw, message_id=message_id
            )


def _too_big(limit: int) -> str:
    return f"552 5.3.4 Message too big: the limit is {limit} bytes"


def _naming_the_limit(status: AnyStr, limit: int | None) -> AnyStr:
    # aiosmtpd refuses oversized mail in its own words; ours name the limit (RFC 1870).
    if isinstance(status, str) and status.startswith("552 Error") and limit:
        return _too_big(limit)
    return status


class _Smtp(SMTP):
    async def push(self, status: AnyStr) -> None:
        await super().push(_naming_the_limit(status, self.data_size_limit))


class _Lmtp(LMTP):
    async def push(self, status: AnyStr) -> None:
        await super().push(_naming_the_limit(status, self.data_size_limit))


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class SmtpListener:
    """Serves SMTP (or LMTP) in the daemon's own event loop."""

    name = "smtp"
    description = "SMTP/LMTP listener that stores received mail in the inbound store"

    def __init__(
        self, db: Database, config: ListenerConfig, stored: asyncio.Event | None = None
    ) -> None:
        self.config = config
        # aiosmtpd logs every command of every session at INFO; one line per stored
        # message (ours) is what an operator reads.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.handler = InboundHandler(db, config, stored)
        self.tls = (
            tls_context(config.tls_cert, config.tls_key)
            if config.tls_cert is not None and config.tls_key is not None
            else None
        )
        self.ready = asyncio.Event()
        self.address: tuple[str, int] | None = None

    def _protocol(self) -> SMTP:
        kind = _Lmtp if self.config.lmtp else _Smtp
        options: dict[str, Any] = {
            "data_size_limit": self.config.max_message_size,
            "enable_SMTPUTF8": True,
            "hostname": socket.gethostname(),
            "tls_context": self.tls,
        }
        return kind(self.handler, **options)

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self._protocol, self.config.host, self.config.port)
        except OSError as error:
            raise cannot_listen(
                "lmtp" if self.config.lmtp else "smtp", self.config.host, self.config.port, error
            ) from None
        host, port = server.sockets[0].getsockname()[:2]
        self.address = (host, port)
        self.ready.set()
        log.info("%s listening on %s:%d", "LMTP" if self.config.lmtp else "SMTP", host, port)
        try:
            await stopping.wait()
        finally:
            self.ready.clear()
            server.close()
            await server.wait_closed()
