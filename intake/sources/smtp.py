"""The built-in SMTP/LMTP listener: the mail server hands support mail to us here.

The protocol edge is thin: ``handle_DATA`` stores the raw message in the inbound store and
answers 250 only after that commit; a storage failure is answered 451, so the sending MTA
keeps the message and tries again. Parsing and registration happen in the pipeline.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import socket
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope, syntax
from aiosmtpd.smtp import Session as SmtpSession

from intake.directory import ATEXT
from intake.groupcommit import GroupCommit
from intake.services import cannot_listen
from parsers.headers import parse_msg_ids, split_header_block
from storage import inbound
from storage.db import Database, unavailable

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


@dataclass(frozen=True)
class ReceivedMail:
    """One mail as the listener keeps it: its key in the inbound store, and its bytes."""

    source_ref: str
    message_id: str | None
    raw: bytes


class InboundHandler:
    """aiosmtpd hooks: recipients by the accept list, and the durable write of the data.

    Mails are written by a :class:`GroupCommit`: those that arrive while a transaction is
    being written share the next commit, and each is answered 250 only after the commit
    that holds it (451 when its write failed)."""

    def __init__(
        self, writer: GroupCommit[ReceivedMail, inbound.Stored], config: ListenerConfig
    ) -> None:
        self.writer = writer
        self.config = config

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
        # The size limit was enforced while the data was read (_DataReceiver).
        raw = envelope.original_content or b""
        ref, message_id = source_ref(raw)
        try:
            stored = await self.writer.write(ReceivedMail(ref, message_id, raw))
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
            reply = f"250 2.0.0 OK: queued as {stored.id}"
        return reply


def store_mails(db: Database, mails: Sequence[ReceivedMail]) -> list[inbound.Stored]:
    """Write mails to the inbound store in one transaction (on the storage thread)."""
    with db.connection_transaction() as connection:
        return [
            inbound.store(
                connection,
                source=SOURCE,
                source_ref=mail.source_ref,
                raw=mail.raw,
                message_id=mail.message_id,
            )
            for mail in mails
        ]


def _too_big(limit: int) -> str:
    return f"552 5.3.4 Message too big: the limit is {limit} bytes"


def _naming_the_limit(status: AnyStr, limit: int | None) -> AnyStr:
    # aiosmtpd refuses oversized mail (MAIL FROM's SIZE=) in its own words; ours name the
    # limit (RFC 1870).
    if isinstance(status, str) and status.startswith("552 Error") and limit:
        return _too_big(limit)
    return status


# RFC 5321 4.1.1.4: the data ends with a line holding a single dot. The reader looks for
# the dot line itself and checks what precedes it, so a match needs no bytes it has already
# handed over, and the very first line of the data is no special case.
_DOT_LINE = b".\r\n"
_LINE_END = b"\r\n"


class _DataReceiver:
    """The wire form of one DATA phase, taken in blocks rather than line by line.

    aiosmtpd reads DATA one line at a time, which on a GIL-bound daemon costs more than the
    rest of receiving a mail. This keeps its rules: lines end at CRLF only (a bare LF is
    data), a line may be at most ``line_limit`` bytes with its CRLF, at most ``size_limit``
    bytes of data are kept, and the first limit broken decides the answer, given only once
    the client has sent the end of the data.
    """

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.blocks: list[bytes] = []
        self.size = 0
        self.problem: str | None = None
        # The data starts at the beginning of a line, as if a CRLF had come before it.
        self._before = _LINE_END
        self._line = 0
        self._cr_at_end = False

    def take(self, block: bytes, *, last: bool = False) -> None:
        """One block of the data as it came; the ``last`` one ends with the dot line."""
        if self.problem is None:
            self._check_lines(block)
        # The dot line that ends the data is not part of it.
        self.size += len(block) - len(_DOT_LINE) if last else len(block)
        if self.problem is None and self.size_limit and self.size > self.size_limit:
            self.problem = _too_big(self.size_limit)
        if self.problem is None:
            self.blocks.append(block)
        else:
            # Read on to the end of the data, but keep nothing of a mail that is refused.
            self.blocks.clear()
        self._before = (self._before + block)[-2:] if len(block) < 2 else block[-2:]

    def ends_here(self, block: bytes) -> bool:
        """Whether ``block``, which ends with a dot line, ends the data."""
        before = block[-5:-3] if len(block) >= 5 else (self._before + block[:-3])[-2:]
        return before == _LINE_END

    def content(self) -> bytes:
        """The data without the final dot line, its dot-stuffing undone (RFC 5321 4.5.2)."""
        blocks, self.blocks = self.blocks, []
        if blocks:
            blocks[-1] = blocks[-1][: -len(_DOT_LINE)]
        data = b"".join(blocks)
        del blocks
        # A line that starts with a dot had one more put in front of it by the client.
        if data.startswith(b"."):
            data = data[1:]
        return data.replace(b"\r\n.", _LINE_END)

    def _check_lines(self, block: bytes) -> None:
        # Lengths count the CRLF; a CRLF may be split between two blocks.
        parts = block.split(_LINE_END)
        first = len(parts[0])
        if self._cr_at_end and block.startswith(b"\n"):
            self._line_done(self._line + 1)
            self._line = 0
            first -= 1
        if len(parts) == 1:
            self._line += first
        else:
            self._line_done(self._line + first + 2)
            if len(parts) > 2:
                self._line_done(max(map(len, parts[1:-1])) + 2)
            self._line = len(parts[-1])
        if self._line > self.line_limit:
            self.problem = _TOO_LONG
        self._cr_at_end = block.endswith(b"\r")

    def _line_done(self, length: int) -> None:
        if length > self.line_limit:
            self.problem = _TOO_LONG


_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"


# The address of nearly every MAIL FROM and RCPT TO: ``<local@domain>``, a dot-atom local
# part (RFC 5322 atext) and a plain host name, then the parameters, if any, after blanks.
# What it matches, aiosmtpd's parser (the email package's, about 0.2 ms a command) reads
# the same way; anything else still goes to that parser. Parameters starting with "("
# would be a comment to it; "=?" could be an encoded word.
_LABEL = "[A-Za-z0-9-]+"
_PLAIN_ADDRESS = re.compile(
    f"<({ATEXT}(?:\\.{ATEXT})*@{_LABEL}(?:\\.{_LABEL})*)>"
    r"(?:[ \t]+([!-'*-~][!-~]*(?:[ \t]+[!-~]+)*))?"
)


class _Smtp(SMTP):
    """aiosmtpd's SMTP with the data read in blocks (:class:`_DataReceiver`); what the
    client sees, the envelope and the handler's hook are as aiosmtpd has them."""

    async def push(self, status: AnyStr) -> None:
        await super().push(_naming_the_limit(status, self.data_size_limit))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_ADDRESS.fullmatch(arg)
        if plain is None or "=?" in plain[1]:
            return super()._getaddr(arg)
        address = plain[1]
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, plain[2] or ""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        receiver = _DataReceiver(self.data_size_limit, self.line_length_limit)
        await self._receive(receiver)
        status: Any
        if receiver.problem is not None:
            status = receiver.problem
        else:
            # Bytes, as the listener builds its sessions (no decode_data).
            self.envelope.content = self.envelope.original_content = receiver.content()
            status = await self._call_handler_hook("DATA")
        reply = self._data_reply("250 OK" if status is MISSING else status)
        # A new envelope lets go of the message: a big one must not live on with the session.
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(reply)

    def _data_reply(self, status: str) -> str:
        """The reply to the end of the data: one, for the message."""
        return status

    async def _receive(self, receiver: _DataReceiver) -> None:
        try:
            await _read_data(self._reader, receiver)
        except asyncio.CancelledError:
            # eof_received / connection_lost cancel the session: nothing is stored.
            log.info("%r: connection lost during DATA; nothing stored", self._peer())
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            log.info("%r: connection closed during DATA; nothing stored", self._peer())
            self._writer.close()
            # As when aiosmtpd sees the end of the stream: the session is over.
            raise asyncio.CancelledError from None

    def _peer(self) -> object:
        return self.session.peer if self.session is not None else None


