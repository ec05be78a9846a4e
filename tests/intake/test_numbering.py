"""Registration numbers: unique under concurrent registration, formatted as configured."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.engine import URL

from intake.desk import Desk, DeskRules, NewRequest
from intake.directory import add_staff
from storage.db import Database
from storage.models import Channel, Ticket
from tests.intake.conftest import RULES, Seed

T = TypeVar("T")
WORKERS = 8
PER_WORKER = 200


def test_eight_workers_register_1600_distinct_numbers(db_url: URL, seed: Seed) -> None:
    numbers: list[list[str]] = [[] for _ in range(WORKERS)]
    errors: list[BaseException] = []
    start = threading.Barrier(WORKERS)

    def work(index: int) -> None:
        database = Database.from_url(db_url, pool_size=1)  # a connection of its own
        desk = Desk(RULES)
        try:
            start.wait()
            for i in range(PER_WORKER):
                with database.transaction() as session:
                    ticket = desk.register(
                        session,
                        NewRequest(
                            subject=f"worker {index} request {i}",
                            channel=Channel.EMAIL,
                            customer_id=seed.customer_id,
                        ),
                        actor=f"worker-{index}",
                    )
                    numbers[index].append(ticket.number)
        except BaseException as exc:
            errors.append(exc)
        finally:
            database.dispose()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    allocated = [n for worker in numbers for n in worker]
    assert len(allocated) == WORKERS * PER_WORKER
    assert len(set(allocated)) == WORKERS * PER_WORKER
    database = Database.from_url(db_url)
    with database.transaction() as session:
        stored = session.scalars(select(Ticket.number)).all()
    database.dispose()
    assert sorted(stored) == sorted(allocated)


def _register_at(db: Database, desk: Desk, seed: Seed) -> str:
    with db.transaction() as session:
        ticket = desk.register(
            session,
            NewRequest(subject="x", channel=Channel.PHONE, customer_id=seed.customer_id),
            actor="test",
        )
        return ticket.number


def test_default_format_carries_year_and_six_digit_sequence(db: Database, seed: Seed) -> None:
    desk = Desk(RULES, clock=lambda: dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC))
    assert [_register_at(db, desk, seed) for _ in range(2)] == ["OV-2026-000001", "OV-2026-000002"]


def test_sequence_restarts_with_the_year_in_the_desks_timezone(db: Database, seed: Seed) -> None:
    # 21:30 UTC on 31 December is already the new year in Moscow (UTC+3).
    eve = Desk(RULES, clock=lambda: dt.datetime(2026, 12, 31, 20, 0, tzinfo=dt.UTC))
    new_year = Desk(RULES, clock=lambda: dt.datetime(2026, 12, 31, 21, 30, tzinfo=dt.UTC))
    assert _register_at(db, eve, seed) == "OV-2026-000001"
    assert _register_at(db, new_year, seed) == "OV-2027-000001"
    assert _register_at(db, eve, seed) == "OV-2026-000002"


def test_format_without_year_uses_one_sequence(db: Database, seed: Seed) -> None:
    rules = DeskRules(number_format="SUP{seq:05d}", packages=RULES.packages)
    first = Desk(rules, clock=lambda: dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC))
    later = Desk(rules, clock=lambda: dt.datetime(2027, 1, 1, 12, tzinfo=dt.UTC))
    assert [_register_at(db, first, seed), _register_at(db, later, seed)] == [
        "SUP00001",
        "SUP00002",
    ]


def test_rolled_back_registration_leaves_a_gap_not_a_duplicate(db: Database, seed: Seed) -> None:
    desk = Desk(RULES, clock=lambda: dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC))
    first = _register_at(db, desk, seed)
    try:
        with db.transaction() as session:
            desk.register(
                session,
                NewRequest(subject="doomed", channel=Channel.EMAIL, customer_id=seed.customer_id),
                actor="test",
            )
            raise RuntimeError("storage failed after allocation")
    except RuntimeError:
        pass
    second = _register_at(db, desk, seed)
    assert first != second
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Ticket)) == 2


def _request(seed: Seed, subject: str) -> NewRequest:
    return NewRequest(subject=subject, channel=Channel.EMAIL, customer_id=seed.customer_id)


def _in_other_transaction(db_url: URL, work: Callable[[Database], T]) -> T:
    """``work`` on a connection of its own, in a thread, as a second daemon would; it
    fails instead of waiting when a lock it needs is held for longer than 5 s."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        database = Database.from_url(db_url, pool_size=1)
        try:
            results.append(work(database))
        except BaseException as exc:
            errors.append(exc)
        finally:
            database.dispose()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the second registration is still waiting"
    assert errors == []
    return results[0]


