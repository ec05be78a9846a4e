"""Transactions of the database layer: sessions and plain connections."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from storage import inbound
from storage.db import Database, StorageError, create_db_engine, unavailable
from storage.migrate import upgrade
from storage.models import InboundItem


def _count(db: Database) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(InboundItem)) or 0)


def test_a_connection_transaction_commits_what_it_wrote(db: Database) -> None:
    with db.connection_transaction() as connection:
        inbound.store(connection, source="smtp", source_ref="<a@x>", raw=b"kept")
    assert _count(db) == 1


def test_a_connection_transaction_that_fails_writes_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), db.connection_transaction() as connection:
        inbound.store(connection, source="smtp", source_ref="<a@x>", raw=b"lost")
        raise RuntimeError("before the commit")
    assert _count(db) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_connection_transaction_waits_its_turn_at_the_sqlite_writer(db: Database) -> None:
    # A session transaction that has not written yet holds no SQLite lock, only the
    # process's writer turn: what waits for it here is that turn alone.
    entered = threading.Event()

    def write() -> None:
        with db.connection_transaction() as connection:
            entered.set()
            inbound.store(connection, source="smtp", source_ref="<b@x>", raw=b"second")

    with db.transaction():
        other = threading.Thread(target=write)
        other.start()
        assert not entered.wait(timeout=0.2)
    other.join()
    assert entered.is_set()
    assert _count(db) == 1


def _item(ref: str) -> inbound.Received:
    return inbound.Received("telephony:generic", ref, ref.encode())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_sqlite_driver_transaction_commits_or_writes_nothing_and_waits_its_turn(
    db: Database,
) -> None:
    with db.sqlite_transaction() as driver:
        inbound.store_received(driver, [_item("kept")])
    with pytest.raises(RuntimeError), db.sqlite_transaction() as driver:
        inbound.store_received(driver, [_item("lost")])
        raise RuntimeError("before the commit")
    # The connection is this thread's own, kept: what failed left no transaction open.
    with db.sqlite_transaction() as again:
        assert again is driver
        inbound.store_received(driver, [_item("next")])
    assert _count(db) == 2

    entered = threading.Event()

    def write() -> None:
        with db.sqlite_transaction() as driver:
            entered.set()
            inbound.store_received(driver, [_item("later")])

    with db.transaction():
        other = threading.Thread(target=write)
        other.start()
        assert not entered.wait(timeout=0.2)
    other.join()
    assert _count(db) == 3


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failed_sqlite_commit_is_rolled_back_and_the_connection_still_serves(
    db: Database,
) -> None:
    with pytest.raises(sqlite3.IntegrityError), db.sqlite_transaction() as driver:
        inbound.store_received(driver, [_item("kept back")])
        # A foreign key checked at the commit fails it.
        driver.execute("PRAGMA defer_foreign_keys = ON")
        driver.execute("INSERT INTO inbound_raw (inbound_id, raw) VALUES (999999, x'00')")
    assert not driver.in_transaction
    with db.sqlite_transaction() as driver:
        inbound.store_received(driver, [_item("kept")])
    assert _count(db) == 1


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_sqlite_driver_transaction_is_refused_on_postgresql(db: Database) -> None:
    with pytest.raises(StorageError, match="SQLite's"), db.sqlite_transaction():
        pass


def test_the_connection_a_storage_thread_kept_goes_back_to_the_pool_when_it_ends(
    tmp_path: Path,
) -> None:
    # A pool of one connection (and one overflow). Each thread ends only once the next
    # has written, so that none takes the ident of one that ended (and its connection):
    # were an ended thread's connection kept, the third thread would find none.
    db = Database(create_db_engine(f"sqlite:///{tmp_path / 'held.sqlite3'}", pool_size=1))
    upgrade(db.engine)
    wrote: list[str] = []

    def write(ref: str, written: threading.Event, end: threading.Event) -> None:
        with db.sqlite_transaction() as driver:
            inbound.store_received(driver, [_item(ref)])
        wrote.append(ref)
        written.set()
        end.wait(timeout=60)

    try:
        previous: tuple[threading.Thread, threading.Event] | None = None
        for n in range(4):
            written, end = threading.Event(), threading.Event()
            thread = threading.Thread(target=write, args=(f"t{n}", written, end))
            thread.start()
            assert written.wait(timeout=60)
            if previous is not None:
                previous[1].set()
                previous[0].join()
            previous = (thread, end)
        assert previous is not None
        previous[1].set()
        previous[0].join()
        assert wrote == ["t0", "t1", "t2", "t3"]
        # The last gives its connection back itself when done with it (as the HTTP app's
        # storage thread does when the app stops), and the pool has both again.
        def write_and_release() -> None:
            done = threading.Event()
            done.set()
            write("t4", done, done)
            db.release_held()

        last = threading.Thread(target=write_and_release)
        last.start()
        last.join()
        assert _count(db) == 5
    finally:
        db.dispose()


def test_errors_of_the_database_itself_are_told_from_errors_of_what_was_written(
    db: Database,
) -> None:
    assert unavailable(sqlite3.OperationalError("database is locked"))
    assert not unavailable(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not unavailable(ValueError("not a database error"))
    with pytest.raises(DBAPIError) as refused, db.transaction() as session:
        session.execute(text("INSERT INTO inbound (id) VALUES (NULL)"))
    assert not unavailable(refused.value)
    away = Database(create_db_engine("postgresql://nobody@127.0.0.1:9/none", pre_ping=False))
    with pytest.raises(DBAPIError) as gone, away.transaction() as session:
        session.execute(text("SELECT 1"))
    assert unavailable(gone.value)
    if db.dialect == "postgresql":
        # A standby after a fail-over: read only (psycopg calls it an InternalError).
        with pytest.raises(DBAPIError) as read_only, db.transaction() as session:
            session.execute(text("SET TRANSACTION READ ONLY"))
            session.execute(text("INSERT INTO inbound (id) VALUES (NULL)"))
        assert unavailable(read_only.value)
    # Every connection of the pool taken past its timeout: no item's fault either.
    crowded = create_engine(
        "sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.05
    )
    with crowded.connect(), pytest.raises(PoolTimeout) as waited:
        crowded.connect()
    crowded.dispose()
    assert unavailable(waited.value)
