"""One connected IMAP session's work on one mailbox: store what is new, then acknowledge it.

Blocking code (IMAPClient and the synchronous database session); :mod:`intake.sources.imap`
runs it in the mailbox's own thread. The order of every step is the crash-safety argument:

1. new UIDs are those above the checkpoint under the folder's current UIDVALIDITY;
2. each is fetched with ``BODY.PEEK[]``, which leaves it unseen, and its length checked
   against ``RFC822.SIZE``; a short or missing body ends the batch there, so it and the
   UIDs after it are fetched again later, never skipped;
3. the batch's inbound items and the advanced checkpoint commit in one transaction; a
   Message-ID this mailbox already stored is not stored again (a UIDVALIDITY change
   re-lists old mail under new UIDs);
4. only then is the batch flagged ``\\Seen`` and moved to ``processed_folder``.

A crash between 3 and 4 leaves stored mail unacknowledged at or below the checkpoint;
:meth:`MailboxSync.acknowledge_stored` finishes that at the next connect.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from imapclient import DELETED, SEEN, IMAPClient

from intake.config import ImapMailbox, SecretError
from parsers.headers import parse_msg_ids, split_header_block
from storage.checkpoints import advance, checkpoint, has_message_id
from storage.db import Database
from storage.inbound import store

log = logging.getLogger(__name__)

BATCH_MESSAGES = 100
BATCH_BYTES = 16 * 1024 * 1024
SIZE_QUERY_UIDS = 1000


def source_name(mailbox: str) -> str:
    """The inbound store's ``source`` of a mailbox's mail."""
    return f"imap:{mailbox}"


@dataclass(frozen=True)
class Delivered:
    """A message of the mailbox that is now durably stored and acknowledged."""

    uidvalidity: int
    uid: int
    message_id: str | None
    inbound_id: int | None
    """None when this mailbox had already stored the Message-ID (nothing new was written)."""


@dataclass(frozen=True)
class Pass:
    delivered: Sequence[Delivered]
    incomplete: bool
    """A message could not be fetched whole; it and the ones after it wait for a retry."""


def connect(mailbox: ImapMailbox, *, timeout: float) -> IMAPClient:
    """A logged-in session; the password or OAuth2 token is read now, so a rotated one is used."""
    context = ssl.create_default_context()
    client = IMAPClient(
        mailbox.host,
        port=mailbox.port,
        ssl=mailbox.security == "tls",
        ssl_context=context if mailbox.security == "tls" else None,
        timeout=timeout,
    )
    try:
        if mailbox.security == "starttls":
            client.starttls(context)
        if mailbox.auth == "xoauth2":
            client.oauth2_login(mailbox.username, _secret(mailbox, "token"))
        else:
            client.login(mailbox.username, _secret(mailbox, "password"))
    except BaseException:
        client.shutdown()
        raise
    return client


def _secret(mailbox: ImapMailbox, which: str) -> str:
    ref = mailbox.token if which == "token" else mailbox.password
    if ref is None:
        raise SecretError(f"no {which} configured")
    return ref.read()


def message_id_of(raw: bytes) -> str | None:
    headers, _, _ = split_header_block(raw, 0, len(raw))
    ids = parse_msg_ids(headers.raw("message-id"))
    return ids[0] if ids else None


class MailboxSync:
    """Reads one mailbox's folder over a connected client (see the module docstring)."""

    def __init__(
        self,
        client: IMAPClient,
        db: Database,
        mailbox: ImapMailbox,
        *,
        batch_messages: int = BATCH_MESSAGES,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.client = client
        self.db = db
        self.mailbox = mailbox
        self.source = source_name(mailbox.name)
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        self.uidvalidity = 0

    def select(self) -> None:
        status = self.client.select_folder(self.mailbox.folder)
        self.uidvalidity = int(status[b"UIDVALIDITY"])
        with self.db.transaction() as session:
            point = checkpoint(session, self.mailbox.name)
        if point is not None and point.uidvalidity != self.uidvalidity:
            log.warning(
                "%s: UIDVALIDITY of %s changed from %d to %d; re-reading the folder, "
                "mail already stored is recognised by its Message-ID",
                self.source,
                self.mailbox.folder,
                point.uidvalidity,
                self.uidvalidity,
            )
        processed = self.mailbox.processed_folder
        if processed and not self.client.folder_exists(processed):
            self.client.create_folder(processed)
            log.info("%s: created folder %s for registered mail", self.source, processed)

    def last_uid(self) -> int:
        """The checkpoint under the current UIDVALIDITY; 0 when the server renumbered."""
        with self.db.transaction() as session:
            point = checkpoint(session, self.mailbox.name)
        if point is None or point.uidvalidity != self.uidvalidity:
            return 0
        return point.last_uid

    def acknowledge_stored(self) -> int:
        """Acknowledge mail that was stored before a crash or a lost connection kept it
        from being flagged or moved; how many messages that was. (Everything at or below
        the checkpoint is stored, so a message a person marked unread there is flagged
        again: the folder's unread mail is the mail the desk has not taken yet.)"""
        last = self.last_uid()
        if last == 0:
            return 0
        criteria: list[str] = ["UID", f"1:{last}"]
        if not self.mailbox.processed_folder:
            criteria.append("UNSEEN")
        uids = [uid for uid in self.client.search(criteria) if uid <= last]
        for start in range(0, len(uids), self.batch_messages):
            self.acknowledge(uids[start : start + self.batch_messages])
        if uids:
            log.info(
                "%s: acknowledged %d message(s) stored before the last disconnect",
                self.source,
                len(uids),
            )
        return len(uids)

    def fetch_new(self, keep_going: Callable[[], bool] = lambda: True) -> Pass:
        """Store and acknowledge the mail above the checkpoint, a batch at a time;
        ``keep_going`` is asked between batches (a stopping daemon leaves the rest)."""
        last = self.last_uid()
        # "n:*" also matches the highest UID when that is below n, hence the filter.
        uids = sorted(uid for uid in self.client.search(["UID", f"{last + 1}:*"]) if uid > last)
        if not uids:
            return Pass((), incomplete=False)
        sizes: dict[int, int] = {}
        # In slices: thousands of UIDs in one command make a line longer than servers take.
        for start in range(0, len(uids), SIZE_QUERY_UIDS):
            fetched = self.client.fetch(uids[start : start + SIZE_QUERY_UIDS], ["RFC822.SIZE"])
            sizes.update((uid, int(data[b"RFC822.SIZE"])) for uid, data in fetched.items())
        delivered: list[Delivered] = []
        for batch in self._batches(uids, sizes):
            if not keep_going():
                break
            complete, incomplete = self._fetch_whole(batch, sizes)
            if complete:
                stored = self._store(complete)
                self.acknowledge([message.uid for message in stored])
                delivered.extend(stored)
            if incomplete:
                return Pass(delivered, incomplete=True)
        return Pass(delivered, incomplete=False)

    def acknowledge(self, uids: Sequence[int]) -> None:
        self.client.add_flags(uids, [SEEN])
        processed = self.mailbox.processed_folder
        if not processed:
            return
        if self.client.has_capability("MOVE"):
            self.client.move(uids, processed)
            return
        self.client.copy(uids, processed)
        self.client.add_flags(uids, [DELETED])
        if self.client.has_capability("UIDPLUS"):
            self.client.uid_expunge(uids)
        else:
            self.client.expunge()

    def _batches(self, uids: Sequence[int], sizes: dict[int, int]) -> Iterator[list[int]]:
        """Runs of UIDs small enough to hold in memory at once (at least one message each)."""
        batch: list[int] = []
        total = 0
        for uid in uids:
            size = sizes.get(uid, 0)
            if batch and (len(batch) >= self.batch_messages or total + size > self.batch_bytes):
                yield batch
                batch, total = [], 0
            batch.append(uid)
            total += size
        if batch:
            yield batch

    def _fetch_whole(
        self, batch: Sequence[int], sizes: dict[int, int]
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """The leading messages of ``batch`` fetched whole, and whether one fell short."""
        fetched = self.client.fetch(batch, ["BODY.PEEK[]"])
        complete: list[tuple[int, bytes]] = []
        for uid in batch:
            body = fetched.get(uid, {}).get(b"BODY[]")
            expected = sizes.get(uid)
            if not isinstance(body, bytes) or expected is None or len(body) != expected:
                got = len(body) if isinstance(body, bytes) else 0
                log.warning(
                    "%s UID %d:%d: fetched %d of %s bytes; it will be fetched again",
                    self.source,
                    self.uidvalidity,
                    uid,
                    got,
                    expected if expected is not None else "unknown",
                )
                return complete, True
            complete.append((uid, body))
        return complete, False

    def _store(self, messages: Sequence[tuple[int, bytes]]) -> list[Delivered]:
        delivered: list[Delivered] = []
        with self.db.transaction() as session:
            for uid, raw in messages:
                message_id = message_id_of(raw)
                if message_id is not None and has_message_id(session, self.source, message_id):
                    delivered.append(Delivered(self.uidvalidity, uid, message_id, None))
                    continue
                stored = store(
                    session,
                    source=self.source,
                    source_ref=f"{self.uidvalidity}:{uid}",
                    raw=raw,
                    message_id=message_id,
                )
                delivered.append(Delivered(self.uidvalidity, uid, message_id, stored.id))
            advance(
                session, self.mailbox.name, uidvalidity=self.uidvalidity, last_uid=messages[-1][0]
            )
        for message in delivered:
            if message.inbound_id is None:
                log.info(
                    "%s UID %d:%d %s: already stored by this mailbox; acknowledged only",
                    self.source,
                    message.uidvalidity,
                    message.uid,
                    message.message_id,
                )
            else:
                log.info(
                    "%s UID %d:%d %s: stored as inbound item %d",
                    self.source,
                    message.uidvalidity,
                    message.uid,
                    message.message_id or "(no Message-ID)",
                    message.inbound_id,
                )
        return delivered
