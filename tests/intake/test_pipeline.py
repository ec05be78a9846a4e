"""Received mail through the pipeline into the desk, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import re
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image
from sqlalchemy import event, func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from intake.desk import Desk
from intake.directory import add_contact
from intake.pipeline import BATCH, Pipeline
from intake.registrar import Outcome, Prepared, Registrar
from intake.senders import SenderPolicy
from intake.sources.imap_sync import message_id_of
from storage import inbound
from storage.db import Database
from storage.models import (
    Attachment,
    Blob,
    CloseReason,
    Contact,
    Customer,
    InboundItem,
    InboundState,
    JournalEntry,
    Message,
    OutboxItem,
    Status,
    Ticket,
)
from tests.intake.conftest import RULES, Seed
from tests.intake.mailmaker import OUR_ADDRESS, OUR_DOMAIN, mail_bytes, make_registrar

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def receive(db: Database, raw: bytes, ref: str | None = None) -> int:
    """Store a mail as the sources do, with its Message-ID."""
    with db.transaction() as session:
        return inbound.store(
            session,
            source="smtp",
            source_ref=ref or str(hash(raw)),
            raw=raw,
            message_id=message_id_of(raw),
        ).id


def pipeline_for(
    db: Database, registrar: Registrar, *, clock: list[dt.datetime] | None = None
) -> Pipeline:
    now = clock or [dt.datetime.now(dt.UTC)]
    return Pipeline(
        db, registrar, workers=2, max_attempts=3, poll_interval=60, clock=lambda: now[0]
    )


@pytest.fixture
def registrar(desk: Desk, tmp_path: Path) -> Registrar:
    return make_registrar(desk, tmp_path)


@pytest.fixture
def pipeline(db: Database, registrar: Registrar) -> Pipeline:
    return pipeline_for(db, registrar)


def item(db: Database, item_id: int) -> InboundItem:
    with db.transaction() as session:
        return session.get_one(InboundItem, item_id)


def count(db: Database, model: type[object]) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def registered(db: Database, raw: bytes, pipeline: Pipeline) -> Ticket:
    item_id = receive(db, raw)
    pipeline.work_all()
    stored = item(db, item_id)
    assert stored.state is InboundState.DONE, stored.error
    with db.transaction() as session:
        return session.get_one(Ticket, stored.ticket_id)


# --- new requests ---------------------------------------------------------------------------


def test_new_mail_registers_a_ticket_with_environment_and_screenshot(
    db: Database, seed: Seed, pipeline: Pipeline, registrar: Registrar
) -> None:
    shot = png(320, 200)
    raw = mail_bytes(
        subject="AgentZone softphone does not ring",
        body="Windows 10, Chrome 120.0, AgentZone 3.2.1. Operators cannot take calls.",
        message_id="<new@acme.example>",
        images=(("shot.png", shot),),
    )
    ticket = registered(db, raw, pipeline)
    with db.transaction() as session:
        ticket = session.get_one(Ticket, ticket.id)
        (message,) = session.scalars(select(Message).where(Message.ticket_id == ticket.id))
        (attachment,) = session.scalars(select(Attachment))
        (ack,) = session.scalars(select(OutboxItem))
        assert (ticket.customer_id, ticket.contact_id) == (seed.customer_id, seed.contact_id)
        assert (ticket.env_os, ticket.env_os_version, ticket.env_browser) == (
            "Windows",
            "10",
            "Chrome",
        )
        assert (ticket.env_product, ticket.env_product_version) == ("AgentZone", "3.2.1")
        assert ticket.subject == "AgentZone softphone does not ring"
        assert message.message_id == "<new@acme.example>"
        assert message.author == "Anna <anna@acme.example>"
        assert (attachment.message_id, attachment.screenshot) == (message.id, True)
        assert (attachment.width, attachment.height, attachment.size) == (320, 200, len(shot))
        assert session.get_one(Blob, attachment.sha256).size == len(shot)
        assert (ack.template, ack.recipient) == ("acknowledgement", "anna@acme.example")
        assert ack.payload["in_reply_to"] == "<new@acme.example>"
    assert registrar.blob_store.read(attachment.sha256) == shot


def test_acknowledgement_names_what_the_request_lacks(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    registered(db, mail_bytes(subject="It broke", body="Nothing works."), pipeline)
    registered(db, mail_bytes(subject="Chat", body="In Chrome 120, Windows 11."), pipeline)
    with db.transaction() as session:
        first, second = session.scalars(select(OutboxItem).order_by(OutboxItem.id))
    assert first.payload["missing"] == ["os", "product", "browser"]
    assert second.payload["missing"] == ["product"]


def test_sender_of_a_known_domain_becomes_a_contact_of_that_customer(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    with db.transaction() as session:
        session.get_one(Customer, seed.customer_id).domains = "acme.example"
    ticket = registered(db, mail_bytes(subject="Hi", sender="Vera <vera@acme.example>"), pipeline)
    with db.transaction() as session:
        contact = session.scalars(select(Contact).where(Contact.email == "vera@acme.example")).one()
        assert (contact.customer_id, contact.name) == (seed.customer_id, "Vera")
        assert session.get_one(Ticket, ticket.id).contact_id == contact.id


def test_unknown_sender_becomes_a_contact_of_the_unassigned_customer(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    first = registered(db, mail_bytes(subject="Hi", sender="x@stranger.example"), pipeline)
    second = registered(db, mail_bytes(subject="Again", sender="y@stranger.example"), pipeline)
    with db.transaction() as session:
        customers = {session.get_one(Ticket, t.id).customer.name for t in (first, second)}
        ack_recipients = set(session.scalars(select(OutboxItem.recipient)))
    assert customers == {"unassigned"}
    assert ack_recipients == {"x@stranger.example", "y@stranger.example"}


def test_mail_without_a_usable_sender_is_registered_without_a_contact(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    raw = b"From: the night shift\r\nSubject: Help\r\nMessage-ID: <n@x.example>\r\n\r\nDown\r\n"
    ticket = registered(db, raw, pipeline)
    with db.transaction() as session:
        ticket = session.get_one(Ticket, ticket.id)
        assert (ticket.customer.name, ticket.contact_id) == ("unassigned", None)
    assert "notification_skipped" in _journal(db, ticket.id)
    assert count(db, OutboxItem) == 0


def test_unknown_sender_is_refused_politely_when_configured(
    db: Database, seed: Seed, desk: Desk, tmp_path: Path
) -> None:
    registrar = make_registrar(desk, tmp_path, policy=SenderPolicy(unknown_sender="reject"))
    item_id = receive(db, mail_bytes(subject="Hi", sender="x@stranger.example"))
    pipeline_for(db, registrar).work_all()
    stored = item(db, item_id)
    assert stored.state is InboundState.IGNORED
    assert stored.reason is not None
    assert "x@stranger.example" in stored.reason
    with db.transaction() as session:
        (reply,) = session.scalars(select(OutboxItem))
        assert (reply.template, reply.recipient, reply.ticket_id) == (
            "unknown_sender_rejected",
            "x@stranger.example",
            None,
        )
    assert count(db, Ticket) == 0


def test_same_mail_from_two_sources_is_registered_once(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    raw = mail_bytes(subject="Once", message_id="<once@acme.example>")
    first = receive(db, raw, ref="<once@acme.example>")
    second = receive(db, raw, ref="imap:support:1:7")
    pipeline.work_all()
    assert count(db, Ticket) == 1
    assert item(db, first).state is InboundState.DONE
    assert item(db, second).state is InboundState.IGNORED
    assert "duplicate" in (item(db, second).reason or "")
    assert item(db, second).ticket_id == item(db, first).ticket_id is not None


# --- follow-ups -----------------------------------------------------------------------------


def _journal(db: Database, ticket_id: int) -> list[str]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(JournalEntry.action)
                .where(JournalEntry.ticket_id == ticket_id)
                .order_by(JournalEntry.id)
            )
        )


def _messages(db: Database, ticket_id: int) -> list[str]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(Message.text).where(Message.ticket_id == ticket_id).order_by(Message.id)
            )
        )


def test_reply_with_the_number_in_the_subject_is_a_follow_up(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    ticket = registered(db, mail_bytes(subject="Calls drop"), pipeline)
    follow = registered(
        db,
        mail_bytes(subject=f"Re: [{ticket.number}] Calls drop", body="It happened again."),
        pipeline,
    )
    assert follow.id == ticket.id
    assert count(db, Ticket) == 1
    assert _messages(db, ticket.id)[-1] == "It happened again."
    assert "follow_up_received" in _journal(db, ticket.id)
    with db.transaction() as session:
        templates = session.scalars(select(OutboxItem.template).order_by(OutboxItem.id)).all()
    assert templates == ["acknowledgement", "follow_up_received"]


def test_reply_to_our_acknowledgement_is_matched_by_in_reply_to(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    ticket = registered(db, mail_bytes(subject="Calls drop"), pipeline)
    with db.transaction() as session:
        ack_id = session.scalars(select(OutboxItem.message_id)).one()
    follow = registered(
        db, mail_bytes(subject="Re: your request", body="More", in_reply_to=ack_id), pipeline
    )
    assert follow.id == ticket.id
    with db.transaction() as session:
        entry = session.scalars(
            select(JournalEntry).where(JournalEntry.action == "follow_up_received")
        ).one()
    assert entry.details["matched_by"] == "In-Reply-To"


def test_reply_in_a_thread_is_matched_by_references(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    ticket = registered(
        db, mail_bytes(subject="Chat is slow", message_id="<root@acme.example>"), pipeline
    )
    follow = registered(
        db,
        mail_bytes(
            subject="Re: Chat is slow",
            body="Still slow",
            in_reply_to="<someone-else@elsewhere.example>",
            references="<root@acme.example> <someone-else@elsewhere.example>",
        ),
        pipeline,
    )
    assert follow.id == ticket.id
    with db.transaction() as session:
        entry = session.scalars(
            select(JournalEntry).where(JournalEntry.action == "follow_up_received")
        ).one()
    assert entry.details["matched_by"] == "References"


def test_customer_answer_moves_waiting_customer_back_in_progress(
    db: Database, seed: Seed, desk: Desk, pipeline: Pipeline
) -> None:
    ticket = registered(db, mail_bytes(subject="Which version?"), pipeline)
    with db.transaction() as session:
        current = session.get_one(Ticket, ticket.id)
        desk.apply(session, current, "take", actor="alice")
        desk.apply(session, current, "ask_customer", actor="alice", note="Which browser?")
    registered(db, mail_bytes(subject=f"Re: [{ticket.number}]", body="Firefox 128"), pipeline)
    with db.transaction() as session:
        current = session.get_one(Ticket, ticket.id)
        assert current.status is Status.IN_PROGRESS
        last = session.scalars(
            select(JournalEntry)
            .where(JournalEntry.ticket_id == ticket.id)
            .order_by(JournalEntry.id.desc())
        ).first()
    assert last is not None
    assert last.details["event"] == "customer_replied"


def test_follow_up_keeps_its_screenshot(db: Database, seed: Seed, pipeline: Pipeline) -> None:
    ticket = registered(db, mail_bytes(subject="Crash"), pipeline)
    registered(
        db,
        mail_bytes(subject=f"Re: [{ticket.number}] Crash", images=(("b.png", png(64, 48)),)),
        pipeline,
    )
    with db.transaction() as session:
        (attachment,) = session.scalars(select(Attachment))
        message = session.get_one(Message, attachment.message_id)
    assert (message.ticket_id, attachment.width) == (ticket.id, 64)


# --- rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "subject", "rule"),
    [
        ({"Auto-Submitted": "auto-replied"}, "Re: Calls drop", "auto-reply"),
        ({}, "Автоматический ответ: Calls drop", "auto-reply"),
        ({}, "Out of Office: Calls drop", "auto-reply"),
        ({"Precedence": "bulk"}, "Newsletter", "auto-reply"),
        ({"List-Id": "<users.lists.example>"}, "Digest", "auto-reply"),
        ({"X-Loop": OUR_ADDRESS}, "Calls drop", "loop"),
    ],
)
def test_automatic_mail_is_set_aside_with_its_reason(
    db: Database,
    seed: Seed,
    pipeline: Pipeline,
    headers: dict[str, str],
    subject: str,
    rule: str,
) -> None:
    item_id = receive(db, mail_bytes(subject=subject, headers=headers))
    pipeline.work_all()
    stored = item(db, item_id)
    assert stored.state is InboundState.IGNORED
    assert stored.reason is not None
    assert stored.reason.startswith(f"{rule}: ")
    assert (count(db, Ticket), count(db, OutboxItem)) == (0, 0)


def test_our_own_mail_coming_back_is_set_aside(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    item_id = receive(db, mail_bytes(subject="x", message_id=f"<abc@{OUR_DOMAIN}>"))
    pipeline.work_all()
    assert (item(db, item_id).reason or "").startswith("loop: Message-ID")
    assert (count(db, Ticket), count(db, OutboxItem)) == (0, 0)


def test_empty_mail_is_set_aside(db: Database, seed: Seed, pipeline: Pipeline) -> None:
    item_id = receive(db, mail_bytes(subject="", body=""))
    pipeline.work_all()
    assert item(db, item_id).reason == "empty: no subject, no text and no attachment"
    assert (count(db, Ticket), count(db, OutboxItem)) == (0, 0)


def _bounce_of(original: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.acme.example\r\n"
        "To: support@intake.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce1@mx.acme.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.acme.example\r\n\r\n"
        "Final-Recipient: rfc822; anna@acme.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {original}\r\nSubject: [OV] ack\r\n"
        "\r\n--B--\r\n"
    ).encode()


def test_bounce_of_our_mail_is_journaled_on_its_ticket(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    ticket = registered(db, mail_bytes(subject="Calls drop"), pipeline)
    with db.transaction() as session:
        ack_id = session.scalars(select(OutboxItem.message_id)).one()
    assert ack_id is not None
    item_id = receive(db, _bounce_of(ack_id))
    pipeline.work_all()
    stored = item(db, item_id)
    assert stored.state is InboundState.IGNORED
    assert (stored.reason or "").startswith("bounce: ")
    assert stored.ticket_id == ticket.id
    assert _journal(db, ticket.id)[-1] == "bounce_received"
    assert (count(db, Ticket), count(db, OutboxItem)) == (1, 1)


# --- failures -------------------------------------------------------------------------------


def test_mail_the_desk_cannot_register_fails_backs_off_and_is_quarantined(
    db: Database, seed: Seed, tmp_path: Path
) -> None:
    # A number format naming a field the desk does not fill makes every registration raise.
    broken = Desk(dataclasses.replace(RULES, number_format="OV-{year}-{seq}-{branch}"))
    clock = [T0]
    pipeline = pipeline_for(db, make_registrar(broken, tmp_path), clock=clock)
    item_id = receive(db, mail_bytes(subject="Doomed"))
    seen = []
    for _ in range(3):
        assert pipeline.work_all() == 1
        stored = item(db, item_id)
        seen.append((stored.state, stored.attempts))
        # Nothing is claimed again before its backoff is over.
        assert pipeline.work_all() == 0
        if stored.next_attempt_at is not None:
            clock[0] = stored.next_attempt_at
    assert seen == [
        (InboundState.FAILED, 1),
        (InboundState.FAILED, 2),
        (InboundState.QUARANTINED, 3),
    ]
    assert "KeyError" in (item(db, item_id).error or "")
    assert (count(db, Ticket), count(db, OutboxItem)) == (0, 0)
    with db.transaction() as session:
        inbound.retry(session, item_id)
    pipeline_for(db, make_registrar(Desk(RULES), tmp_path)).work_all()
    assert item(db, item_id).state is InboundState.DONE


def test_a_worker_whose_lease_ran_out_does_not_register_twice(
    db: Database, seed: Seed, registrar: Registrar
) -> None:
    item_id = receive(db, mail_bytes(subject="Slow"))
    with db.transaction() as session:
        (slow,) = inbound.items(session, inbound.claim(session, now=T0))
    with db.transaction() as session:
        (fast,) = inbound.items(session, inbound.claim(session, now=T0 + inbound.DEFAULT_LEASE))
    pipeline = pipeline_for(db, registrar)
    pipeline.process([fast])
    pipeline.process([slow])
    assert count(db, Ticket) == 1
    assert item(db, item_id).state is InboundState.DONE


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_workers_on_postgresql_never_register_one_item_twice(
    db_url: URL, db: Database, seed: Seed, desk: Desk, tmp_path: Path
) -> None:
    # Unknown senders too: both workers may create the same new contact at once.
    ids = [
        receive(db, mail_bytes(subject=f"Request {n}", sender=f"user{n % 3}@stranger.example"))
        for n in range(30)
    ]
    daemons = [pipeline_for(db, make_registrar(desk, tmp_path)) for _ in range(2)]
    done: list[int] = []
    threads = [threading.Thread(target=lambda p=p: done.append(p.work_all())) for p in daemons]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(done) == len(ids)
    with db.transaction() as session:
        states = session.scalars(select(InboundItem.state)).all()
        ticket_inbound = session.scalars(select(Message.inbound_id)).all()
    assert set(states) == {InboundState.DONE}
    assert sorted(ticket_inbound) == sorted(ids)
    assert count(db, Ticket) == len(ids)
    assert count(db, Contact) == 1 + 3


class _OnSubject:
    """A registrar that does something of its own about the mail with one subject."""

    def __init__(self, registrar: Registrar, subject: str) -> None:
        self.registrar = registrar
        self.subject = subject

    def prepare(self, raw: bytes) -> Prepared:
        return self.registrar.prepare(raw)

    def apply(
        self,
        session: Session,
        item: InboundItem,
        prepared: Prepared,
        *,
        settled: Collection[int] = (),
    ) -> Outcome:
        def registered() -> Outcome:
            return self.registrar.apply(session, item, prepared, settled=settled)

        if prepared.mail.subject == self.subject:
            return self.on_subject(registered)
        return registered()

    def on_subject(self, registered: Callable[[], Outcome]) -> Outcome:
        raise NotImplementedError


class _FailsOn(_OnSubject):
    """A registrar that raises for one subject, as a desk bug would for one mail."""

    def on_subject(self, registered: Callable[[], Outcome]) -> Outcome:
        registered()
        raise RuntimeError("the desk tripped over this one")


def test_one_failing_mail_of_a_batch_fails_alone_and_the_others_are_registered(
    db: Database, seed: Seed, registrar: Registrar
) -> None:
    ids = [receive(db, mail_bytes(subject=f"Request {n}")) for n in range(5)]
    failing = _FailsOn(registrar, "Request 2")
    pipeline = pipeline_for(db, cast(Registrar, failing))
    assert pipeline.work_all() == 5
    states = [item(db, i).state for i in ids]
    assert states == [InboundState.DONE] * 2 + [InboundState.FAILED] + [InboundState.DONE] * 2
    bad = item(db, ids[2])
    assert (bad.attempts, bad.ticket_id) == (1, None)
    assert bad.error == "RuntimeError: the desk tripped over this one"
    # Its ticket, acknowledgement and journal were rolled back with it; the others stay.
    with db.transaction() as session:
        subjects = session.scalars(select(Ticket.subject).order_by(Ticket.id)).all()
        inbound_of_messages = session.scalars(select(Message.inbound_id)).all()
    assert subjects == ["Request 0", "Request 1", "Request 3", "Request 4"]
    assert sorted(inbound_of_messages) == [ids[0], ids[1], ids[3], ids[4]]
    assert count(db, OutboxItem) == 4
    assert count(db, JournalEntry) == 4  # "registered"; no staff to assign


def test_a_reply_in_the_same_batch_follows_up_the_ticket_of_the_mail_it_answers(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    first = receive(db, mail_bytes(subject="Calls drop", message_id="<first@acme.example>"))
    reply = receive(
        db, mail_bytes(subject="Re: Calls drop", body="Again", in_reply_to="<first@acme.example>")
    )
    assert pipeline.work_all() == 2
    assert item(db, first).ticket_id == item(db, reply).ticket_id is not None
    assert count(db, Ticket) == 1


def test_a_reply_in_the_same_batch_as_the_set_aside_mail_it_answers_does_not_wait(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    # The batch's marks are written at its end: the set-aside mail is finished already.
    away = receive(
        db,
        mail_bytes(
            subject="Calls drop",
            message_id="<away@acme.example>",
            headers={"Auto-Submitted": "auto-replied"},
        ),
    )
    reply = receive(db, mail_bytes(subject="Re: Calls drop", in_reply_to="<away@acme.example>"))
    assert pipeline.work_all() == 2
    assert item(db, away).state is InboundState.IGNORED
    assert item(db, reply).state is InboundState.DONE
    assert count(db, Ticket) == 1


def _statements(db: Database, work: Callable[[], object]) -> list[str]:
    """The SQL that ``work`` sends."""
    sent: list[str] = []

    def note(*args: object) -> None:
        sent.append(str(args[2]))

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        work()
    finally:
        event.remove(db.engine, "before_cursor_execute", note)
    return sent


def test_a_batch_is_marked_in_one_statement_and_each_mail_looked_up_in_one(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    first = receive(db, mail_bytes(subject="Calls drop", message_id="<first@acme.example>"))
    reply = receive(
        db, mail_bytes(subject="Re: Calls drop", body="Again", in_reply_to="<first@acme.example>")
    )
    away = receive(db, mail_bytes(subject="Away", headers={"Auto-Submitted": "auto-replied"}))
    others = [receive(db, mail_bytes(subject=f"Request {n}")) for n in range(3)]
    sent = _statements(db, pipeline.work_all)
    assert [item(db, i).state for i in (first, reply, away, *others)] == [
        InboundState.DONE,
        InboundState.DONE,
        InboundState.IGNORED,
        *[InboundState.DONE] * 3,
    ]
    marks = [s for s in sent if s.startswith("UPDATE inbound") and "processed_at" in s]
    assert len(marks) == 2
    # The mails set aside by a rule ask nothing; the others one statement each.
    lookups = [s for s in sent if re.search(r"\.message_id (=|IN)", s)]
    assert len(lookups) == 5


def test_a_backlog_is_worked_off_batch_after_batch_in_one_go(
    db: Database, seed: Seed, pipeline: Pipeline
) -> None:
    ids = [receive(db, mail_bytes(subject=f"Request {n}")) for n in range(BATCH * 2 + 1)]
    assert pipeline.work_all() == len(ids)


def test_a_backlog_of_large_mails_is_worked_off_in_one_go(
    db: Database, seed: Seed, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each claim takes one (the byte bound), and leaves the others due: a backlog, which
    # is worked off at once rather than a mail per poll.
    monkeypatch.setattr("intake.pipeline.BATCH_BYTES", 3000)
    ids = [receive(db, mail_bytes(subject=f"Large {n}", body="x " * 1000)) for n in range(3)]
    assert pipeline.work_all() == 3
    assert [item(db, i).state for i in ids] == [InboundState.DONE] * 3


def test_a_batch_whose_lease_was_taken_over_leaves_that_item_alone(
    db: Database, seed: Seed, registrar: Registrar
) -> None:
    ids = [receive(db, mail_bytes(subject=f"Request {n}")) for n in range(3)]
    with db.transaction() as session:
        slow = inbound.items(session, inbound.claim(session, now=T0, limit=3))
    with db.transaction() as session:
        taken_over = inbound.claim(session, now=T0 + inbound.DEFAULT_LEASE, limit=1)
        (fast,) = inbound.items(session, taken_over)
    assert fast.id == ids[0]
    pipeline = pipeline_for(db, registrar)
    pipeline.process(slow)
    assert [item(db, i).state for i in ids] == [InboundState.PROCESSING] + [InboundState.DONE] * 2
    pipeline.process([fast])
    assert [item(db, i).state for i in ids] == [InboundState.DONE] * 3
    assert count(db, Ticket) == 3


# --- mail that waits for what decides its fate ----------------------------------------------


@pytest.fixture
def clock() -> list[dt.datetime]:
    return [dt.datetime.now(dt.UTC)]


@pytest.fixture
def timed(db: Database, desk: Desk, tmp_path: Path, clock: list[dt.datetime]) -> Pipeline:
    """A pipeline whose registrar and claims both read ``clock``."""
    return pipeline_for(db, make_registrar(desk, tmp_path, clock=lambda: clock[0]), clock=clock)


def _claimed_elsewhere(db: Database, at: dt.datetime) -> InboundItem:
    """The first pending item, claimed as another worker would, and left in its hands."""
    with db.transaction() as session:
        (taken,) = inbound.items(session, inbound.claim(session, now=at))
    return taken


def test_a_reply_waits_while_the_mail_it_answers_is_still_being_processed(
    db: Database, seed: Seed, timed: Pipeline, clock: list[dt.datetime]
) -> None:
    first = receive(db, mail_bytes(subject="Calls drop", message_id="<first@acme.example>"))
    original = _claimed_elsewhere(db, clock[0])
    reply = receive(
        db, mail_bytes(subject="Re: Calls drop", body="Again", in_reply_to="<first@acme.example>")
    )
    assert timed.work_all() == 1
    held = item(db, reply)
    assert (held.state, held.attempts, held.ticket_id) == (InboundState.PENDING, 0, None)
    assert held.reason == f"waits for inbound {first} (the mail it answers, <first@acme.example>)"
    assert held.next_attempt_at == clock[0] + dt.timedelta(seconds=1)
    assert count(db, Ticket) == 0
    # Not before its time.
    assert timed.work_all() == 0

    timed.process([original])
    clock[0] += dt.timedelta(seconds=1)
    assert timed.work_all() == 1
    followed = item(db, reply)
    assert followed.state is InboundState.DONE
    assert followed.reason is None
    assert followed.ticket_id == item(db, first).ticket_id is not None
    assert count(db, Ticket) == 1


def test_a_reply_to_a_mail_that_failed_waits_for_its_retry(
    db: Database, seed: Seed, desk: Desk, tmp_path: Path, clock: list[dt.datetime]
) -> None:
    first = receive(db, mail_bytes(subject="Calls drop", message_id="<first@acme.example>"))
    failing = _FailsOn(make_registrar(desk, tmp_path, clock=lambda: clock[0]), "Calls drop")
    assert pipeline_for(db, cast(Registrar, failing), clock=clock).work_all() == 1
    retry_at = item(db, first).next_attempt_at
    assert item(db, first).state is InboundState.FAILED
    assert retry_at is not None

    reply = receive(
        db, mail_bytes(subject="Re: Calls drop", body="Again", in_reply_to="<first@acme.example>")
    )
    timed = pipeline_for(db, make_registrar(desk, tmp_path, clock=lambda: clock[0]), clock=clock)
    assert timed.work_all() == 1
    assert item(db, reply).next_attempt_at == retry_at + dt.timedelta(seconds=1)

    # At the retry the original is taken first, and the reply follows it up in the batch.
    clock[0] = retry_at + dt.timedelta(seconds=1)
    assert timed.work_all() == 2
    assert item(db, reply).ticket_id == item(db, first).ticket_id is not None
    assert count(db, Ticket) == 1


def test_two_mails_that_answer_each_other_do_not_wait_for_each_other(
    db: Database, seed: Seed, timed: Pipeline, clock: list[dt.datetime]
) -> None:
    one = receive(
        db,
        mail_bytes(
            subject="One", message_id="<one@acme.example>", in_reply_to="<two@acme.example>"
        ),
    )
    two = receive(
        db,
        mail_bytes(
            subject="Two", message_id="<two@acme.example>", in_reply_to="<one@acme.example>"
        ),
    )
    assert timed.work_all() == 2
    # The first waits for the second, which does not wait for one that waits.
    assert item(db, one).state is InboundState.PENDING
    assert item(db, two).state is InboundState.DONE
    clock[0] += dt.timedelta(seconds=1)
    assert timed.work_all() == 1
    assert item(db, one).ticket_id == item(db, two).ticket_id is not None
    assert count(db, Ticket) == 1


def test_a_reply_held_in_a_batch_that_is_done_again_is_held_again(
    db: Database, seed: Seed, desk: Desk, tmp_path: Path, clock: list[dt.datetime]
) -> None:
    # Another mail of the batch fails, so the batch runs again with a savepoint per item:
    # the reply's first hold was rolled back with the rest, and it must still be ours.
    receive(db, mail_bytes(subject="Calls drop", message_id="<first@acme.example>"))
    _claimed_elsewhere(db, clock[0])
    reply = receive(
        db, mail_bytes(subject="Re: Calls drop", body="Again", in_reply_to="<first@acme.example>")
    )
    boom = receive(db, mail_bytes(subject="Boom"))
    failing = _FailsOn(make_registrar(desk, tmp_path, clock=lambda: clock[0]), "Boom")
    assert pipeline_for(db, cast(Registrar, failing), clock=clock).work_all() == 2
    assert item(db, boom).state is InboundState.FAILED
    held = item(db, reply)
    assert (held.state, held.attempts) == (InboundState.PENDING, 0)
    assert held.next_attempt_at == clock[0] + dt.timedelta(seconds=1)


def test_a_reply_waits_no_longer_than_the_limit(
    db: Database, seed: Seed, timed: Pipeline, clock: list[dt.datetime]
) -> None:
    receive(db, mail_bytes(subject="Stuck", message_id="<stuck@acme.example>"))
    _claimed_elsewhere(db, clock[0])
    reply = receive(
        db, mail_bytes(subject="Re: Stuck", body="Hello?", in_reply_to="<stuck@acme.example>")
    )
    with db.transaction() as session:
        session.get_one(InboundItem, reply).received_at = clock[0] - dt.timedelta(
            hours=1, seconds=1
        )
    assert timed.work_all() == 1
    assert item(db, reply).state is InboundState.DONE
    assert count(db, Ticket) == 1


def test_a_mail_answering_nothing_stored_does_not_wait(
    db: Database, seed: Seed, timed: Pipeline
) -> None:
    # Its answered mail was never received here (or is done and was set aside).
    reply = receive(
        db, mail_bytes(subject="Re: old thread", in_reply_to="<never-seen@acme.example>")
    )
    assert timed.work_all() == 1
    assert item(db, reply).state is InboundState.DONE


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_same_mail_from_two_sources_at_once_on_postgresql_is_registered_once(
    db_url: URL, db: Database, seed: Seed, timed: Pipeline, clock: list[dt.datetime]
) -> None:
    raw = mail_bytes(subject="Once", message_id="<once@acme.example>")
    first = receive(db, raw, ref="<once@acme.example>")
    copy = receive(db, raw, ref="imap:support:1:7")
    # Another worker holds the first copy while this one takes the second.
    original = _claimed_elsewhere(db, clock[0])
    assert timed.work_all() == 1
    held = item(db, copy)
    assert held.state is InboundState.PENDING
    assert held.reason == (
        f"waits for inbound {first} (the same mail received earlier through another source)"
    )
    timed.process([original])
    clock[0] += dt.timedelta(seconds=1)
    assert timed.work_all() == 1
    assert item(db, copy).state is InboundState.IGNORED
    assert count(db, Ticket) == 1


# --- the customer's answer to a solution ----------------------------------------------------


@pytest.fixture
def told(db: Database, tmp_path: Path) -> tuple[Desk, Pipeline]:
    """A desk whose staff chat hears of customers' mail, and a pipeline on it."""
    desk = Desk(dataclasses.replace(RULES, staff_chats=(100,)))
    return desk, pipeline_for(db, make_registrar(desk, tmp_path))


