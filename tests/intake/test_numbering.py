"""Registration numbers: unique under concurrent registration, formatted as configured."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
from sqlalchemy import func, select, text
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
