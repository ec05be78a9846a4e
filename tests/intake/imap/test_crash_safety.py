"""kill -9 while mail arrives by SMTP and IMAP: after a restart, everything acknowledged
(SMTP 250, and all mail waiting in the IMAP folder) is registered exactly once."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select

from storage.db import Database
from storage.models import Direction, InboundItem, InboundState, Message, Ticket
from tests.intake.mailmaker import mail_bytes
from tests.peers.dovecot import Dovecot, ImapUser, free_port

INTAKE = str(Path(sys.executable).with_name("intake"))
PER_CHANNEL = 250
KILL_AFTER = 80
FINISHED = (InboundState.DONE, InboundState.IGNORED, InboundState.QUARANTINED)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition: object, what: str, timeout: float) -> None:
    # Another process's state: there is nothing to await but the state itself.
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextmanager
def daemon(config: Path, env: dict[str, str], smtp_port: int) -> Iterator[subprocess.Popen[bytes]]:
    log = (config.parent / "daemon.log").open("ab")
    process = subprocess.Popen(
        [INTAKE, "--config", str(config), "run"], env=env, stdout=log, stderr=log
    )
    try:
        _wait(lambda: _port_open(smtp_port) or process.poll() is not None, "SMTP", 30)
        assert process.poll() is None, (config.parent / "daemon.log").read_text()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


def send(port: int, raw: bytes) -> bool:
    """True when the listener answered 250: the mail is the daemon's from then on."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("anna@acme.example", ["support@omnivox.example"], raw)
    except (OSError, smtplib.SMTPException):
        return False
    return True


def test_kill_9_mid_arrival_registers_every_acknowledged_message_exactly_once(
    tmp_path: Path, dovecot: Dovecot, imap_user: ImapUser
) -> None:
    smtp_port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
shutdown_timeout = 5

[smtp]
port = {smtp_port}

[http]
enabled = false

[pipeline]
# What the killed daemon had claimed is taken again this soon after the restart.
lease = 2

[[imap]]
name = "support"
host = "127.0.0.1"
port = {dovecot.port}
security = "none"
username = "{imap_user.name}"
password_env = "IMAP_PASSWORD"
processed_folder = "Registered"
"""
    )
    env = {**os.environ, "IMAP_PASSWORD": imap_user.password}
    by_smtp = [mail_bytes(subject=f"SMTP request {n}") for n in range(PER_CHANNEL)]
    by_imap = [mail_bytes(subject=f"IMAP request {n}") for n in range(PER_CHANNEL)]
    unacknowledged: list[bytes] = []
    enough_sent = threading.Event()

    def feed_smtp() -> None:
        for number, raw in enumerate(by_smtp):
            if not send(smtp_port, raw):
                unacknowledged.append(raw)
            if number == KILL_AFTER:
                enough_sent.set()

    def feed_imap() -> None:
        for raw in by_imap:
            dovecot.append(imap_user, [raw])

    with daemon(config, env, smtp_port) as first:
        feeders = [threading.Thread(target=feed) for feed in (feed_smtp, feed_imap)]
        for feeder in feeders:
            feeder.start()
        enough_sent.wait(timeout=60)
        first.kill()
        first.wait()
        for feeder in feeders:
            feeder.join()
    assert unacknowledged, "the daemon was killed after all mail had arrived"

    db = Database.from_url(f"sqlite:///{tmp_path / 'state' / 'intake.sqlite3'}")
    try:
        with daemon(config, env, smtp_port):
            # What a sending MTA does with mail that got no 250: send it again.
            assert all(send(smtp_port, raw) for raw in unacknowledged)

            def all_registered() -> bool:
                with db.transaction() as session:
                    finished = session.scalar(
                        select(func.count()).where(InboundItem.state.in_(FINISHED))
                    )
                return finished == 2 * PER_CHANNEL

            _wait(all_registered, "every message to be registered", 90)
        with db.transaction() as session:
            tickets_per_message = dict(
                session.execute(
                    select(Message.message_id, func.count(func.distinct(Message.ticket_id)))
                    .where(Message.direction == Direction.IN)
                    .group_by(Message.message_id)
                ).all()
            )
            tickets = session.scalar(select(func.count()).select_from(Ticket))
            states = set(session.scalars(select(InboundItem.state)))
    finally:
        db.dispose()
    sent_ids = {
        raw.split(b"Message-ID: ", 1)[1].split(b"\n", 1)[0].strip().decode()
        for raw in by_smtp + by_imap
    }
    assert states == {InboundState.DONE}
    assert tickets == 2 * PER_CHANNEL
    assert tickets_per_message == dict.fromkeys(sent_ids, 1)
    assert dovecot.messages(imap_user) == {}
    assert len(dovecot.messages(imap_user, "Registered")) == PER_CHANNEL
