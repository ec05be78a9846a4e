"""The IMAP source: one service per ``[[imap]]`` mailbox, feeding the inbound store.

Design. IMAPClient and the database session are blocking, and an IMAP session is a
long conversation (IDLE can last minutes), so each mailbox gets a thread of its own for
its whole life instead of borrowing the event loop's shared executor. The thread does
everything: elects itself, connects, stores, acknowledges. It meets the loop at exactly
three points, all thread-safe: a ``threading.Event`` set when the daemon is stopping,
``loop.call_soon_threadsafe`` to hand each acknowledged batch to ``on_delivered`` (the
pipeline's wake-up, and the event tests await), and a future resolved when the thread ends.

Every wait in the thread is at most about a second (``idle_check`` timeouts, waits on the
stop event), so ``stopping`` is honoured within that. IDLE is renewed well inside the
29 minutes of RFC 2177; without IDLE, or with ``idle = false``, the folder is polled.

Any failure of the server, the network, the credentials or the database ends the session
and starts a new one after a capped exponential backoff; the outage is logged once as a
WARNING when it starts and once as INFO when it ends. What was stored is never lost
and never stored twice (see :mod:`intake.sources.imap_sync`).

On PostgreSQL only the daemon holding the mailbox's advisory lock reads it; the others
wait and take over when its database session ends. Correctness does not rest on the lock
(the inbound store is unique per UIDVALIDITY:UID), it saves the duplicate work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from imapclient import IMAPClient

from intake.config import ImapMailbox, Settings
from intake.sources.imap_sync import Delivered, MailboxSync, connect, source_name
from storage.db import Database
from storage.locks import LeaderLock

log = logging.getLogger(__name__)

RECONNECT_DELAY = 1.0
RECONNECT_MAX_DELAY = 300.0
IDLE_RENEW = 600.0  # RFC 2177: re-issue IDLE at least every 29 minutes
IDLE_CHECK = 1.0
LEADER_RETRY = 10.0
INCOMPLETE_RETRY = 30.0
SOCKET_TIMEOUT = 60.0

OnDelivered = Callable[[Sequence[Delivered]], None]


class SessionEnded(ConnectionError):
    """The server ended the session (BYE, or the connection closed)."""


class Outage:
    """Capped exponential backoff, with one log line when an outage starts and one when it ends."""

    def __init__(self, label: str, initial: float, cap: float) -> None:
        self.label = label
        self.initial = initial
        self.cap = cap
        self.delay = initial
        self.since: float | None = None
        self.failures = 0

    def failed(self, error: BaseException) -> float:
        """Record a failure; the seconds to wait before the next attempt."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "%s: cannot read the mailbox (%s: %s); retrying with backoff up to %g s",
                self.label,
                type(error).__name__,
                error,
                self.cap,
            )
        else:
            log.debug("%s: attempt %d failed: %s", self.label, self.failures, error)
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def recovered(self) -> None:
        if self.since is not None:
            log.info(
                "%s: reading the mailbox again after %.1f s and %d failed attempt(s)",
                self.label,
                time.monotonic() - self.since,
                self.failures,
            )
        self.since = None
        self.failures = 0
        self.delay = self.initial


