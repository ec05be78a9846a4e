"""The generic (Zammad-compatible) CTI adapter, end to end over HTTP into the desk."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from intake.calls import CallRecorder, Work
from intake.desk import Desk
from intake.directory import add_customer
from intake.http import WORKER, create_app, http_context
from intake.sources.telephony.base import WebhookRequest
from intake.sources.telephony.generic import sign
from storage import inbound
from storage.db import Database
from storage.migrate import upgrade
from storage.models import (
    Call,
    CallOutcome,
    CallState,
    Channel,
    Contact,
    InboundItem,
    InboundState,
    JournalEntry,
    OutboxItem,
    Priority,
    Ticket,
)
from tests.intake.conftest import RULES, Seed, register
from tests.intake.telephony.conftest import (
    CTI_SECRET,
    CTI_TOKEN,
    ClientFactory,
    processed,
    settings_with,
)

URL = f"/api/v1/cti/{CTI_TOKEN}"
CALLER = "+7 (916) 123-45-67"
CALLER_E164 = "+79161234567"


def event(name: str, call_id: str = "c-1", **extra: Any) -> dict[str, Any]:
    return {
        "event": name,
        "from": CALLER,
        "to": "+74951112233",
        "direction": "in",
        "callId": call_id,
        **extra,
    }


async def post(client: TestClient[Any, Any], body: dict[str, Any], **kw: Any) -> Any:
    response = await client.post(URL, json=body, **kw)
    await processed(client)
    return response.status, await response.json()


def tickets(db: Database) -> list[Ticket]:
    with db.transaction() as session:
        return list(session.scalars(select(Ticket).order_by(Ticket.id)))


def the_call(db: Database, call_id: str = "c-1") -> Call:
    with db.transaction() as session:
        return session.scalars(select(Call).where(Call.call_id == call_id)).one()


async def test_answered_call_as_json_is_recorded_and_waits_for_the_operators_log(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client()

    for name, extra in (
        ("newCall", {}),
        ("answer", {"user": "anna"}),
        ("hangup", {"cause": "normalClearing"}),
    ):
        assert await post(client, event(name, **extra)) == (200, {})

    call = the_call(db)
    assert (call.state, call.outcome, call.agent) == (CallState.ENDED, CallOutcome.ANSWERED, "anna")
    assert call.from_number == CALLER_E164
    assert call.answered_at is not None
    assert call.ended_at is not None
    assert tickets(db) == []
    with db.transaction() as session:
        states = session.scalars(
            select(InboundItem.state).where(InboundItem.source == "telephony:generic")
        )
        assert list(states) == [InboundState.DONE] * 3


async def test_form_body_with_user_array_names_every_user(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client()
    form = [*event("newCall").items(), ("user[]", "anna"), ("user[]", "boris")]

    response = await client.post(URL, data=form)
    await processed(client)

    assert response.status == 200
    assert await response.json() == {}
    assert the_call(db).agent == "anna, boris"


async def test_missed_call_registers_exactly_one_ticket_and_notifies_the_staff(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client()

    await post(client, event("newCall"))
    await post(client, event("hangup", cause="noAnswer"))
    await post(client, event("hangup", cause="noAnswer"))

    (ticket,) = tickets(db)
    assert ticket.subject == f"Missed call from {CALLER_E164}"
    assert (ticket.channel, ticket.priority) == (Channel.PHONE, Priority.P2)
    call = the_call(db)
    assert (call.outcome, call.cause, call.ticket_id) == (CallOutcome.MISSED, "noAnswer", ticket.id)
    with db.transaction() as session:
        actions = session.scalars(
            select(JournalEntry.action).where(JournalEntry.ticket_id == ticket.id)
        )
        assert "missed_call" in list(actions)


async def test_missed_call_of_a_caller_with_an_open_ticket_is_journaled_on_it(
    db: Database, make_client: ClientFactory, seed: Seed
) -> None:
    with db.transaction() as session:
        session.get_one(Contact, seed.contact_id).phone = CALLER_E164
    open_ticket = register(db, Desk(RULES), seed)
    client = await make_client()

    await post(client, event("newCall"))
    await post(client, event("hangup", cause="busy"))

    assert [t.number for t in tickets(db)] == [open_ticket.number]
    assert the_call(db).ticket_id == open_ticket.id
    with db.transaction() as session:
        missed = session.scalars(
            select(JournalEntry).where(
                JournalEntry.ticket_id == open_ticket.id, JournalEntry.action == "missed_call"
            )
        ).one()
    assert missed.details["outcome"] == "busy"


async def test_duplicate_and_late_events_change_nothing(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client()
    await post(client, event("newCall"))
    await post(client, event("hangup", cause="cancel"))
    before = the_call(db)

    assert await post(client, event("hangup", cause="cancel")) == (200, {})
    assert await post(client, event("answer", user="late")) == (200, {})

    after = the_call(db)
    assert (after.state, after.outcome, after.agent, after.answered_at) == (
        CallState.ENDED,
        CallOutcome.CANCELLED,
        None,
        None,
    )
    assert after.updated_at == before.updated_at
    assert len(tickets(db)) == 1
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(InboundItem)) == 3


async def test_wrong_token_is_401(make_client: ClientFactory) -> None:
    client = await make_client()

    response = await client.post("/api/v1/cti/not-the-token", json=event("newCall"))

    assert response.status == 401
    assert await response.json() == {"error": "unknown token"}


async def test_unknown_event_and_bad_direction_are_422_with_the_reason(
    make_client: ClientFactory,
) -> None:
    client = await make_client()

    assert await post(client, event("transfer")) == (
        422,
        {"error": "unknown event 'transfer' (newCall, answer, hangup)"},
    )
    assert await post(client, event("newCall", direction="sideways")) == (
        422,
        {"error": "direction must be 'in' or 'out'"},
    )
    # A field that is read must be a string, a number or a list of them.
    assert await post(client, event("answer", user={"name": "anna"})) == (
        422,
        {"error": "user must be a string or a list of strings"},
    )
    assert await post(client, event("answer", call_id=["c-1", True])) == (
        422,
        {"error": "callId must be a string or a list of strings"},
    )


async def test_numbers_and_lists_in_json_fields_are_read_as_text(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client()
    body = event("answer", call_id=4711, user=["anna", 7])
    body["from"] = 79161234567

    assert await post(client, body) == (200, {})
    call = the_call(db, "4711")
    assert (call.agent, call.from_number) == ("anna, 7", CALLER_E164)


async def test_new_call_from_a_blocked_number_is_rejected_as_busy(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client()

    status, body = await post(client, event("newCall", **{"from": "84950000000"}))

    assert (status, body) == (200, {"action": "reject", "reason": "busy"})
    with db.transaction() as session:
        item = session.scalars(select(InboundItem)).one()
    assert (item.state, item.reason) == (InboundState.IGNORED, "blocked number +74950000000")


async def test_what_a_pbx_posts_of_a_rejected_call_afterwards_registers_nothing(
    db: Database, make_client: ClientFactory
) -> None:
    # The PBX rejects the call as told, then posts its hangup (busy): that is no missed call.
    client = await make_client()
    blocked = {"from": "84950000000"}

    assert (await post(client, event("newCall", **blocked)))[1]["action"] == "reject"
    assert await post(client, event("hangup", cause="busy", **blocked)) == (200, {})

    assert tickets(db) == []
    with db.transaction() as session:
        items = session.execute(select(InboundItem.state, InboundItem.reason)).all()
        assert session.scalar(select(func.count()).select_from(Call)) == 0
    assert items == [(InboundState.IGNORED, "blocked number +74950000000")] * 2


def signed_settings() -> Any:
    settings = settings_with()
    generic = settings.telephony.generic.model_copy(update={"signature_secret_env": "CTI_SECRET"})
    return settings.model_copy(
        update={"telephony": settings.telephony.model_copy(update={"generic": generic})}
    )


async def test_signed_body_is_accepted_and_a_bad_or_old_signature_is_401(
    make_client: ClientFactory,
) -> None:
    client = await make_client(signed_settings())
    body = json.dumps(event("newCall")).encode()
    now = str(int(time.time()))

    def headers(timestamp: str, signature: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Telephony-Timestamp": timestamp,
            "X-Telephony-Signature": signature,
        }

    good = await client.post(URL, data=body, headers=headers(now, sign(CTI_SECRET, now, body)))
    padded = await client.post(
        URL, data=body, headers=headers(now, sign(CTI_SECRET, now, body) + "=")
    )
    forged = await client.post(URL, data=body, headers=headers(now, sign("guess", now, body)))
    old = str(int(time.time()) - 301)
    expired = await client.post(URL, data=body, headers=headers(old, sign(CTI_SECRET, old, body)))
    unsigned = await client.post(URL, data=body, headers={"Content-Type": "application/json"})

    assert [r.status for r in (good, padded, forged, expired, unsigned)] == [
        200,
        200,
        401,
        401,
        401,
    ]
    assert (await forged.json())["error"] == "X-Telephony-Signature does not match the body"
    assert (await expired.json())["error"] == "X-Telephony-Timestamp is outside the 300 s window"


async def test_body_over_the_limit_is_413(make_client: ClientFactory) -> None:
    client = await make_client(settings_with(max_body_size=1024))

    response = await client.post(
        URL, data=b"x" * 2048, headers={"Content-Type": "application/json"}
    )

    assert response.status == 413


async def test_the_app_s_worker_acts_on_stored_events_without_being_asked(
    db: Database, telephony_env: None, aiohttp_client: Any
) -> None:
    app = create_app(http_context(settings_with(), db, Desk(RULES)))
    client = await aiohttp_client(app)

    await client.post(URL, json=event("newCall", call_id="bg-1"))
    await client.post(URL, json=event("hangup", call_id="bg-1", cause="noAnswer"))
    await asyncio.wait_for(app[WORKER].idle.wait(), timeout=10)

    assert [t.subject for t in tickets(db)] == [f"Missed call from {CALLER_E164}"]
    with db.transaction() as session:
        states = session.scalars(select(InboundItem.state))
        assert set(states) == {InboundState.DONE}


async def test_event_that_cannot_be_processed_is_kept_failed_and_done_on_retry(
    db: Database, telephony_env: None, aiohttp_client: Any
) -> None:
    # A desk whose default package does not exist cannot add the unknown caller's customer.
    desk = Desk(replace(RULES, default_package="gold"))
    app = create_app(http_context(settings_with(), db, desk), process_events=False)
    client = await aiohttp_client(app)

    assert await post(client, event("newCall", call_id="f-1")) == (200, {})
    assert await post(client, event("hangup", call_id="f-1", cause="noAnswer")) == (200, {})

    with db.transaction() as session:
        item = session.scalars(
            select(InboundItem).where(InboundItem.source_ref == "f-1:hangup")
        ).one()
        assert item.state is InboundState.FAILED
        assert "unknown support package 'gold'" in (item.error or "")
        assert (
            session.scalars(select(Call.state).where(Call.call_id == "f-1")).one()
            is CallState.RINGING
        )
        add_customer(session, "unassigned", package="standard", known_packages=RULES.packages)
        inbound.retry(session, item.id)
    await processed(client)

    assert [t.subject for t in tickets(db)] == [f"Missed call from {CALLER_E164}"]
    assert the_call(db, "f-1").outcome is CallOutcome.MISSED


async def test_events_stored_together_are_applied_in_order_and_once_per_call(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client()
    steps = [
        event("newCall", call_id="t-1"),
        event("newCall", call_id="t-2", **{"from": "+7 916 765-43-21"}),
        event("answer", call_id="t-1", user="anna"),
        event("hangup", call_id="t-2", cause="noAnswer", **{"from": "+7 916 765-43-21"}),
        event("hangup", call_id="t-1", cause="normalClearing"),
        event("hangup", call_id="t-2", cause="noAnswer", **{"from": "+7 916 765-43-21"}),
        event("answer", call_id="t-2", user="late", **{"from": "+7 916 765-43-21"}),
    ]
    for body in steps:
        assert (await client.post(URL, json=body)).status == 200

    await processed(client)

    answered, missed = the_call(db, "t-1"), the_call(db, "t-2")
    assert (answered.state, answered.outcome, answered.agent) == (
        CallState.ENDED,
        CallOutcome.ANSWERED,
        "anna",
    )
    assert (missed.state, missed.outcome, missed.agent) == (
        CallState.ENDED,
        CallOutcome.MISSED,
        None,
    )
    (ticket,) = tickets(db)
    assert (ticket.subject, missed.ticket_id) == ("Missed call from +79167654321", ticket.id)
    with db.transaction() as session:
        states = session.execute(select(InboundItem.source_ref, InboundItem.state)).all()
    assert sorted(states) == sorted(
        [
            ("t-1:newCall", InboundState.DONE),
            ("t-1:answer", InboundState.DONE),
            ("t-1:hangup", InboundState.DONE),
            ("t-2:newCall", InboundState.DONE),
            ("t-2:hangup", InboundState.DONE),
            ("t-2:answer", InboundState.DONE),
        ]
    )


async def test_an_event_that_fails_in_a_batch_is_undone_alone(
    db: Database, telephony_env: None, aiohttp_client: Any
) -> None:
    # A desk whose default package does not exist cannot add the unknown caller's customer.
    desk = Desk(replace(RULES, default_package="gold"))
    app = create_app(http_context(settings_with(), db, desk), process_events=False)
    client = await aiohttp_client(app)
    for body in (
        event("newCall", call_id="ok-1"),
        event("hangup", call_id="f-2", cause="noAnswer"),
        event("hangup", call_id="ok-1", cause="forwarded"),
    ):
        assert (await client.post(URL, json=body)).status == 200

    await processed(client)

    with db.transaction() as session:
        states = {
            ref: state
            for ref, state in session.execute(select(InboundItem.source_ref, InboundItem.state))
        }
        calls = session.scalars(select(Call.call_id)).all()
    assert states == {
        "ok-1:newCall": InboundState.DONE,
        "f-2:hangup": InboundState.FAILED,
        "ok-1:hangup": InboundState.DONE,
    }
    # The call first heard of in the failed event is not kept half-made.
    assert calls == ["ok-1"]
    assert the_call(db, "ok-1").outcome is CallOutcome.ANSWERED
    assert tickets(db) == []


async def test_a_batch_whose_transaction_fails_is_taken_one_item_at_a_time(
    db: Database, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client()
    for name in ("newCall", "answer", "hangup"):
        assert (await client.post(URL, json=event(name, call_id="b-1", user="anna"))).status == 200
    recorder = client.app[WORKER].recorder
    process = recorder.process

    def only_one_at_a_time(session: Session, work: Sequence[Work]) -> None:
        if len(work) > 1:
            raise OperationalError("UPDATE calls", {}, Exception("disk I/O error"))
        process(session, work)

    monkeypatch.setattr(recorder, "process", only_one_at_a_time)
    await processed(client)

    call = the_call(db, "b-1")
    assert (call.state, call.outcome, call.agent) == (CallState.ENDED, CallOutcome.ANSWERED, "anna")
    with db.transaction() as session:
        states = session.scalars(select(InboundItem.state))
        assert list(states) == [InboundState.DONE] * 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"json": event("newCall", call_id="nul-\x00-1")}, "callId"),
        ({"data": [*event("newCall", call_id="nul-2").items(), ("user[]", "an\x00na")]}, "user"),
    ],
    ids=["json callId", "form user[]"],
)
async def test_nul_in_a_text_field_is_422_naming_the_field_and_nothing_is_kept(
    db: Database, make_client: ClientFactory, body: dict[str, Any], field: str
) -> None:
    client = await make_client()

    response = await client.post(URL, **body)
    await processed(client)

    assert response.status == 422
    assert await response.json() == {"error": f"{field} must not contain NUL characters"}
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(InboundItem)) == 0
        assert session.scalar(select(func.count()).select_from(Call)) == 0


async def test_answered_call_of_a_caller_with_an_open_ticket_is_journaled_on_it(
    db: Database, make_client: ClientFactory, seed: Seed
) -> None:
    with db.transaction() as session:
        session.get_one(Contact, seed.contact_id).phone = CALLER_E164
    open_ticket = register(db, Desk(RULES), seed)
    client = await make_client()

    await post(client, event("newCall"))
    await post(client, event("answer", user="anna"))
    await post(client, event("hangup", cause="normalClearing"))

    assert [t.number for t in tickets(db)] == [open_ticket.number]
    assert the_call(db).ticket_id == open_ticket.id
    with db.transaction() as session:
        answered = session.scalars(
            select(JournalEntry).where(
                JournalEntry.ticket_id == open_ticket.id, JournalEntry.action == "call_answered"
            )
        ).one()
    assert (answered.actor, answered.details["agent"]) == ("telephony", "anna")


def staff_notes(db: Database, ticket_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    with db.transaction() as session:
        rows = session.execute(
            select(OutboxItem.template, OutboxItem.recipient, OutboxItem.payload)
            .where(OutboxItem.ticket_id == ticket_id, OutboxItem.channel == "telegram")
            .order_by(OutboxItem.id)
        )
        return [tuple(row) for row in rows]


async def test_missed_calls_queue_the_staff_s_notifications(
    db: Database, telephony_env: None, aiohttp_client: Any, seed: Seed
) -> None:
    desk = Desk(replace(RULES, staff_chats=(100,)))
    with db.transaction() as session:
        session.get_one(Contact, seed.contact_id).phone = "+79167654321"
    open_ticket = register(db, desk, seed)
    app = create_app(http_context(settings_with(), db, desk), process_events=False)
    client = await aiohttp_client(app)
    known = {"from": "+7 916 765-43-21"}

    for body in (
        event("newCall", call_id="s-1"),
        event("hangup", call_id="s-1", cause="noAnswer"),
        event("newCall", call_id="s-2", **known),
        event("hangup", call_id="s-2", cause="noAnswer", **known),
    ):
        assert (await client.post(URL, json=body)).status == 200
    await processed(client)

    new_ticket = next(t for t in tickets(db) if t.id != open_ticket.id)
    assert [(template, chat) for template, chat, _ in staff_notes(db, new_ticket.id)] == [
        ("new_ticket", "100")
    ]
    (follow_up,) = [note for note in staff_notes(db, open_ticket.id) if note[0] == "follow_up"]
    assert follow_up[1:] == (
        "100",
        {
            "number": open_ticket.number,
            "language": RULES.default_language,
            "message": "Missed call from +79167654321",
        },
    )


async def test_a_header_that_is_not_utf8_is_kept_as_received_and_read_again_from_it(
    db: Database, make_client: ClientFactory
) -> None:
    # A PBX writes a caller's name in Latin-1: the event is stored and answered, and the
    # kept request holds the header's bytes as they came.
    client = await make_client()
    body = json.dumps(event("hangup", call_id="l-1", cause="busy")).encode()
    request = (
        f"POST {URL}?note=caf%E9 HTTP/1.1\r\nHost: pbx\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode() + b"X-Caller-Name: Jos\xe9\r\nauthorization: Basic c2VjcmV0\r\n\r\n" + body
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    with db.transaction() as session:
        (item,) = session.scalars(select(InboundItem)).all()
        raw = inbound.raw_of(session, [item.id])[item.id]
    assert b"\r\nX-Caller-Name: Jos\xe9\r\n" in raw
    # What authenticates the request is not kept.
    assert b"c2VjcmV0" not in raw
    again = WebhookRequest.from_raw(raw, route="/api/v1/cti/{token}")
    assert again.to_raw() == raw
    # As the adapter saw it (the query is decoded by aiohttp, the invalid byte replaced).
    assert again.query == {"note": "caf\ufffd"}
    await processed(client)
    assert [t.subject for t in tickets(db)] == [f"Missed call from {CALLER_E164}"]


async def test_with_the_database_locked_every_webhook_is_told_503_after_one_attempt(
    tmp_path: Any, telephony_env: None, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process holds SQLite's write lock past the busy timeout: each request is
    # answered 503 (the provider delivers it again) after its batch's one attempt, not
    # after one more lock timeout per item.
    monkeypatch.setattr("storage.db.SQLITE_BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "locked.sqlite3"
    db = Database.from_url(f"sqlite:///{path}")
    upgrade(db.engine)
    written: list[int] = []
    store = CallRecorder.store

    def counted(recorder: CallRecorder, batch: Sequence[Any]) -> list[bool]:
        written.append(len(batch))
        return store(recorder, batch)

    monkeypatch.setattr(CallRecorder, "store", counted)
    client = await aiohttp_client(
        create_app(http_context(settings_with(), db, Desk(RULES)), process_events=False)
    )
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        bodies = [event("hangup", call_id=f"k-{n}", cause="busy") for n in range(3)]
        answers = await asyncio.gather(*(client.post(URL, json=body) for body in bodies))
        assert [answer.status for answer in answers] == [503, 503, 503]
        assert sum(written) == 3
        blocker.execute("ROLLBACK")
        assert (await client.post(URL, json=bodies[0])).status == 200
    finally:
        blocker.close()
        db.dispose()


async def _raw_post(client: TestClient[Any, Any], head: bytes, body: bytes) -> tuple[int, Any]:
    """POST with header bytes exactly as given (a test client would encode them)."""
    request = (
        f"POST {URL} HTTP/1.1\r\nHost: pbx\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode() + head + b"\r\n" + body
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


MULTIPART = b"multipart/form-data; boundary=b"


@pytest.mark.parametrize(
    ("signed", "head", "body", "answer"),
    [
        (
            False,
            b"Content-Type: application/json\r\n",
            b"[" * 50_000 + b"]" * 50_000,
            (422, "the body is not JSON"),
        ),
        (
            False,
            b"Content-Type: " + MULTIPART + b"\r\n",
            b'--b\r\nContent-Disposition: form-data; name="event"\r\n'
            b"Content-Type: text/plain; charset=bogus\r\n\r\nnewCall\r\n--b--\r\n",
            (422, "a multipart part's charset is unknown: 'bogus'"),
        ),
        (
            True,
            "X-Telephony-Timestamp: \u00b2\r\nX-Telephony-Signature: v1=x\r\n".encode(),
            b"{}",
            (401, "X-Telephony-Timestamp and X-Telephony-Signature are required"),
        ),
        (
            True,
            b"X-Telephony-Timestamp: " + b"9" * 5000 + b"\r\nX-Telephony-Signature: v1=x\r\n",
            b"{}",
            (401, "X-Telephony-Timestamp and X-Telephony-Signature are required"),
        ),
        (
            True,
            b"X-Telephony-Timestamp: %d\r\nX-Telephony-Signature: v1=\xff\r\n"
            % int(time.time()),
            b"{}",
            (401, "X-Telephony-Signature does not match the body"),
        ),
    ],
    ids=[
        "JSON nested 50,000 deep",
        "unknown multipart charset",
        "timestamp of a digit that is not 0-9",
        "timestamp of 5,000 digits",
        "signature that is not UTF-8",
    ],
)
async def test_hostile_requests_are_refused_with_the_reason_never_a_server_error(
    db: Database,
    make_client: ClientFactory,
    signed: bool,
    head: bytes,
    body: bytes,
    answer: tuple[int, str],
) -> None:
    client = await make_client(signed_settings() if signed else None)

    status, reply = await _raw_post(client, head, body)

    assert (status, reply) == (answer[0], {"error": answer[1]})
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(InboundItem)) == 0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"callId": "\ud800"}, "callId is not valid text (it holds a lone surrogate)"),
        ({"from": "+7\udfff"}, "from is not valid text (it holds a lone surrogate)"),
        ({"callId": "c" * 201}, "call_id is longer than 200 characters"),
    ],
    ids=["lone surrogate in callId", "lone surrogate in from", "long callId"],
)
async def test_a_value_no_column_can_hold_is_422_naming_it_on_every_backend(
    db: Database, make_client: ClientFactory, fields: dict[str, str], reason: str
) -> None:
    # Stored, such a value failed on PostgreSQL only (kept on SQLite), or in the worker on
    # every attempt, or made the store fail and the PBX retry for ever on a 503.
    client = await make_client()
    body = json.dumps(event("hangup", cause="busy", **fields)).encode()

    response = await client.post(URL, data=body, headers={"Content-Type": "application/json"})
    await processed(client)

    assert (response.status, await response.json()) == (422, {"error": reason})
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(InboundItem)) == 0


async def test_texts_only_shown_longer_than_their_column_are_cut_and_kept_whole_as_received(
    db: Database, make_client: ClientFactory
) -> None:
    # The agents a call rang, and a caller that is no phone number (Twilio's client
    # identities run to 128 characters).
    client = await make_client()
    users = [f"agent-{n:03d}" for n in range(40)]
    caller = "client:" + "support-desk-" * 8

    assert await post(client, event("newCall", user=users, **{"from": caller})) == (200, {})

    call = the_call(db)
    assert call.agent is not None
    assert (len(call.agent), call.agent[:20], call.agent[-1]) == (200, "agent-000, agent-001", "…")
    assert call.from_number == caller[:63] + "…"
    with db.transaction() as session:
        (item,) = session.scalars(select(InboundItem)).all()
        raw = inbound.raw_of(session, [item.id])[item.id]
    assert b"agent-039" in raw


async def test_a_store_that_fails_for_its_request_is_500_not_503(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 503 tells the sender to retry: only when the database itself is away.
    def refuse(recorder: CallRecorder, batch: Sequence[Any]) -> list[bool]:
        raise ValueError("a value the database refuses")

    monkeypatch.setattr(CallRecorder, "store", refuse)
    client = await make_client()
    response = await client.post(URL, json=event("newCall"))

    assert (response.status, await response.json()) == (
        500,
        {"error": "the event could not be stored"},
    )


@pytest.mark.parametrize("together", [False, True], ids=["one at a time", "in one batch"])
async def test_an_answered_call_of_a_caller_known_since_it_began_is_journaled_however_batched(
    db: Database, make_client: ClientFactory, together: bool
) -> None:
    # A new number's missed call adds its contact and ticket; the same caller's next call,
    # begun before that, is answered: journaled on that ticket, whether the worker took
    # the events one at a time or all in one batch.
    client = await make_client()
    steps = [
        event("newCall", call_id="A"),
        event("newCall", call_id="B"),
        event("hangup", call_id="A", cause="noAnswer"),
        event("answer", call_id="B", user="anna"),
        event("hangup", call_id="B", cause="normalClearing"),
    ]
    for body in steps:
        assert (await client.post(URL, json=body)).status == 200
        if not together:
            await processed(client)
    await processed(client)

    (ticket,) = tickets(db)
    answered = the_call(db, "B")
    assert (answered.contact_id, answered.ticket_id) == (ticket.contact_id, ticket.id)
    with db.transaction() as session:
        actions = session.scalars(
            select(JournalEntry.action)
            .where(JournalEntry.ticket_id == ticket.id)
            .order_by(JournalEntry.id)
        ).all()
    assert [a for a in actions if a.startswith(("missed", "call"))] == [
        "missed_call",
        "call_answered",
    ]
