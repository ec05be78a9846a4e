"""A real SMTP server (aiosmtpd) as the receiving peer of outbound mail, in the test's loop.

It records every accepted envelope, can be stopped and started again on the same port (an
outage), can answer the next messages with a temporary error or refuse recipients, speaks
STARTTLS or implicit TLS with a self-signed certificate, and checks AUTH PLAIN/LOGIN
passwords and XOAUTH2 bearer tokens when told the expected ones.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import ssl
import subprocess
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1, made with openssl."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> Certificate:
        cert, key = directory / "cert.pem", directory / "key.pem"
        request = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
        names = "-addext subjectAltName=IP:127.0.0.1"
        subprocess.run(
            ["openssl", *request.split(), *names.split(), "-keyout", key, "-out", cert],
            check=True,
            capture_output=True,
        )
        return cls(cert, key)

    def trusted_by(self) -> ssl.SSLContext:
        """A client context that trusts this certificate only."""
        return ssl.create_default_context(cafile=str(self.cert))


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    login: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Recorder:
    received: list[Received] = field(default_factory=list)
    temporary_failures: int = 0
    refused_recipients: dict[str, str] = field(default_factory=dict)
    arrivals: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    token: str | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refused_recipients:
            return self.refused_recipients[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.temporary_failures > 0:
            self.temporary_failures -= 1
            return "451 4.3.0 Try again later"
        login = session.login_data
        received = Received(
            sender=str(envelope.mail_from),
            recipients=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            login=login.decode() if isinstance(login, bytes) else login,
        )
        self.received.append(received)
        self.arrivals.put_nowait(received)
        return "250 2.0.0 Stored"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        fields = base64.b64decode(args[1]).decode().split("\x01")
        user = fields[0].removeprefix("user=")
        bearer = fields[1].removeprefix("auth=Bearer ")
        if self.token is not None and bearer == self.token:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        return AuthResult(success=False, handled=False)


class SmtpPeer:
    def __init__(
        self,
        *,
        password: str | None = None,
        token: str | None = None,
        security: Literal["none", "starttls", "tls"] = "none",
        certificate: Certificate | None = None,
    ) -> None:
        self.recorder = Recorder(token=token)
        self.password = password
        self.security = security
        self.context: ssl.SSLContext | None = None
        if certificate is not None:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.load_cert_chain(certificate.cert, certificate.key)
        self.port = 0
        self._server: asyncio.Server | None = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and data.password.decode() == self.password:
            return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    def _protocol(self) -> SMTP:
        auth = self.password is not None or self.recorder.token is not None
        starttls = self.security == "starttls"
        return SMTP(
            self.recorder,
            hostname="peer.test",
            auth_require_tls=starttls,
            authenticator=self._authenticate if auth else None,
            tls_context=self.context if starttls else None,
            require_starttls=starttls,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            "127.0.0.1",
            self.port,
            ssl=self.context if self.security == "tls" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def received(self) -> list[Received]:
        return self.recorder.received

    async def wait_for(self, count: int) -> None:
        """Until ``count`` more messages have arrived (at most 10 s)."""
        async with asyncio.timeout(10):
            for _ in range(count):
                await self.recorder.arrivals.get()