async def _read_data(reader: asyncio.StreamReader, receiver: _DataReceiver) -> None:
    """Read to the end of the data. Nothing after it is taken from the stream: commands
    that a pipelining client sent along stay there for the command loop."""
    while True:
        try:
            block = await reader.readuntil(_DOT_LINE)
        except asyncio.LimitOverrunError as more:
            # No dot line in the first ``more.consumed`` bytes (more than the stream's line
            # limit): they are one block.
            receiver.take(await reader.read(more.consumed))
            continue
        last = receiver.ends_here(block)
        receiver.take(block, last=last)
        if last:
            return


class _Lmtp(_Smtp, LMTP):
    """LMTP (LHLO instead of HELO/EHLO) with our DATA."""

    def _data_reply(self, status: str) -> str:
        # One per recipient (RFC 2033 4.2), refusals too; the message is one for all.
        assert self.envelope is not None
        return "\r\n".join([status] * len(self.envelope.rcpt_tos))


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class SmtpListener:
    """Serves SMTP (or LMTP) in the daemon's own event loop."""

    name = "smtp"
    description = "SMTP/LMTP listener that stores received mail in the inbound store"

    # Mails of one transaction: a bound on what one failure sends back to be written alone.
    MAX_BATCH = 64

    def __init__(
        self, db: Database, config: ListenerConfig, stored: asyncio.Event | None = None
    ) -> None:
        self.db = db
        self.config = config
        self.stored = stored
        # aiosmtpd logs every command of every session at INFO; one line per stored
        # message (ours) is what an operator reads.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.tls = (
            tls_context(config.tls_cert, config.tls_key)
            if config.tls_cert is not None and config.tls_key is not None
            else None
        )
        self.ready = asyncio.Event()
        self.address: tuple[str, int] | None = None
        self.writer: GroupCommit[ReceivedMail, inbound.Stored] | None = None

    def _protocol(self, handler: InboundHandler) -> SMTP:
        kind = _Lmtp if self.config.lmtp else _Smtp
        options: dict[str, Any] = {
            "data_size_limit": self.config.max_message_size,
            "enable_SMTPUTF8": True,
            "hostname": socket.gethostname(),
            "tls_context": self.tls,
        }
        return kind(handler, **options)

    def _committed(self, count: int, queued: int) -> None:
        if self.stored is not None:
            self.stored.set()

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        kind = "lmtp" if self.config.lmtp else "smtp"
        # One storage thread: on SQLite there is one writer anyway, and one thread lets
        # the mails that arrive while it writes share its next commit.
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"{kind}-db")
        self.writer = writer = GroupCommit(
            kind,
            functools.partial(store_mails, self.db),
            executor,
            max_batch=self.MAX_BATCH,
            committed=self._committed,
            unavailable=unavailable,
        )
        handler = InboundHandler(writer, self.config)
        try:
            try:
                server = await loop.create_server(
                    functools.partial(self._protocol, handler), self.config.host, self.config.port
                )
            except OSError as error:
                raise cannot_listen(kind, self.config.host, self.config.port, error) from None
            host, port = server.sockets[0].getsockname()[:2]
            self.address = (host, port)
            self.ready.set()
            log.info("%s listening on %s:%d", kind.upper(), host, port)
            try:
                await stopping.wait()
            finally:
                self.ready.clear()
                server.close()
                await server.wait_closed()
                # Mails already handed to the writer are written and answered; a session
                # that comes later finds the thread gone and is answered 451.
                await writer.idle()
        finally:
            executor.shutdown(wait=True)
