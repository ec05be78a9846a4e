"""The operators' call log, POST /api/v1/calls."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from intake.desk import Desk
from storage.db import Database
from storage.models import Call, Channel, JournalEntry, Kind, Message, OutboxItem, Ticket
from tests.intake.conftest import RULES, Seed, register
from tests.intake.telephony.conftest import (
    CTI_TOKEN,
    OPERATOR_TOKEN,
    ClientFactory,
    processed,
)

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


async def test_log_registers_a_ticket_with_an_acknowledgement_when_the_email_is_known(
    db: Database, make_client: ClientFactory, seed: Seed
) -> None:
    client = await make_client()

    response = await client.post(
        "/api/v1/calls",
        headers=AUTH,
        json={
            "email": "anna@acme.example",
            "subject": "Softphone does not ring",
            "description": "Since the update no operator hears incoming calls.",
            "kind": "problem",
            "product": "AgentZone",
            "product_version": "3.2.1",
        },
    )

    assert response.status == 201
    body = await response.json()
    assert body["created"] is True
    with db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == body["number"])).one()
        outbox = session.scalars(select(OutboxItem).where(OutboxItem.channel == "email")).one()
    assert (ticket.channel, ticket.kind, ticket.contact_id) == (
        Channel.PHONE,
        Kind.PROBLEM,
        seed.contact_id,
    )
    assert (ticket.env_product, ticket.env_product_version) == ("AgentZone", "3.2.1")
    assert (outbox.template, outbox.recipient) == ("acknowledgement", "anna@acme.example")


async def test_log_adds_to_an_existing_ticket_and_links_the_call(
    db: Database, make_client: ClientFactory, seed: Seed
) -> None:
    ticket = register(db, Desk(RULES), seed)
    client = await make_client()
    await client.post(
        f"/api/v1/cti/{CTI_TOKEN}",
        json={
            "event": "newCall",
            "from": "+79160000001",
            "to": "+74951112233",
            "direction": "in",
            "callId": "k-9",
        },
    )
    await processed(client)

    response = await client.post(
        "/api/v1/calls",
        headers=AUTH,
        json={
            "ticket": ticket.number.lower(),
            "subject": "Called back",
            "description": "Works now.",
            "call_id": "k-9",
        },
    )

    assert response.status == 200
    assert await response.json() == {"number": ticket.number, "created": False}
    with db.transaction() as session:
        texts = session.scalars(select(Message.text).where(Message.ticket_id == ticket.id))
        call = session.scalars(select(Call).where(Call.call_id == "k-9")).one()
        assert "Works now." in list(texts)
    assert call.ticket_id == ticket.id


async def test_a_call_an_operator_logged_before_it_ended_stays_on_the_operators_ticket(
    db: Database, make_client: ClientFactory, seed: Seed
) -> None:
    # The caller's number is no contact's: told that it ended unanswered, the call made a
    # "Missed call" ticket of its own and left the operator's.
    client = await make_client()
    call = {"from": "+79169999999", "to": "+74951112233", "direction": "in", "callId": "k-7"}
    await client.post(f"/api/v1/cti/{CTI_TOKEN}", json={"event": "newCall", **call})
    await processed(client)
    response = await client.post(
        "/api/v1/calls",
        headers=AUTH,
        json={
            "email": "anna@acme.example",
            "subject": "Called about the softphone",
            "description": "Will call again.",
            "call_id": "k-7",
        },
    )
    number = (await response.json())["number"]

    await client.post(
        f"/api/v1/cti/{CTI_TOKEN}", json={"event": "hangup", "cause": "noAnswer", **call}
    )
    await processed(client)

    with db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        subjects = list(session.scalars(select(Ticket.subject)))
        actions = list(
            session.scalars(select(JournalEntry.action).where(JournalEntry.ticket_id == ticket.id))
        )
        linked = session.scalars(select(Call.ticket_id).where(Call.call_id == "k-7")).one()
    assert subjects == ["Called about the softphone"]
    assert (linked, actions[-1]) == (ticket.id, "missed_call")


async def test_log_names_each_bad_field(make_client: ClientFactory) -> None:
    client = await make_client()

    response = await client.post(
        "/api/v1/calls",
        headers=AUTH,
        json={
            "phone": "12",
            "email": "not-an-address",
            "kind": "urgent",
            "ticket": "OV-1999-000001",
            "color": 1,
        },
    )

    assert response.status == 422
    errors = (await response.json())["errors"]
    assert set(errors) == {"subject", "kind", "color"}
    response = await client.post(
        "/api/v1/calls",
        headers=AUTH,
        json={
            "phone": "12",
            "email": "not-an-address",
            "subject": "x",
            "ticket": "OV-1999-000001",
            "call_id": "nope",
        },
    )
    errors = (await response.json())["errors"]
    assert set(errors) == {"phone", "email", "ticket", "call_id"}
    assert errors["ticket"] == "no ticket OV-1999-000001"


async def test_log_without_a_valid_token_is_401(make_client: ClientFactory) -> None:
    client = await make_client()
    body: dict[str, Any] = {"email": "anna@acme.example", "subject": "x"}

    wrong = await client.post("/api/v1/calls", json=body, headers={"Authorization": "Bearer guess"})
    missing = await client.post("/api/v1/calls", json=body)

    assert (wrong.status, missing.status) == (401, 401)
    assert wrong.headers["WWW-Authenticate"] == "Bearer"


async def test_log_with_text_no_column_holds_or_hostile_bytes_is_refused_not_a_server_error(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client()
    body = b'{"email": "anna@acme.example", "subject": "Crash \\ud800", "description": "x\\u0000"}'

    response = await client.post(
        "/api/v1/calls", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    deep = await client.post("/api/v1/calls", data=b"[" * 50_000, headers=AUTH)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST /api/v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    not_utf8 = await reader.read()
    writer.close()

    assert response.status == 422
    assert await response.json() == {
        "errors": {
            # Pydantic's own refusal of a lone surrogate.
            "subject": "Input should be a valid string, unable to parse raw data as a "
            "unicode string",
            "description": "Value error, must not contain NUL characters",
        }
    }
    assert (deep.status, await deep.json()) == (422, {"errors": {"body": "must be a JSON object"}})
    assert not_utf8.startswith(b"HTTP/1.1 401 ")
    with db.transaction() as session:
        assert session.scalars(select(Ticket)).all() == []
