"""Leader election with PostgreSQL session-level advisory locks, and turns taken within a
transaction (:func:`take_turn`).

One daemon at a time does a job that must not run twice in parallel (polling one IMAP
mailbox). The lock lives as long as the database session that took it, so a daemon that
dies, or loses its connection, gives it up and another one takes over. SQLite is the
one-machine store: there the lock is always granted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from storage.db import Database


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name (PostgreSQL's advisory keys are bigints)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# Seconds a turn is waited for at most: a turn is held for one short batch, and a daemon
# that holds it far longer (frozen, cut off from the network) must not stop the others,
# nor keep a storage thread waiting when its own daemon stops.
TURN_WAIT = 5.0


class TurnTaken(Exception):
    """Another session has held the turn longer than it is waited for."""


def _wait_for(connection: Connection | Session, name: str, statement: str) -> None:
    # The timeout holds for the rest of the transaction: any lock it waits for later.
    connection.execute(
        text("SELECT set_config('lock_timeout', :wait, true)"),
        {"wait": f"{int(TURN_WAIT * 1000)}ms"},
    )
    try:
        connection.execute(text(statement), {"key": lock_key(name)})
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == "55P03":  # lock_not_available
            raise TurnTaken(f"the turn '{name}' is held by another session") from error
        raise


def take_turn(session: Session, name: str) -> None:
    """Wait until no other session holds the turn ``name`` (TurnTaken after TURN_WAIT),
    and hold it until this transaction ends (PostgreSQL's transaction-level advisory
    lock); on SQLite, whose one writer already takes turns, nothing."""
    if session.get_bind().dialect.name == "postgresql":
        _wait_for(session, name, "SELECT pg_advisory_xact_lock(:key)")


@contextmanager
def turn_held(db: Database, name: str) -> Iterator[None]:
    """The turn ``name`` held across several transactions, on a connection of its own;
    the transactions within must not :func:`take_turn` it again."""
    if db.dialect != "postgresql":
        yield
        return
    with db.engine.connect() as connection:
        _wait_for(connection, name, "SELECT pg_advisory_lock(:key)")
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(name)})
            except DBAPIError:
                # A session that is gone has given the lock up; one that is not must not go
                # back to the pool holding it.
                connection.invalidate()


class LeaderLock:
    """The advisory lock ``name``, held on a connection of its own while leading."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self.key = lock_key(name)
        self._connection: Connection | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        """Take the lock if no other session holds it; True when this one now leads."""
        if self._held:
            return True
        if self.db.dialect != "postgresql":
            self._held = True
            return True
        connection = self.db.engine.connect()
        try:
            granted = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            ).scalar_one()
            # Leave no transaction open: the lock belongs to the session, not to it.
            connection.commit()
        except BaseException:
            connection.invalidate()
            connection.close()
            raise
        if not granted:
            connection.close()
            return False
        self._connection = connection
        self._held = True
        return True

    def still_held(self) -> bool:
        """False when the lock's connection is gone, and with it the lock."""
        if self._connection is None:
            return self._held
        try:
            self._connection.execute(text("SELECT 1")).scalar_one()
            self._connection.commit()
        except Exception:
            self._drop()
            return False
        return True

    def release(self) -> None:
        connection, self._connection = self._connection, None
        self._held = False
        if connection is None:
            return
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            connection.commit()
        except Exception:
            # Closing the session for good releases the lock as well.
            connection.invalidate()
        connection.close()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._held = False
        if connection is not None:
            connection.invalidate()
            connection.close()
