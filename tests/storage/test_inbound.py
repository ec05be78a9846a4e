from __future__ import annotations

import datetime as dt

import pytest

from storage import inbound
from storage.db import Database
from storage.models import InboundItem, InboundState

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def _store(
    db: Database, ref: str = "<a@x>", raw: bytes = b"Subject: x\r\n\r\nbody"
) -> inbound.Stored:
    with db.transaction() as session:
        return inbound.store(session, source="smtp", source_ref=ref, raw=raw, message_id=ref)


def test_same_source_reference_is_stored_once(db: Database) -> None:
    first = _store(db)
    again = _store(db, raw=b"different bytes, same Message-ID")
    other = _store(db, ref="<b@x>")
    assert (first.duplicate, again.duplicate, other.duplicate) == (False, True, False)
    assert again.id == first.id
    with db.transaction() as session:
        assert session.get_one(InboundItem, first.id).raw == b"Subject: x\r\n\r\nbody"


def test_claim_leases_items_in_arrival_order(db: Database) -> None:
    ids = [_store(db, ref=f"<{i}@x>").id for i in range(3)]
    with db.transaction() as session:
        claimed = [i.id for i in inbound.claim(session, now=T0, limit=2)]
    assert claimed == ids[:2]
    with db.transaction() as session:
        assert [i.id for i in inbound.claim(session, now=T0, limit=5)] == ids[2:]
        assert inbound.claim(session, now=T0, limit=5) == []
    # A worker that died holds its lease until it runs out; then the item is claimed again.
    with db.transaction() as session:
        again = inbound.claim(session, now=T0 + inbound.DEFAULT_LEASE, limit=5)
        assert [(i.id, i.attempts) for i in again] == [(ids[0], 2), (ids[1], 2), (ids[2], 2)]


def test_failures_back_off_then_quarantine(db: Database) -> None:
    item_id = _store(db).id
    now = T0
    states = []
    for _ in range(3):
        with db.transaction() as session:
            (item,) = inbound.claim(session, now=now, limit=1)
        with db.transaction() as session:
            states.append(inbound.failed(session, item.id, error="boom", max_attempts=3, now=now))
            due = session.get_one(InboundItem, item_id).next_attempt_at
        if due is not None:
            with db.transaction() as session:
                assert inbound.claim(session, now=due - dt.timedelta(seconds=1)) == []
            now = due
    assert states == [InboundState.FAILED, InboundState.FAILED, InboundState.QUARANTINED]
    with db.transaction() as session:
        assert inbound.claim(session, now=now + dt.timedelta(days=1)) == []
        assert inbound.retry_quarantined(session) == 1
    with db.transaction() as session:
        (item,) = inbound.claim(session, now=now)
        assert (item.id, item.attempts, item.error) == (item_id, 1, "boom")


def test_done_and_ignored_items_are_not_claimed_or_retried_when_done(db: Database) -> None:
    a, b = _store(db, "<a@x>").id, _store(db, "<b@x>").id
    with db.transaction() as session:
        first, second = inbound.claim(session, now=T0, limit=2)
        inbound.done(session, first, ticket_id=None)
        inbound.ignored(session, second, reason="auto-reply (Auto-Submitted: auto-replied)")
    with db.transaction() as session:
        assert inbound.claim(session, now=T0 + dt.timedelta(days=1)) == []
        with pytest.raises(inbound.InboundError, match=f"inbound item {a} is done"):
            inbound.retry(session, a)
        assert inbound.retry(session, b).state is InboundState.PENDING


def test_workers_claim_only_their_channels(db: Database) -> None:
    with db.transaction() as session:
        for source in ("smtp", "imap:support", "imapx", "telephony:generic"):
            inbound.store(session, source=source, source_ref="1", raw=b"x")
    with db.transaction() as session:
        mail = inbound.claim(session, now=T0, limit=10, channels=("smtp", "imap"))
        assert sorted(i.source for i in mail) == ["imap:support", "smtp"]
        calls = inbound.claim(session, now=T0, limit=10, sources=["telephony:generic"])
        assert [i.source for i in calls] == ["telephony:generic"]
