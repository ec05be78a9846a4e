"""The desk's rules: priorities, assignment, journal and notifications in one transaction."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from intake.desk import Desk, DeskError, IllegalTransitionError, NewRequest, NotFoundError
from intake.directory import add_customer, add_staff
from storage.db import Database
from storage.models import (
    AppendOnlyError,
    Channel,
    CloseReason,
    JournalEntry,
    Kind,
    OutboxItem,
    Priority,
    Status,
    Ticket,
)
from tests.intake.conftest import RULES, Seed, register


@pytest.mark.parametrize(
    ("kind", "priority"),
    [
        (Kind.PROBLEM, Priority.P1),
        (Kind.INCIDENT, Priority.P2),
        (Kind.SERVICE_REQUEST, Priority.P3),
        (Kind.DEVELOPMENT_REQUEST, Priority.P4),
    ],
)
def test_priority_follows_the_kind(
    db: Database, desk: Desk, seed: Seed, kind: Kind, priority: Priority
) -> None:
    assert register(db, desk, seed, kind=kind).priority is priority


@pytest.mark.parametrize(
    ("package", "kind", "priority"),
    [
        ("premium", Kind.SERVICE_REQUEST, Priority.P2),
        ("premium", Kind.PROBLEM, Priority.P1),
        ("basic", Kind.INCIDENT, Priority.P3),
        ("basic", Kind.DEVELOPMENT_REQUEST, Priority.P4),
    ],
)
def test_support_package_shifts_priority_within_p1_to_p4(
    db: Database, desk: Desk, package: str, kind: Kind, priority: Priority
) -> None:
    with db.transaction() as session:
        customer = add_customer(session, "Globex", package=package, known_packages=RULES.packages)
        ticket = desk.register(
            session,
            NewRequest(subject="s", channel=Channel.EMAIL, customer_id=customer.id, kind=kind),
            actor="test",
        )
    assert ticket.priority is priority


def test_priority_hint_can_raise_but_not_lower(db: Database, desk: Desk, seed: Seed) -> None:
    with db.transaction() as session:
        raised = desk.register(
            session,
            NewRequest(
                subject="all operators down",
                channel=Channel.EMAIL,
                customer_id=seed.customer_id,
                kind=Kind.INCIDENT,
                priority_hint=Priority.P1,
            ),
            actor="test",
        )
        kept = desk.register(
            session,
            NewRequest(
                subject="whenever",
                channel=Channel.EMAIL,
                customer_id=seed.customer_id,
                kind=Kind.INCIDENT,
                priority_hint=Priority.P4,
            ),
            actor="test",
        )
    assert (raised.priority, kept.priority) == (Priority.P1, Priority.P2)


def test_staff_changes_priority_and_due_times_follow(db: Database, desk: Desk, seed: Seed) -> None:
    ticket = register(db, desk, seed, kind=Kind.SERVICE_REQUEST)
    assert ticket.response_due_at == ticket.created_at + dt.timedelta(hours=8)
    with db.transaction() as session:
        changed = desk.set_priority(
            session, ticket.number, Priority.P1, actor="bob", reason="customer escalated"
        )
        assert changed.response_due_at == changed.created_at + dt.timedelta(hours=1)
        entry = changed.journal[-1]
        assert (entry.actor, entry.action) == ("bob", "priority_changed")
        assert entry.details == {"from": "P3", "to": "P1", "reason": "customer escalated"}


def test_round_robin_among_on_duty_staff_of_the_queue(db: Database, desk: Desk, seed: Seed) -> None:
    with db.transaction() as session:
        add_staff(session, "alice", queues=["support"])
        add_staff(session, "bob", queues=["support", "chat"])
        add_staff(session, "carol", queues=["support"], on_duty=False)
        add_staff(session, "dave", queues=["chat"])
    assignees = []
    for _ in range(4):
        ticket = register(db, desk, seed)
        with db.transaction() as session:
            stored = session.get_one(Ticket, ticket.id)
            assert stored.assignee is not None
            assignees.append(stored.assignee.name)
            assert stored.status is Status.NEW
    assert assignees == ["alice", "bob", "alice", "bob"]


def test_no_one_on_duty_leaves_the_ticket_unassigned(db: Database, desk: Desk, seed: Seed) -> None:
    with db.transaction() as session:
        add_staff(session, "carol", on_duty=False)
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        assert session.get_one(Ticket, ticket.id).assignee is None


def test_explicit_assignment_takes_a_new_ticket_into_work(
    db: Database, desk: Desk, seed: Seed
) -> None:
    with db.transaction() as session:
        add_staff(session, "alice", on_duty=False)
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        assigned = desk.assign(session, ticket.number, "alice", actor="lead")
        assert assigned.status is Status.IN_PROGRESS
        actions = [(e.actor, e.action) for e in assigned.journal]
    assert actions[-2:] == [("lead", "assigned"), ("lead", "status_changed")]


def test_assigning_to_unknown_staff_changes_nothing(db: Database, desk: Desk, seed: Seed) -> None:
    ticket = register(db, desk, seed)
    with pytest.raises(NotFoundError, match="no staff member 'nobody'"), db.transaction() as s:
        desk.assign(s, ticket.number, "nobody", actor="lead")
    with db.transaction() as session:
        assert session.get_one(Ticket, ticket.id).status is Status.NEW


def test_registration_writes_ticket_message_journal_and_acknowledgement(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(db, desk, seed, subject="  Softphone does not ring ")
    with db.transaction() as session:
        stored = session.get_one(Ticket, ticket.id)
        assert stored.subject == "Softphone does not ring"
        assert [m.direction.value for m in stored.messages] == ["in"]
        assert [(e.actor, e.action) for e in stored.journal] == [("test", "registered")]
        outbox = session.scalars(select(OutboxItem).where(OutboxItem.ticket_id == ticket.id)).all()
        assert [(o.template, o.recipient) for o in outbox] == [
            ("acknowledgement", "anna@acme.example")
        ]
        assert outbox[0].payload["number"] == ticket.number
        assert outbox[0].message_id is not None
        assert outbox[0].message_id.endswith("@intake.test>")


def test_failed_registration_leaves_no_trace(db: Database, desk: Desk, seed: Seed) -> None:
    with pytest.raises(RuntimeError), db.transaction() as session:
        desk.register(
            session,
            NewRequest(
                subject="s",
                channel=Channel.EMAIL,
                customer_id=seed.customer_id,
                contact_id=seed.contact_id,
            ),
            actor="test",
        )
        raise RuntimeError("crash before commit")
    with db.transaction() as session:
        for model in (Ticket, JournalEntry, OutboxItem):
            assert session.scalar(select(func.count()).select_from(model)) == 0


def test_set_status_finds_the_event_and_asks_for_a_reason_when_ambiguous(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        desk.set_status(session, ticket.number, Status.RESOLVED, actor="bob", note="Restart it.")
    with (
        pytest.raises(DeskError, match="needs a reason: confirmed, timeout, withdrawn"),
        db.transaction() as session,
    ):
        desk.set_status(session, ticket.number, Status.CLOSED, actor="bob")
    with db.transaction() as session:
        closed = desk.set_status(
            session, ticket.number, Status.CLOSED, actor="bob", reason=CloseReason.CONFIRMED
        )
        assert (closed.status, closed.close_reason) == (Status.CLOSED, CloseReason.CONFIRMED)
        assert closed.resolved_at is not None
        answer = [m for m in closed.messages if m.direction.value == "out"]
        assert [m.text for m in answer] == ["Restart it."]


def test_set_status_refuses_what_the_table_does_not_allow(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(db, desk, seed)
    with (
        pytest.raises(IllegalTransitionError, match="cannot go from new to waiting_customer"),
        db.transaction() as session,
    ):
        desk.set_status(session, ticket.number, Status.WAITING_CUSTOMER, actor="bob")


def test_reopen_clears_the_resolution_time(db: Database, desk: Desk, seed: Seed) -> None:
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        desk.set_status(session, ticket.number, Status.RESOLVED, actor="bob")
    with db.transaction() as session:
        reopened = desk.set_status(session, ticket.number, Status.IN_PROGRESS, actor="anna")
        assert reopened.resolved_at is None


def test_journal_is_append_only(db: Database, desk: Desk, seed: Seed) -> None:
    ticket = register(db, desk, seed)
    with pytest.raises(AppendOnlyError), db.transaction() as session:
        entry = session.scalars(
            select(JournalEntry).where(JournalEntry.ticket_id == ticket.id)
        ).first()
        assert entry is not None
        entry.action = "forged"
        session.flush()
    with pytest.raises(AppendOnlyError), db.transaction() as session:
        entry = session.scalars(
            select(JournalEntry).where(JournalEntry.ticket_id == ticket.id)
        ).first()
        session.delete(entry)
        session.flush()


def test_ticket_lookup_is_case_insensitive_on_the_number(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        assert desk.ticket(session, f" {ticket.number.lower()} ").id == ticket.id
        with pytest.raises(NotFoundError, match="no ticket 'OV-1999-000001'"):
            desk.ticket(session, "OV-1999-000001")


def test_closing_an_unresolved_ticket_needs_an_explicit_reason(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(db, desk, seed)
    with pytest.raises(DeskError, match=r"needs a reason: withdrawn$"), db.transaction() as s:
        desk.set_status(s, ticket.number, Status.CLOSED, actor="bob")
    with db.transaction() as session:
        closed = desk.set_status(
            session, ticket.number, Status.CLOSED, actor="bob", reason=CloseReason.WITHDRAWN
        )
        assert closed.close_reason is CloseReason.WITHDRAWN