def _resolved(db: Database, desk: Desk, pipeline: Pipeline) -> Ticket:
    ticket = registered(db, mail_bytes(subject="Calls drop"), pipeline)
    with db.transaction() as session:
        current = session.get_one(Ticket, ticket.id)
        desk.apply(session, current, "take", actor="alice")
        desk.apply(session, current, "resolve", actor="alice", note="Update the softphone.")
    return ticket


def _answer(db: Database, pipeline: Pipeline, ticket: Ticket, body: str, **fields: Any) -> None:
    registered(
        db, mail_bytes(subject=f"Re: [{ticket.number}] Solution", body=body, **fields), pipeline
    )


def _told(db: Database, ticket_id: int) -> list[tuple[str, str | None]]:
    """What the customer was mailed and the staff told, after the solution."""
    with db.transaction() as session:
        rows = session.scalars(
            select(OutboxItem).where(OutboxItem.ticket_id == ticket_id).order_by(OutboxItem.id)
        ).all()
        return [(row.template, (row.payload or {}).get("verdict")) for row in rows][-2:]


def _status(db: Database, ticket_id: int) -> tuple[Status, CloseReason | None]:
    with db.transaction() as session:
        current = session.get_one(Ticket, ticket_id)
        return current.status, current.close_reason


def test_a_responsible_contacts_confirmation_closes_the_resolved_ticket(
    db: Database, seed: Seed, told: tuple[Desk, Pipeline]
) -> None:
    desk, pipeline = told
    ticket = _resolved(db, desk, pipeline)
    _answer(db, pipeline, ticket, "Добрый день! Подтверждаю, всё работает.")
    assert _status(db, ticket.id) == (Status.CLOSED, CloseReason.CONFIRMED)
    journal = _journal(db, ticket.id)
    assert journal[-2:] == ["follow_up_received", "status_changed"]
    assert _told(db, ticket.id) == [("status_closed", None), ("follow_up", "confirmed")]
    with db.transaction() as session:
        closed = session.get_one(Ticket, ticket.id)
        assert closed.closed_at is not None
        assert closed.resolved_at is not None


