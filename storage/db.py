"""Engines and transactions for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, Executable, Row, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

SQLITE_BUSY_TIMEOUT_MS = 30_000


class StorageError(RuntimeError):
    """The database cannot be used (unreachable, locked, not migrated)."""


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite: its implicit deferred BEGIN upgrades
        # a read lock to a write lock mid-transaction, which SQLite answers with an
        # immediate SQLITE_BUSY instead of waiting (see the "begin" hook below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit that the SMTP listener answers 250 for must survive power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # One writer at a time, decided up front, so concurrent writers queue on the
        # busy timeout rather than fail.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(
    url: str | URL, *, pool_size: int = 5, pre_ping: bool = True, autocommit: bool = False
) -> Engine:
    """An engine for ``url``: SQLite (WAL, one writer) or PostgreSQL (psycopg 3).

    ``pre_ping`` checks each connection before it is handed out; ``autocommit`` (PostgreSQL)
    commits every statement on its own, without BEGIN and COMMIT round trips."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # AUTOCOMMIT as the connections' own level, set once when each is made: as an
        # execution option it would be set and reset at every checkout.
        options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
        return create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=pre_ping,
            **options,
        )
    raise StorageError(f"unsupported database {parsed.get_backend_name()!r}")


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` is the database's own (locked past its timeout, its disk full or
    failing, the server gone or refusing connections, no connection free in the pool in
    time), as opposed to one that what was being written may have caused (a constraint, a
    value the database refuses)."""
    unreachable = sqlite3.OperationalError | OperationalError | InterfaceError | PoolTimeout
    # PostgreSQL's own state, whatever the driver's class for it: a connection failure
    # (08), too few resources (53), the server stopping (57), a read-only standby (25006,
    # after a fail-over).
    sqlstate = str(getattr(getattr(error, "orig", None), "sqlstate", None) or "")
    if sqlstate[:2] in ("08", "53", "57") or sqlstate == "25006":
        return True
    return isinstance(error, unreachable) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


def _asynchronous_commit(dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    dbapi_connection.commit()


def _first_row(
    engine: Engine, statement: Executable, parameters: Mapping[str, Any]
) -> Row[Any] | None:
    with engine.connect() as connection:
        return connection.execute(statement, parameters).first()


class Database:
    """An engine and its session factory; the one way the daemon talks to storage."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Code that is handed only a session finds its database in ``session.info``.
        self.sessions = sessionmaker(engine, expire_on_commit=False, info={"database": self})
        self._side: Engine | None = None
        self._side_lock = threading.Lock()
        # By thread: the connection each keeps for sqlite_transaction().
        self._held: dict[int, PoolProxiedConnection] = {}
        # SQLite has one writer. Threads of this process take turns on a lock of ours, so
        # the next one starts the moment a commit ends; on SQLite's own lock alone they
        # would poll it with sleeps of 1 to 100 ms (its busy handler), and under load
        # spend most of their time asleep. Other processes still meet the busy timeout.
        self._writer: AbstractContextManager[object] = (
            threading.RLock() if engine.dialect.name == "sqlite" else nullcontext()
        )

    @classmethod
    def from_url(cls, url: str | URL, *, pool_size: int = 5) -> Database:
        return cls(create_db_engine(url, pool_size=pool_size))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        with self._writer, self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def connection_transaction(self) -> Iterator[Connection]:
        """A plain connection in a transaction, committed on success and rolled back on any
        error; on SQLite it takes its turn at the one writer like :meth:`transaction`.

        For the group commits of the sources, whose few statements per batch cost less
        than setting up and closing an ORM session around them."""
        with self._writer, self.engine.begin() as connection:
            yield connection

    @contextmanager
    def sqlite_transaction(self) -> Iterator[sqlite3.Connection]:
        """SQLite only: the driver's own connection in a write transaction (BEGIN
        IMMEDIATE), committed on success and rolled back on any error, in its turn at the
        one writer like :meth:`transaction`.

        For the webhooks' group commit, whose few statements per batch cost SQLite less
        than SQLAlchemy's connection, transaction and result handling around them did."""
        if self.dialect != "sqlite":
            raise StorageError(f"a driver transaction is SQLite's, not {self.dialect}'s")
        with self._writer:
            pooled = self._held_connection()
            driver = cast(sqlite3.Connection, pooled.driver_connection)
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
                driver.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a full disk) leaves the transaction open as well. A
                # connection that cannot be rolled back is given up: the next transaction
                # gets a fresh one.
                try:
                    if driver.in_transaction:
                        driver.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if driver.in_transaction:
                    self._release(threading.get_ident(), invalidate=True)
                raise

    def _held_connection(self) -> PoolProxiedConnection:
        """The connection this thread keeps for :meth:`sqlite_transaction`, taken from the
        pool at its first use and held until the thread ends or :meth:`dispose`: a checkout
        from the pool and its return (with a reset) for every batch were most of the
        batch's own work. The connections of threads that have ended (a storage thread
        pool that was shut down) go back to the pool when the next is taken."""
        pooled = self._held.get(threading.get_ident())
        if pooled is None:
            alive = {thread.ident for thread in threading.enumerate()}
            for ident in [ident for ident in self._held if ident not in alive]:
                self._release(ident)
            pooled = self.engine.raw_connection()
            with self._side_lock:
                self._held[threading.get_ident()] = pooled
        return pooled

    def release_held(self) -> None:
        """Give the connection this thread keeps for :meth:`sqlite_transaction` back to the
        pool (a storage thread that is about to end)."""
        with self._writer:
            self._release(threading.get_ident())

    def _release(self, ident: int, *, invalidate: bool = False) -> None:
        with self._side_lock:
            pooled = self._held.pop(ident, None)
        if pooled is None:
            return
        if invalidate:
            pooled.invalidate()
        pooled.close()

    def side_statement(
        self, statement: Executable, parameters: Mapping[str, Any]
    ) -> Row[Any] | None:
        """Run one statement in a transaction of its own, committed at once; its first row.

        For a shared counter (registration numbers, the round-robin turn) on PostgreSQL:
        taken in the caller's long transaction, its row lock would be held until that
        commits, and every other worker and daemon would queue behind it. Its connections
        come from a small pool of their own, so they never wait for the main pool, which
        long transactions hold. What it writes stays when the caller rolls back.

        One statement, in autocommit: one round trip, where a transaction around it would
        take three, and its row locks last only as long as the statement. It commits
        without waiting for its WAL to reach the disk (``synchronous_commit = off``): what
        it wrote becomes durable with the next synchronous commit of any transaction,
        which flushes the WAL up to that point. So it is for what the caller's own commit
        depends on: a number that a crash loses was never given to a committed ticket.

        The pool's connections are not pinged before each use (a round trip of its own);
        one that the server has dropped meanwhile (a restart, an idle timeout) fails the
        statement, and it runs once more on a fresh connection. Running it twice is safe
        for a shared counter: at worst a number is skipped or a turn used up, as after a
        rollback."""
        with self._side_lock:
            if self._side is None:
                self._side = create_db_engine(
                    self.engine.url, pool_size=2, pre_ping=False, autocommit=True
                )
                if self._side.dialect.name == "postgresql":
                    event.listen(self._side, "connect", _asynchronous_commit)
            side = self._side
        try:
            return _first_row(side, statement, parameters)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        return _first_row(side, statement, parameters)

    def dispose(self) -> None:
        # Not while a transaction is being written on a held connection.
        with self._writer:
            for ident in list(self._held):
                self._release(ident)
        self.engine.dispose()
        if self._side is not None:
            self._side.dispose()