def _register_with_lock_timeout(
    desk: Desk, seed: Seed, subject: str
) -> Callable[[Database], Ticket]:
    def work(database: Database) -> Ticket:
        with database.transaction() as session:
            session.execute(text("SET LOCAL lock_timeout = '5s'"))
            return desk.register(session, _request(seed, subject), actor="second")

    return work


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_long_registration_transaction_does_not_hold_up_another_daemons_number(
    db_url: URL, db: Database, seed: Seed
) -> None:
    # A pipeline batch keeps its transaction open over many mails; the number it took
    # must not make every other worker and daemon wait for its commit.
    desk = Desk(RULES)
    with db.transaction() as session:
        first = desk.register(session, _request(seed, "first, in a long batch"), actor="first")
        second = _in_other_transaction(db_url, _register_with_lock_timeout(desk, seed, "second"))
    assert first.number != second.number
    with db.transaction() as session:
        assert set(session.scalars(select(Ticket.number))) == {first.number, second.number}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_long_transaction_does_not_leave_another_daemons_ticket_unassigned(
    db_url: URL, db: Database, seed: Seed
) -> None:
    # One engineer on duty, whose turn an open batch has taken: the other daemon's ticket
    # still goes to them (it waits for the turn's short transaction, not for the batch).
    with db.transaction() as session:
        add_staff(session, "anna", queues=["support"], on_duty=True)
    desk = Desk(RULES)
    with db.transaction() as session:
        first = desk.register(session, _request(seed, "first"), actor="first")
        second = _in_other_transaction(db_url, _register_with_lock_timeout(desk, seed, "second"))
        assert first.assignee is not None
        assert first.assignee.name == "anna"
    with db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.id == second.id)).one()
        assert ticket.assignee is not None
        assert ticket.assignee.name == "anna"


def _assignee_of(db: Database, ticket_id: int) -> str | None:
    with db.transaction() as session:
        ticket = session.get_one(Ticket, ticket_id)
        return ticket.assignee.name if ticket.assignee else None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_registration_takes_its_number_and_turn_in_one_statement_of_its_own(
    db: Database, seed: Seed
) -> None:
    # Each statement is a round trip and a share of the daemon's one core; a transaction
    # around them would be two more (BEGIN, COMMIT), and a ping before it one more.
    with db.transaction() as session:
        add_staff(session, "anna", queues=["support"], on_duty=True)
    shared: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "counters" in statement or "staff" in statement:
            shared.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        with db.transaction() as session:
            ticket_id = Desk(RULES).register(session, _request(seed, "x"), actor="test").id
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert len(shared) == 1
    assert "INSERT INTO counters" in shared[0]
    assert "UPDATE staff" in shared[0]
    assert _assignee_of(db, ticket_id) == "anna"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_registration_waits_for_an_engineer_whose_turn_another_is_taking(
    db_url: URL, db: Database, seed: Seed
) -> None:
    # The only engineer on duty is locked by another daemon taking their turn: the ticket
    # waits for them rather than stay unassigned.
    with db.transaction() as session:
        add_staff(session, "anna", queues=["support"], on_duty=True)
    holder = create_engine(db_url)
    registered: list[Ticket] = []
    try:
        with holder.begin() as other:
            other.execute(text("SELECT id FROM staff WHERE name = 'anna' FOR NO KEY UPDATE"))
            second = threading.Thread(
                target=lambda: registered.append(
                    _register_with_lock_timeout(Desk(RULES), seed, "second")(db)
                )
            )
            second.start()
            _wait_until_a_backend_waits_for_a_lock(holder)
        second.join(timeout=60)
    finally:
        holder.dispose()
    assert len(registered) == 1
    assert _assignee_of(db, registered[0].id) == "anna"


def _wait_until_a_backend_waits_for_a_lock(engine: Engine) -> None:
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 30
    # A lock wait has no event to await; pg_stat_activity is looked at until it shows one,
    # each time in a transaction of its own (a transaction keeps the view it first saw).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        while connection.execute(waiting).scalar_one() == 0:
            assert time.monotonic() < deadline, "the registration never waited for the turn"
            time.sleep(0.01)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_shared_counter_survives_its_connection_being_dropped(
    db_url: URL, db: Database, seed: Seed
) -> None:
    # The side pool's connections are not pinged before use; one that the server dropped
    # (a restart, an idle timeout) must not fail a registration.
    desk = Desk(RULES, clock=lambda: dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC))
    assert _register_at(db, desk, seed) == "OV-2026-000001"
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            # With a timeout, pg_terminate_backend returns once the backend has gone.
            dropped = connection.execute(
                text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) "
                    "FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        admin.dispose()
    assert dropped >= 1
    assert _register_at(db, desk, seed) == "OV-2026-000002"