def test_a_confirmation_from_a_contact_who_is_not_responsible_is_recorded_and_staff_told(
    db: Database, seed: Seed, told: tuple[Desk, Pipeline]
) -> None:
    desk, pipeline = told
    with db.transaction() as session:
        add_contact(session, "Acme", email="boris@acme.example", name="Boris")
    ticket = _resolved(db, desk, pipeline)
    _answer(db, pipeline, ticket, "Confirmed.", sender="Boris <boris@acme.example>")
    assert _status(db, ticket.id) == (Status.RESOLVED, None)
    with db.transaction() as session:
        refused = session.scalars(
            select(JournalEntry).where(JournalEntry.action == "confirmation_refused")
        ).one()
    assert refused.details["sender"] == "boris@acme.example"
    assert _told(db, ticket.id)[-1] == ("follow_up", "not_responsible")


def test_an_argued_objection_reopens_the_resolved_ticket(
    db: Database, seed: Seed, told: tuple[Desk, Pipeline]
) -> None:
    desk, pipeline = told
    ticket = _resolved(db, desk, pipeline)
    _answer(db, pipeline, ticket, "Не подтверждаю: после обновления софтфон всё так же молчит.")
    assert _status(db, ticket.id) == (Status.IN_PROGRESS, None)
    with db.transaction() as session:
        reopened = session.get_one(Ticket, ticket.id)
        assert reopened.resolved_at is None
        last = session.scalars(
            select(JournalEntry)
            .where(JournalEntry.ticket_id == ticket.id)
            .order_by(JournalEntry.id.desc())
        ).first()
    assert last is not None
    assert last.details["event"] == "reopen"
    assert _told(db, ticket.id) == [("status_in_progress", None), ("follow_up", "reopened")]


