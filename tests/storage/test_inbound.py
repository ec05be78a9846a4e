from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event, select

from storage import checkpoints, inbound
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
        assert (item.id, item.attempts) == (item_id, 1)
        assert session.get_one(InboundItem, item_id).error == "boom"


def test_done_and_ignored_items_are_not_claimed_or_retried_when_done(db: Database) -> None:
    a, b = _store(db, "<a@x>").id, _store(db, "<b@x>").id
    with db.transaction() as session:
        first, second = inbound.items(session, inbound.claim(session, now=T0, limit=2))
        inbound.done_batch(session, [(first.id, None)])
        inbound.ignored_batch(session, [(second.id, "auto-reply (Auto-Submitted: auto-replied)")])
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


def test_large_raw_bytes_are_kept_exactly(db: Database) -> None:
    # More than one piece of the in-place write, and not a whole number of them.
    raw = bytes(range(256)) * (2 * inbound.RAW_PIECE // 256) + b"tail\r\n"
    item_id = _store(db, raw=raw).id
    with db.transaction() as session:
        assert inbound.raw_of(session, [item_id]) == {item_id: raw}
        assert session.get_one(InboundItem, item_id).size == len(raw)
    with db.transaction() as session:
        (item,) = inbound.items(session, inbound.claim(session, now=T0))
        inbound.done_batch(session, [(item.id, None)])
        assert item.raw == raw
    with db.transaction() as session:
        assert session.get_one(InboundItem, item_id).raw == raw


def test_items_stored_through_a_plain_connection_are_kept_once_with_their_bytes(
    db: Database,
) -> None:
    large = bytes(range(256)) * (inbound.RAW_PIECE // 256) + b"more than one piece"
    with db.connection_transaction() as connection:
        first = inbound.store(connection, source="smtp", source_ref="<a@x>", raw=b"small")
        again = inbound.store(connection, source="smtp", source_ref="<a@x>", raw=b"again")
        big = inbound.store(connection, source="smtp", source_ref="<b@x>", raw=large)
        new = inbound.store_received(
            connection, [inbound.Received("telephony:generic", "c", b"call")], received_at=T0
        )
    assert (first.duplicate, again.duplicate, again.id, big.duplicate) == (
        False,
        True,
        first.id,
        False,
    )
    assert new == {("telephony:generic", "c")}
    with db.transaction() as session:
        raws = inbound.raw_of(session, [first.id, big.id])
    assert raws == {first.id: b"small", big.id: large}


def test_claim_takes_no_more_raw_bytes_than_asked_but_always_one_item(db: Database) -> None:
    ids = [_store(db, ref=f"<{n}@x>", raw=b"x" * 100).id for n in range(4)]
    with db.transaction() as session:
        assert [i.id for i in inbound.claim(session, now=T0, limit=4, max_bytes=250)] == ids[:2]
        assert [i.id for i in inbound.claim(session, now=T0, limit=4, max_bytes=50)] == ids[2:3]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_claim_takes_new_items_in_order_without_sorting_the_backlog_on_sqlite(
    db: Database,
) -> None:
    for n in range(20):
        _store(db, ref=f"<{n}@x>")
    queries: list[tuple[str, Any]] = []

    def seen(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        # The query for new items; items due again are few, whatever the backlog.
        if "WHERE inbound.state = ? AND inbound.next_attempt_at IS NULL" in statement:
            queries.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        with db.transaction() as session:
            inbound.claim(session, now=T0, limit=4, channels=("smtp", "imap"))
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    ((statement, parameters),) = queries
    with db.engine.connect() as connection:
        plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    details = [row[-1] for row in plan]
    assert details == [
        "SEARCH inbound USING INDEX ix_inbound_claim (state=? AND next_attempt_at=?)"
    ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_only_items_with_a_message_id_are_in_its_index_and_its_questions_use_it(
    db: Database,
) -> None:
    for n in range(2):
        _store(db, ref=f"<{n}@x>")
    with db.transaction() as session:
        calls = [inbound.Received("telephony:generic", f"call-{n}", b"{}") for n in range(3)]
        inbound.store_received(session, calls)
    with db.engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        (stat,) = connection.exec_driver_sql(
            "SELECT stat FROM sqlite_stat1 WHERE idx = 'ix_inbound_message_id'"
        ).one()
        # Its first figure is the index's entries: the two mails, none of the calls.
        assert int(stat.split()[0]) == 2
    # The questions as they are asked: both name Message-IDs (the registrar's, across
    # sources; an IMAP source's, for its mailbox).
    asked: list[tuple[str, Any]] = []

    def seen(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        asked.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        with db.transaction() as session:
            found = session.execute(
                inbound.UNFINISHED, {"message_ids": ["<0@x>", "<1@x>"], "besides": 0}
            ).all()
            assert checkpoints.has_message_id(session, "smtp", "<1@x>")
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert len(found) == 2
    questions = [(s, p) for s, p in asked if "message_id" in s.partition("FROM")[2]]
    assert len(questions) == 2
    with db.engine.connect() as connection:
        for statement, parameters in questions:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            assert any("INDEX ix_inbound_message_id" in row[-1] for row in plan), statement


def test_a_batch_of_call_events_is_stored_once_each_with_its_bytes(db: Database) -> None:
    def row(ref: str, raw: bytes) -> inbound.Received:
        return inbound.Received("telephony:generic", ref, raw)

    with db.transaction() as session:
        stored = inbound.store_received(session, [row("a", b"first"), row("b", b"second")])
        assert stored == {("telephony:generic", "a"), ("telephony:generic", "b")}
    with db.transaction() as session:
        batch = [row("b", b"again"), row("c", b"third"), row("c", b"dup")]
        new = inbound.store_received(session, batch, received_at=T0)
        assert new == {("telephony:generic", "c")}
    with db.transaction() as session:
        claimed = inbound.claim(session, limit=10, sources=["telephony:generic"])
        raws = inbound.raw_of(session, [item.id for item in claimed])
        items = session.scalars(select(InboundItem).order_by(InboundItem.id)).all()
    assert [raws[item.id] for item in claimed] == [b"first", b"second", b"third"]
    # Stored pending, each with its size (claimed since: one attempt).
    assert [(i.state, i.attempts, i.size) for i in items] == [
        (InboundState.PROCESSING, 1, 5),
        (InboundState.PROCESSING, 1, 6),
        (InboundState.PROCESSING, 1, 5),
    ]
    assert items[2].received_at == T0


def test_raw_bytes_selected_alone_are_each_items_own(db: Database) -> None:
    for n in range(3):
        _store(db, ref=f"<{n}@x>", raw=f"mail {n}".encode())
    with db.transaction() as session:
        raws = session.scalars(select(InboundItem.raw).order_by(InboundItem.id)).all()
    assert raws == [b"mail 0", b"mail 1", b"mail 2"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_batch_stored_through_the_sqlite_driver_reads_back_as_stored_through_sqlalchemy(
    db: Database,
) -> None:
    received = dt.datetime(2026, 11, 26, 4, 5, 6, 0, tzinfo=dt.UTC)
    large = bytes(range(256)) * (inbound.RAW_PIECE // 256) + b"more than one piece"

    def row(ref: str, raw: bytes) -> inbound.Received:
        return inbound.Received("telephony:generic", ref, raw)

    # More rows than one statement binds (SQLite's least variable limit), a repeated
    # reference, a raw request larger than a piece, and two that are each less than a
    # piece but more together.
    half = b"h" * (inbound.RAW_PIECE // 2 + 1)
    rows = [row(f"r{n}", f"raw {n}".encode()) for n in range(300)]
    rows += [row("r7", b"repeated"), row("big", large), row("h1", half), row("h2", half + b"2")]
    with db.connection_transaction() as connection:
        through_sqlalchemy = inbound.store(
            connection,
            source="telephony:generic",
            source_ref="orm",
            raw=b"orm",
            received_at=received,
        )
    with db.sqlite_transaction() as driver:
        new = inbound.store_received(driver, rows, received_at=received)
    with db.sqlite_transaction() as driver:
        again = inbound.store_received(
            driver, [row("r1", b"again"), row("fresh", b"fresh")], received_at=received
        )

    assert new == {("telephony:generic", f"r{n}") for n in range(300)} | {
        ("telephony:generic", ref) for ref in ("big", "h1", "h2")
    }
    assert again == {("telephony:generic", "fresh")}
    with db.transaction() as session:
        items = session.scalars(select(InboundItem).order_by(InboundItem.id)).all()
        raws = inbound.raw_of(session, [item.id for item in items])
        stored = session.execute(
            select(InboundItem.received_at, InboundItem.state, InboundItem.attempts)
        ).all()
    assert items[0].id == through_sqlalchemy.id
    by_ref = {item.source_ref: raws[item.id] for item in items}
    assert (by_ref["r7"], by_ref["big"], by_ref["fresh"]) == (b"raw 7", large, b"fresh")
    assert (by_ref["h1"], by_ref["h2"]) == (half, half + b"2")
    assert {item.source_ref: item.size for item in items}["big"] == len(large)
    assert len(items) == 305
    # The same stored form as SQLAlchemy's: equal values, so equal comparisons and order.
    assert set(stored) == {(received, InboundState.PENDING, 0)}
    with db.engine.connect() as connection:
        texts = connection.exec_driver_sql(
            "SELECT DISTINCT received_at, state FROM inbound"
        ).all()
    assert len(texts) == 1
