from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from storage import inbound
from storage.db import Database, create_db_engine
from storage.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    is_at_head,
    upgrade,
)
from storage.models import Base, InboundItem, InboundState, Message

pytestmark = pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgresql"], indirect=True)


def test_upgrade_takes_an_empty_database_to_head(fresh_database_url: URL) -> None:
    engine = create_db_engine(fresh_database_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert is_at_head(engine)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    engine.dispose()


def test_models_and_migrations_agree(fresh_database_url: URL) -> None:
    engine = create_db_engine(fresh_database_url)
    upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_upgrade_twice_is_a_no_op(fresh_database_url: URL) -> None:
    engine = create_db_engine(fresh_database_url)
    upgrade(engine)
    upgrade(engine)
    assert is_at_head(engine)
    engine.dispose()


def test_journal_refuses_changes_from_any_client(fresh_database_url: URL) -> None:
    engine = create_db_engine(fresh_database_url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO customers (name, package, domains, created_at) "
                "VALUES ('Acme', 'standard', '', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO tickets (number, kind, priority, status, subject, description, "
                "channel, queue, customer_id, created_at, updated_at) VALUES ('OV-1', "
                "'incident', 'P2', 'new', 's', '', 'email', 'support', 1, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO journal (ticket_id, at, actor, action, details) "
                "VALUES (1, CURRENT_TIMESTAMP, 'alice', 'registered', '{}')"
            )
        )
    for statement in ("UPDATE journal SET actor = 'mallory'", "DELETE FROM journal"):
        with (
            pytest.raises(DBAPIError, match="journal entries are append-only"),
            engine.begin() as connection,
        ):
            connection.execute(text(statement))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT actor FROM journal")).scalars().all() == ["alice"]
    engine.dispose()


def test_an_older_database_is_taken_to_head_with_its_data(fresh_database_url: URL) -> None:
    engine = create_db_engine(fresh_database_url)
    upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO customers (name, package, domains, created_at) "
                "VALUES ('Acme', 'standard', 'acme.example', CURRENT_TIMESTAMP)"
            )
        )
    upgrade(engine)
    assert is_at_head(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM customers")).scalars().all() == ["Acme"]
    engine.dispose()


def test_every_migration_downgrades_and_upgrades_again(fresh_database_url: URL) -> None:
    engine = create_db_engine(fresh_database_url)
    upgrade(engine)
    command.downgrade(alembic_config(engine), "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert is_at_head(engine)
    engine.dispose()


# Every byte value, and more than one piece of storage.inbound's in-place writes.
RAW = bytes(range(256)) * 4100 + b"\r\n.\r\n"


def _store_at_0006(engine: Engine) -> None:
    """An item received before 0007, with the message of the ticket it registered."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO inbound (source, source_ref, raw, size, received_at, state, "
                "attempts) VALUES ('smtp', '<old@acme.example>', :raw, :size, "
                "CURRENT_TIMESTAMP, 'done', 1)"
            ),
            {"raw": RAW, "size": len(RAW)},
        )
        connection.execute(
            text(
                "INSERT INTO customers (name, package, domains, created_at) "
                "VALUES ('Acme', 'standard', '', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO tickets (number, kind, priority, status, subject, description, "
                "channel, queue, customer_id, created_at, updated_at) VALUES ('OV-1', "
                "'incident', 'P2', 'new', 's', '', 'email', 'support', 1, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO messages (ticket_id, direction, author, subject, text, "
                "inbound_id, created_at) VALUES (1, 'in', '', 's', '', 1, CURRENT_TIMESTAMP)"
            )
        )


def test_raw_bytes_received_before_0007_stay_exact_at_head_and_back(
    fresh_database_url: URL,
) -> None:
    engine = create_db_engine(fresh_database_url)
    upgrade(engine, "0006")
    _store_at_0006(engine)
    upgrade(engine)
    database = Database(engine)
    with database.transaction() as session:
        assert inbound.raw_of(session, [1]) == {1: RAW}
        item = session.get_one(InboundItem, 1)
        assert (item.raw, item.size, item.state) == (RAW, len(RAW), InboundState.DONE)
        assert session.scalar(select(Message.inbound_id)) == 1
    command.downgrade(alembic_config(engine), "0006")
    assert "inbound_raw" not in inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT raw FROM inbound")).scalars().all() == [RAW]
    engine.dispose()