@pytest.mark.parametrize(
    ("sender", "status", "judged"),
    [
        # A colleague at the customer's domain, not a contact yet, speaks for the customer.
        ("Boris <boris@acme.example>", Status.IN_PROGRESS, "reopened"),
        # Someone outside the customer who found the thread does not reopen its ticket.
        ("Mallory <mallory@elsewhere.example>", Status.RESOLVED, "not_customer"),
    ],
)
def test_only_the_customers_people_reopen_a_resolved_ticket(
    db: Database,
    seed: Seed,
    told: tuple[Desk, Pipeline],
    sender: str,
    status: Status,
    judged: str,
) -> None:
    desk, pipeline = told
    with db.transaction() as session:
        session.get_one(Customer, seed.customer_id).domains = "acme.example"
    ticket = _resolved(db, desk, pipeline)
    _answer(db, pipeline, ticket, "It is still broken after the update.", sender=sender)
    assert _status(db, ticket.id) == (status, None)
    assert _told(db, ticket.id)[-1] == ("follow_up", judged)


def test_one_unknown_sender_does_not_reopen_anothers_ticket(
    db: Database, seed: Seed, told: tuple[Desk, Pipeline]
) -> None:
    # Unknown senders are all contacts of the one "unassigned" customer.
    desk, pipeline = told
    asked = registered(db, mail_bytes(subject="Calls drop", sender="x@stranger.example"), pipeline)
    registered(db, mail_bytes(subject="Other", sender="mallory@elsewhere.example"), pipeline)
    with db.transaction() as session:
        current = session.get_one(Ticket, asked.id)
        desk.apply(session, current, "take", actor="alice")
        desk.apply(session, current, "resolve", actor="alice", note="Update the softphone.")
    broken = "It is still broken after the update."
    _answer(db, pipeline, asked, broken, sender="Mallory <mallory@elsewhere.example>")
    assert _status(db, asked.id) == (Status.RESOLVED, None)
    assert _told(db, asked.id)[-1] == ("follow_up", "not_customer")
    # The one who asked does.
    _answer(db, pipeline, asked, broken, sender="X <x@stranger.example>")
    assert _status(db, asked.id) == (Status.IN_PROGRESS, None)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ("Confirmed.", Status.CLOSED, CloseReason.CONFIRMED),
        ("It is still broken after the update.", Status.IN_PROGRESS, None),
    ],
)
def test_the_responsible_contacts_address_is_hers_in_any_case(
    db: Database,
    seed: Seed,
    told: tuple[Desk, Pipeline],
    body: str,
    status: Status,
    reason: CloseReason | None,
) -> None:
    # Her mail server writes Anna@ where the desk knows anna@.
    desk, pipeline = told
    ticket = _resolved(db, desk, pipeline)
    _answer(db, pipeline, ticket, body, sender="Anna <Anna@acme.example>")
    assert _status(db, ticket.id) == (status, reason)


