"""How far each IMAP mailbox has been read, and which Message-IDs it already delivered."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import InboundItem, MailboxCheckpoint, utcnow


@dataclass(frozen=True)
class Checkpoint:
    uidvalidity: int
    last_uid: int


def checkpoint(session: Session, mailbox: str) -> Checkpoint | None:
    row = session.get(MailboxCheckpoint, mailbox)
    return None if row is None else Checkpoint(row.uidvalidity, row.last_uid)


def advance(session: Session, mailbox: str, *, uidvalidity: int, last_uid: int) -> None:
    """Record that every UID up to ``last_uid`` under ``uidvalidity`` is stored.

    Called in the transaction that stores those messages; the row is locked so that two
    writers of one mailbox cannot interleave (the advisory lock should already prevent it).
    """
    row = session.get(MailboxCheckpoint, mailbox, with_for_update=True)
    if row is None:
        session.add(
            MailboxCheckpoint(
                mailbox=mailbox, uidvalidity=uidvalidity, last_uid=last_uid, updated_at=utcnow()
            )
        )
    else:
        row.uidvalidity = uidvalidity
        row.last_uid = last_uid
        row.updated_at = utcnow()
    session.flush()


def has_message_id(session: Session, source: str, message_id: str) -> bool:
    found = session.scalars(
        select(InboundItem.id)
        .where(InboundItem.source == source, InboundItem.message_id == message_id)
        .limit(1)
    ).first()
    return found is not None