class ImapSource:
    """Reads one mailbox into the inbound store (a :class:`intake.services.Service`)."""

    def __init__(
        self,
        db: Database,
        mailbox: ImapMailbox,
        *,
        on_delivered: OnDelivered | None = None,
        reconnect_delay: float = RECONNECT_DELAY,
        reconnect_max_delay: float = RECONNECT_MAX_DELAY,
        idle_renew: float = IDLE_RENEW,
        leader_retry: float = LEADER_RETRY,
        incomplete_retry: float = INCOMPLETE_RETRY,
        socket_timeout: float = SOCKET_TIMEOUT,
    ) -> None:
        self.db = db
        self.mailbox = mailbox
        self.on_delivered = on_delivered
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.idle_renew = idle_renew
        self.leader_retry = leader_retry
        self.incomplete_retry = incomplete_retry
        self.socket_timeout = socket_timeout
        self.label = source_name(mailbox.name)
        self.name = f"imap-{mailbox.name}"
        self.description = (
            f"fetches mail from {mailbox.username} on {mailbox.host}:{mailbox.port}"
            f" ({mailbox.folder})"
        )

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        halt = threading.Event()
        finished: asyncio.Future[None] = loop.create_future()

        def deliver(batch: Sequence[Delivered]) -> None:
            if self.on_delivered is not None:
                loop.call_soon_threadsafe(self.on_delivered, batch)

        def settle(error: BaseException | None) -> None:
            if finished.done():
                return
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

        def main() -> None:
            error: BaseException | None = None
            try:
                self._lead(halt, deliver)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=main, name=self.name, daemon=True).start()
        stop_waiter = asyncio.ensure_future(stopping.wait())
        either: set[asyncio.Future[Any]] = {stop_waiter, finished}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halt.set()
            stop_waiter.cancel()
        await finished

    def _lead(self, halt: threading.Event, deliver: Callable[[Sequence[Delivered]], None]) -> None:
        """Wait for the mailbox's lock, then keep a session open until stopping."""
        lock = LeaderLock(self.db, self.label)
        outage = Outage(self.label, self.reconnect_delay, self.reconnect_max_delay)
        announced_waiting = False
        try:
            while not halt.is_set():
                try:
                    if not lock.try_acquire():
                        if not announced_waiting:
                            log.info(
                                "%s: another daemon reads this mailbox; standing by", self.label
                            )
                            announced_waiting = True
                        halt.wait(self.leader_retry)
                        continue
                    announced_waiting = False
                    self._session(halt, lock, outage, deliver)
                except Exception as error:
                    halt.wait(outage.failed(error))
        finally:
            lock.release()

    def _session(
        self,
        halt: threading.Event,
        lock: LeaderLock,
        outage: Outage,
        deliver: Callable[[Sequence[Delivered]], None],
    ) -> None:
        client = connect(self.mailbox, timeout=self.socket_timeout)
        try:
            sync = MailboxSync(client, self.db, self.mailbox)
            sync.select()
            idle = self.mailbox.idle and client.has_capability("IDLE")
            log.info(
                "%s: reading %s (UIDVALIDITY %d) by %s",
                self.label,
                self.mailbox.folder,
                sync.uidvalidity,
                "IDLE" if idle else f"polling every {self.mailbox.poll_interval:g} s",
            )
            sync.acknowledge_stored()
            repassing = False
            while not halt.is_set():
                _forget_announcements(client)
                result = sync.fetch_new(keep_going=lambda: not halt.is_set())
                # Over only now: a session that connects but cannot store (the database is
                # down) is the same outage, not a new one at every reconnect.
                outage.recovered()
                if result.delivered:
                    deliver(result.delivered)
                if not lock.still_held():
                    log.warning("%s: lost the mailbox's lock; standing by", self.label)
                    return
                # A pass again at once when mail was announced during this one; but not
                # twice in a row for nothing, should a server repeat unchanged counts.
                if (
                    _mail_announced(client)
                    and not result.incomplete
                    and (result.delivered or not repassing)
                ):
                    repassing = True
                    continue
                repassing = False
                if result.incomplete:
                    wait = self.incomplete_retry
                else:
                    wait = self.idle_renew if idle else self.mailbox.poll_interval
                if idle and not result.incomplete:
                    self._idle(client, halt, wait)
                elif halt.wait(wait):
                    break
            with contextlib.suppress(Exception):
                client.logout()
        finally:
            with contextlib.suppress(Exception):
                client.shutdown()

    def _idle(self, client: IMAPClient, halt: threading.Event, seconds: float) -> None:
        """IDLE until new mail, ``seconds``, or stopping; SessionEnded when the server ends it."""
        client.idle()
        deadline = time.monotonic() + seconds
        while not halt.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            responses = client.idle_check(timeout=IDLE_CHECK)
            for response in responses:
                # BYE ends the session; an untagged NO (Dovecot's answer when the selected
                # folder was deleted under it) leaves it useless: start afresh.
                if response and response[0] in (b"BYE", b"NO", b"BAD"):
                    raise SessionEnded(_describe(response))
            if any(_announces_mail(response) for response in responses):
                break
            # idle_check returns nothing, at once, when the socket is readable but at its
            # end: the server closed the connection.
            if not responses and time.monotonic() - started < IDLE_CHECK / 2:
                raise SessionEnded("the server closed the connection")
        client.idle_done()


def _forget_announcements(client: IMAPClient) -> None:
    client._imap.untagged_responses.pop("EXISTS", None)


def _mail_announced(client: IMAPClient) -> bool:
    """Whether the server announced new mail while the last pass was running.

    It announces a message once, in the response to whatever command is running when it
    arrives; imaplib keeps such announcements aside, where IDLE would never see them. Mail
    that arrived after the pass's SEARCH would then wait for the next IDLE renewal.
    """
    return "EXISTS" in client._imap.untagged_responses


def _describe(response: tuple[object, ...]) -> str:
    words = (w.decode(errors="replace") if isinstance(w, bytes) else str(w) for w in response)
    return "the server said: " + " ".join(words)


def _announces_mail(response: tuple[object, ...]) -> bool:
    return len(response) > 1 and response[1] in (b"EXISTS", b"RECENT")


def imap_services(
    settings: Settings, db: Database, arrived: asyncio.Event | None = None
) -> list[ImapSource]:
    """One source per enabled ``[[imap]]`` mailbox; each stored batch sets ``arrived``
    (the pipeline's wake-up), when given."""

    def wake(_: Sequence[Delivered]) -> None:
        if arrived is not None:
            arrived.set()

    return [
        ImapSource(db, mailbox, on_delivered=wake) for mailbox in settings.imap if mailbox.enabled
    ]