@pytest.mark.parametrize(
    ("result", "status", "judged"),
    [
        ("mx.intake.test; dmarc=pass header.from=acme", Status.CLOSED, "confirmed"),
        ("mx.intake.test; dmarc=fail header.from=acme", Status.RESOLVED, "unauthenticated"),
        # Only our own server's word counts.
        ("mx.other.example; dmarc=pass header.from=acme", Status.RESOLVED, "unauthenticated"),
        (None, Status.RESOLVED, "unauthenticated"),
    ],
)
def test_where_configured_only_a_sender_our_server_vouches_for_may_confirm(
    db: Database,
    seed: Seed,
    tmp_path: Path,
    result: str | None,
    status: Status,
    judged: str,
) -> None:
    desk = Desk(dataclasses.replace(RULES, staff_chats=(100,)))
    registrar = make_registrar(desk, tmp_path, authserv_id="mx.intake.test")
    pipeline = pipeline_for(db, registrar)
    ticket = _resolved(db, desk, pipeline)
    headers = {"Authentication-Results": result} if result is not None else {}
    _answer(db, pipeline, ticket, "Confirmed.", headers=headers)
    assert _status(db, ticket.id)[0] is status
    assert _told(db, ticket.id)[-1] == ("follow_up", judged)


def test_thanks_leave_the_resolved_ticket_waiting_for_confirmation(
    db: Database, seed: Seed, told: tuple[Desk, Pipeline]
) -> None:
    desk, pipeline = told
    ticket = _resolved(db, desk, pipeline)
    _answer(db, pipeline, ticket, "Thanks, it works!")
    assert _status(db, ticket.id) == (Status.RESOLVED, None)
    assert _journal(db, ticket.id)[-1] == "follow_up_received"
    assert _told(db, ticket.id)[-1] == ("follow_up", "acknowledged")


