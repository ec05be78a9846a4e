from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import URL

from storage.db import create_db_engine
from storage.migrate import current_revision, head_revision, is_at_head, upgrade
from storage.models import Base

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
