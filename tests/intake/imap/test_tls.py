"""IMAPS and STARTTLS, with the server's certificate checked against the trusted CAs."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from intake.sources.imap_sync import connect
from storage.db import Database
from tests.intake.imap.conftest import (
    Deliveries,
    MailboxFactory,
    make_message,
    quick_source,
    running,
    start_dovecot,
)
from tests.peers.dovecot import Dovecot


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_dovecot(certificate: tuple[Path, Path]) -> Iterator[Dovecot]:
    server = start_dovecot(tls=certificate)
    yield server
    server.destroy()


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_mail_is_fetched_over_a_verified_tls_connection(
    security: str,
    db: Database,
    tls_dovecot: Dovecot,
    certificate: tuple[Path, Path],
    mailbox_for: MailboxFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The test's own CA stands for the system's trusted ones.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    user = tls_dovecot.add_user()
    port = tls_dovecot.tls_port if security == "tls" else tls_dovecot.port
    mailbox = mailbox_for(tls_dovecot, user, security=security, port=port)
    tls_dovecot.append(user, [make_message()])
    deliveries = Deliveries()
    async with running(quick_source(db, mailbox, deliveries)):
        await deliveries.wait_for(1)
    assert len(deliveries.items) == 1


def test_a_certificate_no_trusted_ca_signed_is_refused(
    tls_dovecot: Dovecot, mailbox_for: MailboxFactory
) -> None:
    user = tls_dovecot.add_user()
    mailbox = mailbox_for(tls_dovecot, user, security="tls", port=tls_dovecot.tls_port)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(mailbox, timeout=10)