@pytest.mark.parametrize(
    ("body", "status", "judged"),
    [
        # The reply splitter takes a lone "Thanks!" with the name after it as signature.
        (
            "Thanks!\n\nJohn Smith\nIT manager\nAcme Corp\nPhone +1 555 0100",
            Status.RESOLVED,
            "acknowledged",
        ),
        ("Спасибо, проблема решена", Status.RESOLVED, "acknowledged"),
        # A screenshot alone: nothing said, and the staff are told all the same.
        ("", Status.RESOLVED, "acknowledged"),
        # "Confirm" in it, but what it confirms is the problem.
        ("I confirm the problem is still there.", Status.IN_PROGRESS, "reopened"),
        # Confirmed at the top, and an answer written inside the quote.
        (
            "Confirmed.\n\n> Did the reports page recover?\nNo\n",
            Status.RESOLVED,
            "acknowledged",
        ),
        # Confirmed, and something wrong after the signature.
        (
            "Подтверждаю.\n\nС уважением,\nИван Петров\nP.S. Отчёты пустые",
            Status.RESOLVED,
            "acknowledged",
        ),
    ],
)
def test_only_a_plain_confirmation_closes_and_only_what_is_wrong_reopens(
    db: Database, seed: Seed, told: tuple[Desk, Pipeline], body: str, status: Status, judged: str
) -> None:
    desk, pipeline = told
    ticket = _resolved(db, desk, pipeline)
    _answer(db, pipeline, ticket, body)
    assert _status(db, ticket.id) == (status, None)
    assert _told(db, ticket.id)[-1] == ("follow_up", judged)


