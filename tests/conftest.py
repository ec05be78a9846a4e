"""Shared fixtures: the same tests run against SQLite and against a real PostgreSQL.

PostgreSQL is required, not optional: an unreachable server fails the run (CI must not
go green on a machine where half the storage code was never exercised).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from storage.db import Database, create_db_engine
from storage.migrate import upgrade
from storage.models import Base

POSTGRES_ADMIN_URL = os.environ.get(
    "INTAKE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")


class PostgresServer:
    """Creates and drops throw-away databases on the test server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self.admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")

    def create_database(self) -> URL:
        name = f"intake_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return self.admin_url.set(database=name)

    def drop_database(self, url: URL) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(POSTGRES_ADMIN_URL)
    try:
        with server.admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL is required for the test suite and is not reachable at "
            f"{POSTGRES_ADMIN_URL} ({exc.__class__.__name__}: {exc}). "
            "Start it (see README, 'Tests') or set INTAKE_TEST_POSTGRES_URL.",
            pytrace=False,
        )
    yield server
    server.admin.dispose()


@pytest.fixture
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """An empty database of the backend named by the test's ``backend`` parameter."""
    backend = request.param if hasattr(request, "param") else "sqlite"
    if backend == "sqlite":
        yield make_url(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "intake.sqlite3"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_migrated(postgres: PostgresServer) -> Iterator[URL]:
    url = postgres.create_database()
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    postgres.drop_database(url)


def _truncate_all(database: Database) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """A migrated, empty database URL; the test runs once per backend."""
    if request.param == "sqlite":
        path = tmp_path / "intake.sqlite3"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return make_url(f"sqlite:///{path}")
    url: URL = request.getfixturevalue("postgres_migrated")
    database = Database.from_url(url)
    _truncate_all(database)
    database.dispose()
    return url


@pytest.fixture
def db(db_url: URL) -> Iterator[Database]:
    database = Database.from_url(db_url)
    yield database
    database.dispose()
