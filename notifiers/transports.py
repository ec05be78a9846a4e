"""Ways a built message leaves: a folder of ``.eml`` files, or an SMTP server.

A transport raises :class:`notifiers.outbox.PermanentError` when the peer refused the
message for good (SMTP 5xx) and anything else for a failure worth retrying.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib

from notifiers.outbox import PermanentError

Security = Literal["starttls", "tls", "none"]
Auth = Literal["password", "xoauth2", "none"]


class AddressRejected(PermanentError):
    """The receiving server says the address does not exist (5.1.x): a hard bounce."""


# Enhanced status codes 5.1.x are about the address itself; other 5xx refusals (policy,
# spam, size) say nothing about whether the customer's mailbox exists.
_BAD_ADDRESS = re.compile(r"\b5\.1\.\d{1,3}\b")


class Transport(Protocol):
    async def send(
        self, message: EmailMessage, *, sender: str, recipient: str, outbox_id: int
    ) -> None: ...


class FolderTransport:
    """Each message becomes ``<folder>/<timestamp>-<outbox id>.eml``, complete or absent.

    It is written under a dot-name (which pickup tools skip), flushed to disk and renamed
    into place, so that a reader never sees half a message, even after a power loss.
    """

    def __init__(self, folder: Path, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.folder = folder
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def send(
        self, message: EmailMessage, *, sender: str, recipient: str, outbox_id: int
    ) -> None:
        data = message.as_bytes()
        name = f"{self.clock().strftime('%Y%m%dT%H%M%S%fZ')}-{outbox_id}.eml"
        await asyncio.to_thread(self._write, name, data)

    def _write(self, name: str, data: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=self.folder)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            final = self.folder / name
            os.replace(temporary, final)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return final


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: Security = "starttls"
    username: str | None = None
    auth: Auth = "none"
    # Read at each connection, so a rotated password or a fresh OAuth2 token is used.
    # It may block (a token command): it is run in a thread.
    read_secret: Callable[[], str] | None = None
    timeout: float = 30.0
    # For tests against a peer with a self-signed certificate; None is the system's trust.
    tls_context: ssl.SSLContext | None = None


class SmtpTransport:
    """One connection per message: outbox traffic is a trickle, and a fresh connection
    recovers from a server restart without any state to repair."""

    def __init__(self, settings: SmtpSettings) -> None:
        if settings.auth != "none" and (settings.username is None or settings.read_secret is None):
            raise ValueError(f"auth = {settings.auth!r} needs a username and a secret")
        self.settings = settings

    async def _secret(self) -> str:
        assert self.settings.read_secret is not None
        return await asyncio.to_thread(self.settings.read_secret)

    async def send(
        self, message: EmailMessage, *, sender: str, recipient: str, outbox_id: int
    ) -> None:
        settings = self.settings
        password = await self._secret() if settings.auth == "password" else None
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            timeout=settings.timeout,
            use_tls=settings.security == "tls",
            start_tls=settings.security == "starttls",
            username=settings.username if settings.auth != "none" else None,
            password=password,
            oauth_token_generator=self._secret if settings.auth == "xoauth2" else None,
            tls_context=settings.tls_context,
        )
        try:
            async with client:
                await client.send_message(message, sender=sender, recipients=[recipient])
        except aiosmtplib.SMTPRecipientsRefused as error:
            refusals = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
            if not all(500 <= r.code < 600 for r in error.recipients):
                raise
            if all(_BAD_ADDRESS.search(r.message) for r in error.recipients):
                raise AddressRejected(refusals) from error
            raise PermanentError(refusals) from error
        except aiosmtplib.SMTPResponseException as error:
            # A refused login is a configuration error an admin fixes: worth retrying.
            if 500 <= error.code < 600 and not isinstance(
                error, aiosmtplib.SMTPAuthenticationError
            ):
                raise PermanentError(f"{error.code} {error.message}") from error
            raise