def test_a_reply_to_a_closed_ticket_is_kept_and_changes_nothing(
    db: Database, seed: Seed, told: tuple[Desk, Pipeline]
) -> None:
    desk, pipeline = told
    ticket = _resolved(db, desk, pipeline)
    _answer(db, pipeline, ticket, "Confirmed.")
    _answer(db, pipeline, ticket, "It is broken again!")
    assert _status(db, ticket.id) == (Status.CLOSED, CloseReason.CONFIRMED)
    assert _messages(db, ticket.id)[-1] == "It is broken again!"


# --- workers taking turns -------------------------------------------------------------------


class _Holds(_OnSubject):
    """A registrar that holds the mail with one subject until the test lets it go."""

    def __init__(self, registrar: Registrar, subject: str) -> None:
        super().__init__(registrar, subject)
        self.holding = threading.Event()
        self.release = threading.Event()

    def on_subject(self, registered: Callable[[], Outcome]) -> Outcome:
        self.holding.set()
        self.release.wait(30)
        return registered()


def _noting_claims(pipeline: Pipeline) -> list[list[int]]:
    """The ids of each batch that ``pipeline`` claims from now on."""
    claimed: list[list[int]] = []
    claim = pipeline._claim

    def claim_and_note(session: Session) -> Any:
        batch = claim(session)
        if batch.items:
            claimed.append([i.id for i in batch.items])
        return batch

    pipeline._claim = claim_and_note  # type: ignore[method-assign]
    return claimed


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_mail_arriving_while_a_worker_has_a_batch_in_hand_goes_into_its_next_batch(
    db_url: URL, db: Database, seed: Seed, registrar: Registrar
) -> None:
    held = _Holds(registrar, "Calls drop")
    committed = asyncio.Event()
    pipeline = Pipeline(
        db,
        cast(Registrar, held),
        workers=4,
        max_attempts=3,
        poll_interval=3600,
        gather=0,
        after_commit=committed.set,
    )
    claimed = _noting_claims(pipeline)
    first = receive(db, mail_bytes(subject="Calls drop"))
    stopping = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stopping))
    try:
        assert await asyncio.to_thread(held.holding.wait, 30)
        # Each is stored while the loop is free for the idle workers to wake and look.
        later = []
        for n in range(3):
            raw = mail_bytes(subject=f"Request {n}")
            later.append(await asyncio.to_thread(receive, db, raw))
            pipeline.wakeup.set()
        held.release.set()
        async with asyncio.timeout(30):
            while count(db, Ticket) < 4:
                await committed.wait()
                committed.clear()
    finally:
        stopping.set()
        held.release.set()
        await task
    # The other workers waited their turn, and the three gathered into one batch.
    assert claimed == [[first], later]


async def test_a_worker_wakes_when_a_mail_put_back_to_wait_is_due(
    db: Database, seed: Seed, registrar: Registrar
) -> None:
    committed = asyncio.Event()
    pipeline = Pipeline(
        db, registrar, workers=1, max_attempts=3, poll_interval=3600, after_commit=committed.set
    )
    first = receive(db, mail_bytes(subject="Calls drop", message_id="<first@acme.example>"))
    original = _claimed_elsewhere(db, dt.datetime.now(dt.UTC))
    reply = receive(
        db, mail_bytes(subject="Re: Calls drop", body="Again", in_reply_to="<first@acme.example>")
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stopping))
    try:
        async with asyncio.timeout(30):
            while item(db, reply).reason is None:
                await committed.wait()
                committed.clear()
            # The mail it answers is registered meanwhile, and nobody tells the worker.
            await asyncio.to_thread(pipeline.process, [original])
            # Due a second after it was put back, not at the next poll an hour away.
            while item(db, reply).state is not InboundState.DONE:
                await committed.wait()
                committed.clear()
    finally:
        stopping.set()
        await task
    assert item(db, reply).ticket_id == item(db, first).ticket_id is not None
