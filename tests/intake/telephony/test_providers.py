"""Each provider adapter, verified against a signer that is not ours, end to end over HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import FormData
from multidict import CIMultiDict
from nacl.signing import SigningKey
from sqlalchemy import insert, select, text, update
from twilio.request_validator import RequestValidator

from intake import calls
from intake.config import TelnyxSettings
from intake.http import CONTEXT
from intake.sources.telephony.base import AdapterContext, WebhookRequest
from intake.sources.telephony.telnyx import Telnyx
from storage.db import Database
from storage.models import (
    Call,
    CallDirection,
    CallOutcome,
    CallState,
    InboundItem,
    InboundState,
    JournalEntry,
    Ticket,
)
from tests.intake.telephony.conftest import (
    CTI_TOKEN,
    OPERATOR_TOKEN,
    PROVIDERS,
    ClientFactory,
    processed,
    settings_with,
    settled,
)

TWILIO_TOKEN = "twilio-auth-token-0123"
ZADARMA_SECRET = "zadarma-secret"
MANGO_KEY, MANGO_SALT = "mango-key", "mango-salt"


@pytest.fixture(autouse=True)
def provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_TOKEN", TWILIO_TOKEN)
    monkeypatch.setenv("ZADARMA_SECRET", ZADARMA_SECRET)
    monkeypatch.setenv("MANGO_KEY", MANGO_KEY)
    monkeypatch.setenv("MANGO_SALT", MANGO_SALT)


def the_call(db: Database, provider: str) -> Call:
    with db.transaction() as session:
        return session.scalars(select(Call).where(Call.provider == provider)).one()


def subjects(db: Database) -> list[str]:
    with db.transaction() as session:
        return list(session.scalars(select(Ticket.subject)))


# --- Twilio -----------------------------------------------------------------------------------

TWILIO_PATH = "/api/v1/telephony/twilio/status"
PUBLIC = "https://intake.example.com"


def twilio_params(status: str, sequence: int, **extra: str) -> dict[str, str]:
    return {
        "CallSid": "CA0123456789abcdef",
        "AccountSid": "AC0123",
        "CallStatus": status,
        "From": "+79161234567",
        "To": "+74951112233",
        "Direction": "inbound",
        "SequenceNumber": str(sequence),
        **extra,
    }


async def twilio_client(make_client: ClientFactory) -> Any:
    """A client of the app with Twilio enabled, behind a proxy at PUBLIC."""
    twilio = {**PROVIDERS["twilio"], "public_base_url": PUBLIC}
    return await make_client(settings_with({"twilio": twilio}))


async def twilio_post(
    client: Any, params: dict[str, str], url: str = PUBLIC + TWILIO_PATH
) -> Any:
    """The callback posted as Twilio signs it for ``url`` (its own validator's signature)."""
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, params)
    headers = {"X-Twilio-Signature": signature}
    return await client.post(TWILIO_PATH, data=params, headers=headers)


async def test_twilio_callback_signed_by_twilio_s_validator_is_accepted_behind_a_proxy(
    db: Database, make_client: ClientFactory
) -> None:
    client = await twilio_client(make_client)

    async def post(params: dict[str, str], url: str = PUBLIC + TWILIO_PATH) -> int:
        return int((await twilio_post(client, params, url)).status)

    assert await post(twilio_params("ringing", 0)) == 200
    assert await post(twilio_params("no-answer", 1)) == 200
    assert await post(twilio_params("ringing", 2), url="http://127.0.0.1" + TWILIO_PATH) == 401
    forged = twilio_params("in-progress", 3)
    validator = RequestValidator(TWILIO_TOKEN)
    forged_signature = validator.compute_signature(PUBLIC + TWILIO_PATH, twilio_params("busy", 3))
    response = await client.post(
        TWILIO_PATH, data=forged, headers={"X-Twilio-Signature": forged_signature}
    )
    assert response.status == 401

    await processed(client)
    call = the_call(db, "twilio")
    assert (call.state, call.outcome, call.cause) == (
        CallState.ENDED,
        CallOutcome.MISSED,
        "no-answer",
    )
    # Told once the child calls of a <Dial> it may have had have had time to tell of theirs.
    assert call.tell_at is not None
    assert subjects(db) == []

    await settled(client)

    assert the_call(db, "twilio").tell_at is None
    assert subjects(db) == ["Missed call from +79161234567"]


async def test_a_call_the_desk_cannot_be_told_of_when_it_is_due_is_told_later(
    db: Database, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await twilio_client(make_client)
    params = twilio_params("no-answer", 0)
    assert (await twilio_post(client, params)).status == 200

    def cannot(*args: object) -> None:
        raise RuntimeError("the desk is away")

    with monkeypatch.context() as patched:
        patched.setattr(calls._DeskWork, "tell", cannot)
        before = dt.datetime.now(dt.UTC)
        await settled(client)

    tell_at = the_call(db, "twilio").tell_at
    assert tell_at is not None
    assert tell_at >= before + calls.LEG_WAIT
    assert subjects(db) == []

    await settled(client)

    assert subjects(db) == ["Missed call from +79161234567"]


async def test_a_call_is_not_told_before_the_events_that_arrived_in_time_are_applied(
    db: Database, make_client: ClientFactory
) -> None:
    # A backlog of stored events may hold a child call's final callback, received within
    # the settle time but not yet applied when that time has passed.
    client = await twilio_client(make_client)

    parent = twilio_params("completed", 0, CallDuration="45")
    assert (await twilio_post(client, parent)).status == 200
    await processed(client)
    child = {"CallSid": "CA_child", "ParentCallSid": "CA0123456789abcdef"}
    params = twilio_params("no-answer", 0, Direction="outbound-dial", **child)
    assert (await twilio_post(client, params)).status == 200
    with db.transaction() as session:
        received_at = session.scalars(
            select(InboundItem.received_at).where(InboundItem.source_ref.startswith("CA_child"))
        ).one()
        session.execute(
            update(Call).values(tell_at=received_at + dt.timedelta(milliseconds=1))
        )
    recorder = client.app[CONTEXT].recorder

    with db.transaction() as session:
        assert recorder.tell_settled(session, ["telephony:twilio"]) == (0, False)
    assert subjects(db) == []

    await settled(client)

    assert the_call(db, "twilio").outcome is CallOutcome.MISSED
    assert subjects(db) == ["Missed call from +79161234567"]


async def test_a_twilio_recording_heard_of_after_the_call_was_told_is_journaled(
    db: Database, make_client: ClientFactory
) -> None:
    client = await twilio_client(make_client)
    recording = "https://api.twilio.com/2010-04-01/Accounts/AC0123/Recordings/RE01"
    for params in [
        twilio_params("no-answer", 0),
        twilio_params("no-answer", 1, RecordingUrl=recording),
    ]:
        assert (await twilio_post(client, params)).status == 200
        await settled(client)

    call = the_call(db, "twilio")
    assert call.recording_url == recording
    with db.transaction() as session:
        actions = session.scalars(
            select(JournalEntry.action).where(JournalEntry.ticket_id == call.ticket_id)
        ).all()
    assert actions[-2:] == ["missed_call", "call_recording"]


async def test_calls_that_cannot_be_told_hold_up_no_events(
    db: Database,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await twilio_client(make_client)

    def cannot(*args: object) -> None:
        raise RuntimeError("no settled calls today")

    monkeypatch.setattr(calls.CallRecorder, "tell_settled", cannot)
    params = twilio_params("ringing", 0)
    assert (await twilio_post(client, params)).status == 200

    await processed(client)

    assert the_call(db, "twilio").state is CallState.RINGING
    # Applied in their batch, not item by item as after a failed batch.
    assert "one by one" not in caplog.text
    with db.transaction() as session:
        assert [item.state for item in session.scalars(select(InboundItem))] == [
            InboundState.DONE
        ]


@pytest.mark.parametrize(
    ("agent", "outcome", "missed"),
    [
        ("no-answer", CallOutcome.MISSED, ["Missed call from +79161234567"]),
        ("completed", CallOutcome.ANSWERED, []),
    ],
    ids=["no agent answered", "an agent answered"],
)
@pytest.mark.parametrize("parent_first", [False, True], ids=["child first", "parent first"])
async def test_a_twilio_call_its_dial_rang_agents_for_is_answered_only_if_an_agent_answered(
    db: Database,
    make_client: ClientFactory,
    agent: str,
    outcome: CallOutcome,
    missed: list[str],
    parent_first: bool,
) -> None:
    # TwiML answers the caller's call ("completed" when it ends, with its whole duration),
    # and its <Dial> rings an agent on a child call: the caller reached a person only if
    # the child call was answered. Twilio posts only "completed" unless asked for more,
    # and the two calls' callbacks may come in either order.
    client = await twilio_client(make_client)
    child = {
        "CallSid": "CA_child",
        "ParentCallSid": "CA0123456789abcdef",
        "Direction": "outbound-dial",
        "From": "+74951112233",
        "To": "+74957654321",
        "Timestamp": "Thu, 26 Nov 2026 10:00:40 +0000",
    }
    callbacks = [
        twilio_params(agent, 0, CallDuration="30" if agent == "completed" else "0", **child),
        twilio_params(
            "completed", 0, CallDuration="45", Timestamp="Thu, 26 Nov 2026 10:00:45 +0000"
        ),
    ]
    for params in reversed(callbacks) if parent_first else callbacks:
        assert (await twilio_post(client, params)).status == 200
        # Each applied on its own.
        await processed(client)
    assert subjects(db) == []

    await settled(client)

    call = the_call(db, "twilio")
    assert (call.call_id, call.direction, call.from_number, call.outcome) == (
        "CA0123456789abcdef",
        CallDirection.IN,
        "+79161234567",
        outcome,
    )
    assert call.ended_at == dt.datetime(2026, 11, 26, 10, 0, 45, tzinfo=dt.UTC)
    if outcome is CallOutcome.ANSWERED:
        # The conversation: the agent's child call, 30 s.
        assert call.duration == 30
    assert subjects(db) == missed


async def test_a_twilio_callback_with_a_timestamp_that_is_no_time_is_applied_as_it_comes(
    db: Database, make_client: ClientFactory
) -> None:
    # The Timestamp only says when the event fired; refused, the event would be lost
    # (Twilio does not deliver a refused callback again).
    client = await twilio_client(make_client)
    params = twilio_params("no-answer", 0, Timestamp="yesterday")
    before = dt.datetime.now(dt.UTC)

    response = await twilio_post(client, params)
    await settled(client)

    assert response.status == 200
    ended_at = the_call(db, "twilio").ended_at
    assert ended_at is not None
    assert ended_at >= before
    assert subjects(db) == ["Missed call from +79161234567"]


@pytest.mark.parametrize(
    ("configured", "signed"),
    [
        ("https://intake.example.com", "https://intake.example.com:443"),
        ("https://intake.example.com:443", "https://intake.example.com"),
        ("https://intake.example.com:8443", "https://intake.example.com"),
    ],
    ids=["signed with :443", "signed without :443", "signed without its port"],
)
async def test_twilio_signing_with_or_without_the_port_is_accepted_as_its_validator_does(
    make_client: ClientFactory, configured: str, signed: str
) -> None:
    # Twilio's signing is not consistent about the port; its own validator tries both.
    settings = settings_with(
        {
            "twilio": {
                "enabled": True,
                "auth_token_env": "TWILIO_TOKEN",
                "public_base_url": configured,
            }
        }
    )
    client = await make_client(settings)
    validator = RequestValidator(TWILIO_TOKEN)
    params = twilio_params("ringing", 0)
    given = validator.compute_signature(signed + TWILIO_PATH, params)
    assert validator.validate(configured + TWILIO_PATH, params, given)

    accepted = await client.post(TWILIO_PATH, data=params, headers={"X-Twilio-Signature": given})
    forged = await client.post(
        TWILIO_PATH,
        data=params,
        headers={"X-Twilio-Signature": validator.compute_signature("https://evil.example", params)},
    )

    assert (accepted.status, forged.status) == (200, 401)


async def test_a_signed_event_with_a_nul_in_a_field_is_refused_naming_it_and_not_kept(
    db: Database, make_client: ClientFactory
) -> None:
    # Authentic, but PostgreSQL's text cannot hold NUL: kept, it would fail in the worker
    # on every attempt; refused, the provider's log names the field.
    client = await twilio_client(make_client)
    for field, params in [
        ("from_number", twilio_params("ringing", 0, From="+7916\x001234567")),
        ("call_id", twilio_params("ringing", 0, CallSid="CA01\x0023")),
    ]:
        response = await twilio_post(client, params)
        assert response.status == 422
        assert field in (await response.json())["error"]
    await processed(client)
    with db.transaction() as session:
        assert session.scalars(select(Call)).all() == []
        assert session.scalars(select(InboundItem)).all() == []


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"SequenceNumber": "\u00b2"}, "SequenceNumber must be a number"),
        ({"SequenceNumber": "9" * 5000}, "SequenceNumber must be a number"),
        ({"SequenceNumber": "9" * 19}, "SequenceNumber must be a number"),
    ],
    ids=["a digit that is not 0-9", "5,000 digits", "past the column's range"],
)
async def test_a_signed_twilio_callback_with_an_odd_number_is_422_not_a_server_error(
    db: Database, make_client: ClientFactory, fields: dict[str, str], reason: str
) -> None:
    client = await twilio_client(make_client)
    params = {**twilio_params("ringing", 0), **fields, "CallDuration": "\u00b3"}

    response = await twilio_post(client, params)

    assert (response.status, await response.json()) == (422, {"error": reason})
    with db.transaction() as session:
        assert session.scalars(select(InboundItem)).all() == []


# --- Telnyx -----------------------------------------------------------------------------------

TELNYX_PATH = "/api/v1/telephony/telnyx"


def telnyx_event(kind: str, event_id: str, **payload: Any) -> bytes:
    return json.dumps(
        {
            "data": {
                "record_type": "event",
                "event_type": kind,
                "id": event_id,
                "occurred_at": "2026-11-25T10:00:00.000000Z",
                "payload": {
                    "call_control_id": "v3:abc",
                    "call_leg_id": "leg-1",
                    "call_session_id": "session-1",
                    # As Telnyx sends it: only call.initiated says which way the call goes.
                    **({"direction": "incoming"} if kind == "call.initiated" else {}),
                    "from": "+79161234567",
                    "to": "+74951112233",
                    **payload,
                },
            }
        }
    ).encode()


async def telnyx_client(make_client: ClientFactory) -> tuple[Any, SigningKey]:
    """A client of the app with Telnyx enabled, and the key its events are signed with."""
    key = SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    client = await make_client(settings_with({"telnyx": {"enabled": True, "public_key": public}}))
    return client, key


async def telnyx_post(
    client: Any, key: SigningKey, body: bytes, timestamp: int | None = None
) -> Any:
    """The body posted as Telnyx signs it (Ed25519 over "{timestamp}|{body}")."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = key.sign(f"{timestamp}|".encode() + body).signature
    headers = {
        "Content-Type": "application/json",
        "telnyx-timestamp": str(timestamp),
        "telnyx-signature-ed25519": base64.b64encode(signed).decode(),
    }
    return await client.post(TELNYX_PATH, data=body, headers=headers)


async def test_telnyx_event_signed_with_ed25519_is_accepted_and_a_forged_or_old_one_refused(
    db: Database, make_client: ClientFactory
) -> None:
    client, key = await telnyx_client(make_client)

    async def post(body: bytes, timestamp: int, signer: SigningKey = key) -> int:
        return int((await telnyx_post(client, signer, body, timestamp)).status)

    now = int(time.time())
    assert await post(telnyx_event("call.initiated", "e-1"), now) == 200
    assert await post(telnyx_event("call.answered", "e-2"), now) == 200
    assert (
        await post(telnyx_event("call.hangup", "e-3", hangup_cause="normal_clearing"), now) == 200
    )
    assert await post(telnyx_event("call.hangup", "e-4"), now, SigningKey.generate()) == 401
    assert await post(telnyx_event("call.hangup", "e-5"), now - 301) == 401

    await processed(client)
    call = the_call(db, "telnyx")
    assert (call.call_id, call.outcome, call.cause) == (
        "session-1",
        CallOutcome.ANSWERED,
        "normal_clearing",
    )
    assert subjects(db) == []


async def test_a_signed_telnyx_event_at_a_time_with_no_utc_equivalent_is_422(
    db: Database, make_client: ClientFactory
) -> None:
    # Kept, it failed in the worker on every attempt (kept in UTC, it overflows).
    client, key = await telnyx_client(make_client)
    body = telnyx_event("call.hangup", "e-9", end_time="9999-12-31T23:59:59-23:59")

    response = await telnyx_post(client, key, body)

    assert (response.status, await response.json()) == (422, {"error": "ended_at is out of range"})
    with db.transaction() as session:
        assert session.scalars(select(InboundItem)).all() == []


@pytest.mark.parametrize(
    ("direction", "missed"),
    [("incoming", ["Missed call from +79161234567"]), ("outgoing", [])],
)
async def test_a_telnyx_hangup_applied_before_its_call_initiated_waits_for_the_direction(
    db: Database, make_client: ClientFactory, direction: str, missed: list[str]
) -> None:
    # call.hangup carries no direction: applied first (its call.initiated delivered late),
    # the call was taken for an outbound one, and a missed inbound call made no ticket.
    client, key = await telnyx_client(make_client)
    hangup = telnyx_event("call.hangup", "e-2", hangup_cause="originator_cancel")

    assert (await telnyx_post(client, key, hangup)).status == 200
    await processed(client)
    assert (the_call(db, "telnyx").direction, subjects(db)) == (None, [])

    initiated = telnyx_event("call.initiated", "e-1", direction=direction)
    assert (await telnyx_post(client, key, initiated)).status == 200
    await settled(client)

    call = the_call(db, "telnyx")
    assert (call.direction, call.outcome) == (
        CallDirection.IN if direction == "incoming" else CallDirection.OUT,
        CallOutcome.CANCELLED,
    )
    assert subjects(db) == missed


async def test_a_telnyx_transfer_that_nobody_answered_leaves_the_callers_call_going(
    db: Database, make_client: ClientFactory
) -> None:
    # Every leg of a call session has its call_session_id: the failed transfer leg's
    # hangup ended the caller's call, which rang on.
    client, key = await telnyx_client(make_client)
    transfer = {"call_leg_id": "leg-2", "from": "+74951112233", "to": "+74957654321"}
    for body in [
        telnyx_event("call.initiated", "e-1"),
        telnyx_event("call.initiated", "e-2", direction="outgoing", **transfer),
        telnyx_event("call.hangup", "e-3", hangup_cause="timeout", **transfer),
    ]:
        assert (await telnyx_post(client, key, body)).status == 200
    await processed(client)

    call = the_call(db, "telnyx")
    assert (call.state, call.direction, call.from_number, subjects(db)) == (
        CallState.RINGING,
        CallDirection.IN,
        "+79161234567",
        [],
    )

    ended = telnyx_event(
        "call.hangup", "e-4", hangup_cause="originator_cancel", end_time="2026-11-25T10:00:40Z"
    )
    assert (await telnyx_post(client, key, ended)).status == 200
    await processed(client)
    # Told once Telnyx's settle time has passed (a transfer begun as the caller hung up
    # may yet be heard of).
    assert (the_call(db, "telnyx").tell_at is not None, subjects(db)) == (True, [])
    await settled(client)

    call = the_call(db, "telnyx")
    assert (call.state, call.outcome, call.ended_at) == (
        CallState.ENDED,
        CallOutcome.CANCELLED,
        dt.datetime(2026, 11, 25, 10, 0, 40, tzinfo=dt.UTC),
    )
    assert [(leg["id"], leg["direction"]) for leg in call.legs or ()] == [
        ("leg-1", "in"),
        ("leg-2", "out"),
    ]
    assert subjects(db) == ["Missed call from +79161234567"]


@pytest.mark.parametrize("answered", [False, True], ids=["nobody answered", "agent answered"])
async def test_a_telnyx_transfer_heard_of_after_the_callers_hangup_is_taken_into_account(
    db: Database, make_client: ClientFactory, answered: bool
) -> None:
    # The application answered the caller and transferred the call; the transfer leg's
    # webhooks were delivered after the caller's hangup (Telnyx delivers each on its own).
    client, key = await telnyx_client(make_client)
    transfer = {"call_leg_id": "leg-2", "from": "+74951112233", "to": "+74957654321"}
    caller = [telnyx_event("call.initiated", "e-1")]
    if not answered:
        # Its application answered it (an IVR): that answer does not count once the
        # caller was put through to an agent.
        caller.append(telnyx_event("call.answered", "e-2"))
    caller.append(telnyx_event("call.hangup", "e-5", hangup_cause="normal_clearing"))
    for body in caller:
        assert (await telnyx_post(client, key, body)).status == 200
    await processed(client)
    late = [telnyx_event("call.initiated", "e-3", direction="outgoing", **transfer)]
    if answered:
        late.append(telnyx_event("call.answered", "e-4", **transfer))
    late.append(telnyx_event("call.hangup", "e-6", hangup_cause="normal_clearing", **transfer))
    for body in late:
        assert (await telnyx_post(client, key, body)).status == 200

    await settled(client)

    call = the_call(db, "telnyx")
    assert call.outcome is (CallOutcome.ANSWERED if answered else CallOutcome.MISSED)
    assert subjects(db) == ([] if answered else ["Missed call from +79161234567"])


async def test_a_providers_settle_time_is_configured_in_its_table(
    db: Database, make_client: ClientFactory
) -> None:
    key = SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    table = {"enabled": True, "public_key": public, "settle_seconds": 0}
    client = await make_client(settings_with({"telnyx": table}))
    for body in [
        telnyx_event("call.initiated", "e-1"),
        telnyx_event("call.hangup", "e-2", hangup_cause="originator_cancel"),
    ]:
        assert (await telnyx_post(client, key, body)).status == 200

    await processed(client)

    assert subjects(db) == ["Missed call from +79161234567"]


async def test_a_telnyx_event_without_its_leg_is_a_leg_of_its_own(
    db: Database, make_client: ClientFactory
) -> None:
    # Taken for the whole call, a transfer leg's hangup that named no leg ended it.
    client, key = await telnyx_client(make_client)
    transfer = {"from": "+74951112233", "to": "+74957654321"}
    for body in [
        telnyx_event("call.initiated", "e-1"),
        telnyx_event("call.initiated", "e-2", direction="outgoing", call_leg_id="leg-2"),
        telnyx_event("call.hangup", "e-3", hangup_cause="timeout", call_leg_id=None, **transfer),
    ]:
        assert (await telnyx_post(client, key, body)).status == 200
    await processed(client)
    assert (the_call(db, "telnyx").state, subjects(db)) == (CallState.RINGING, [])

    ended = telnyx_event("call.hangup", "e-4", hangup_cause="originator_cancel")
    assert (await telnyx_post(client, key, ended)).status == 200
    # Leg 2 was heard of ringing, and its end (told as a leg of its own) never: waited for.
    await settled(client)

    call = the_call(db, "telnyx")
    assert (call.state, call.outcome) == (CallState.ENDED, CallOutcome.CANCELLED)
    assert subjects(db) == ["Missed call from +79161234567"]


async def test_a_telnyx_call_in_progress_when_its_legs_began_to_be_told_apart_goes_on(
    db: Database, make_client: ClientFactory
) -> None:
    # As the worker left it before migration 0011, after the caller's call.initiated.
    now = dt.datetime.now(dt.UTC)
    with db.transaction() as session:
        session.execute(
            insert(Call).values(
                provider="telnyx",
                call_id="session-1",
                direction=CallDirection.IN,
                from_number="+79161234567",
                to_number="+74951112233",
                state=CallState.RINGING,
                started_at=now,
                last_sequence=1,
                created_at=now,
                updated_at=now,
            )
        )
    client, key = await telnyx_client(make_client)

    body = telnyx_event("call.hangup", "e-9", hangup_cause="originator_cancel")
    assert (await telnyx_post(client, key, body)).status == 200
    await processed(client)

    assert subjects(db) == ["Missed call from +79161234567"]
    with db.transaction() as session:
        # No legs: SQL NULL, not JSON null.
        assert session.execute(text("SELECT legs IS NULL FROM calls")).scalar_one()


async def test_no_secret_reaches_the_log(
    db: Database, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Secrets come from the environment or credentials and are compared, never logged:
    # not the CTI token in its URL, not a signing key, not an operator's bearer token.
    caplog.set_level(logging.DEBUG)
    client = await make_client(settings_with(PROVIDERS))
    call = {"from": "+79161234567", "to": "+74951112233", "direction": "in", "callId": "s-1"}
    for event in ({"event": "newCall"}, {"event": "hangup", "cause": "noAnswer"}):
        assert (await client.post(f"/api/v1/cti/{CTI_TOKEN}", json={**call, **event})).status == 200
    assert (await client.post(f"/api/v1/cti/{CTI_TOKEN}x", json=call)).status == 401
    unknown = await client.post(f"/api/v1/cti/{CTI_TOKEN}", json={**call, "event": "ring"})
    assert unknown.status == 422
    params = twilio_params("busy", 0)
    twilio = await client.post(TWILIO_PATH, data=params, headers={"X-Twilio-Signature": "x"})
    zadarma = await client.post(
        ZADARMA_PATH, data=ZADARMA_FIELDS | {"event": "NOTIFY_START"}, headers={"Signature": "x"}
    )
    mango = await client.post(
        f"{MANGO_PATH}/call",
        data={"vpbx_api_key": MANGO_KEY, "sign": "x", "json": "{}"},
    )
    operator = await client.post(
        "/api/v1/calls", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, json={}
    )
    assert [twilio.status, zadarma.status, mango.status, operator.status] == [401, 401, 401, 422]
    await settled(client)
    assert subjects(db) == ["Missed call from +79161234567"]

    ours = [r for r in caplog.records if r.name.split(".")[0] in ("intake", "storage")]
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in ours)
    assert ours
    for secret in (CTI_TOKEN, OPERATOR_TOKEN, TWILIO_TOKEN, ZADARMA_SECRET, MANGO_SALT):
        assert secret not in logged


# --- Zadarma ----------------------------------------------------------------------------------

ZADARMA_PATH = "/api/v1/telephony/zadarma"


def zadarma_signature(data: str) -> str:
    # Zadarma API, "Incoming call notifications": PHP's
    # base64_encode(hash_hmac('sha1', $caller_id . $called_did . $call_start, API_SECRET)),
    # where hash_hmac returns the digest as lowercase hex.
    return base64.b64encode(
        hmac.new(ZADARMA_SECRET.encode(), data.encode(), hashlib.sha1).hexdigest().encode()
    ).decode()


async def test_zadarma_notifications_signed_as_documented_make_a_missed_call_ticket(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client(
        settings_with({"zadarma": {"enabled": True, "api_secret_env": "ZADARMA_SECRET"}})
    )
    start = {
        "event": "NOTIFY_START",
        "call_start": "2026-11-25 13:00:00",
        "pbx_call_id": "in_0123abcd",
        "caller_id": "79161234567",
        "called_did": "74951112233",
    }
    end = {
        **start,
        "event": "NOTIFY_END",
        "disposition": "busy",
        "duration": "0",
        "status_code": "17",
    }
    signature = zadarma_signature("79161234567" + "74951112233" + "2026-11-25 13:00:00")

    echo = await client.get(ZADARMA_PATH, params={"zd_echo": "e3b0c442"})
    started = await client.post(ZADARMA_PATH, data=start, headers={"Signature": signature})
    form = FormData(end)  # multipart, as Zadarma may send it
    form._is_multipart = True
    ended = await client.post(ZADARMA_PATH, data=form, headers={"Signature": signature})
    forged = await client.post(
        ZADARMA_PATH, data=start, headers={"Signature": zadarma_signature("x")}
    )

    assert (echo.status, await echo.text()) == (200, "e3b0c442")
    assert [started.status, ended.status, forged.status] == [200, 200, 401]
    await processed(client)
    call = the_call(db, "zadarma")
    assert (call.outcome, call.cause, call.from_number) == (
        CallOutcome.BUSY,
        "busy",
        "+79161234567",
    )
    assert subjects(db) == ["Missed call from +79161234567"]


ZADARMA_FIELDS = {
    "call_start": "2026-11-25 13:00:00",
    "pbx_call_id": "in_0123abcd",
    "caller_id": "79161234567",
    "called_did": "74951112233",
    "internal": "101",
    "destination": "79167654321",
    "disposition": "answered",
    "duration": "42",
    "status_code": "16",
    "call_id_with_rec": "1764075600.123456",
}


@pytest.mark.parametrize(
    ("event", "signed"),
    [
        # Zadarma API, "Incoming call notifications": each event's PHP example signs these
        # fields, concatenated in this order.
        ("NOTIFY_START", "79161234567" + "74951112233" + "2026-11-25 13:00:00"),
        ("NOTIFY_INTERNAL", "79161234567" + "74951112233" + "2026-11-25 13:00:00"),
        ("NOTIFY_ANSWER", "79161234567" + "79167654321" + "2026-11-25 13:00:00"),
        ("NOTIFY_END", "79161234567" + "74951112233" + "2026-11-25 13:00:00"),
        ("NOTIFY_OUT_START", "101" + "79167654321" + "2026-11-25 13:00:00"),
        ("NOTIFY_OUT_END", "101" + "79167654321" + "2026-11-25 13:00:00"),
        ("NOTIFY_RECORD", "in_0123abcd" + "1764075600.123456"),
    ],
)
async def test_every_zadarma_notification_is_verified_over_the_fields_zadarma_signs(
    make_client: ClientFactory, event: str, signed: str
) -> None:
    client = await make_client(
        settings_with({"zadarma": {"enabled": True, "api_secret_env": "ZADARMA_SECRET"}})
    )
    fields = {**ZADARMA_FIELDS, "event": event}
    # Signed over fields Zadarma signs for another event: refused.
    other = "101" + "74951112233" + "2026-11-25 13:00:00"

    good = await client.post(
        ZADARMA_PATH, data=fields, headers={"Signature": zadarma_signature(signed)}
    )
    bad = await client.post(
        ZADARMA_PATH, data=fields, headers={"Signature": zadarma_signature(other)}
    )

    assert (good.status, bad.status) == (200, 401)


# --- Mango Office -----------------------------------------------------------------------------

MANGO_PATH = "/api/v1/telephony/mango/events"


def mango_form(payload: dict[str, Any]) -> str:
    # Mango Office VPBX API (section "Подпись запросов"): sign = sha256(vpbx_api_key + json
    # + vpbx_api_salt) in hex, over the json parameter exactly as sent.
    text = json.dumps(payload, ensure_ascii=False)
    sign = hashlib.sha256((MANGO_KEY + text + MANGO_SALT).encode()).hexdigest()
    return urlencode({"vpbx_api_key": MANGO_KEY, "sign": sign, "json": text})


async def test_mango_events_in_seq_order_and_summary_make_a_missed_call_ticket(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client(
        settings_with(
            {"mango": {"enabled": True, "api_key_env": "MANGO_KEY", "api_salt_env": "MANGO_SALT"}}
        )
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    caller = {"number": "79161234567"}
    line = {"number": "74951112233", "line_number": "74951112233"}

    async def post(path: str, payload: dict[str, Any], body: str | None = None) -> int:
        data = body if body is not None else mango_form(payload)
        return (await client.post(f"{MANGO_PATH}/{path}", data=data, headers=headers)).status

    appeared = {
        "entry_id": "ZW50cnk=",
        "call_id": "Y2FsbA==",
        "seq": 1,
        "call_state": "Appeared",
        "from": caller,
        "to": line,
    }
    assert await post("call", appeared) == 200
    assert await post("call", {**appeared, "seq": 3, "call_state": "Disconnected"}) == 200
    assert await post("call", {**appeared, "seq": 2, "call_state": "Connected"}) == 200
    summary = {
        "entry_id": "ZW50cnk=",
        "call_direction": 1,
        "from": caller,
        "to": line,
        "create_time": 1764064800,
        "talk_time": 0,
        "end_time": 1764064830,
        "entry_result": 0,
        "disconnect_reason": 1110,
    }
    assert await post("summary", summary) == 200
    tampered = mango_form(summary).replace("1110", "1111")
    assert await post("summary", summary, body=tampered) == 401

    await processed(client)
    call = the_call(db, "mango")
    assert (call.state, call.outcome, call.cause) == (CallState.ENDED, CallOutcome.MISSED, "1110")
    assert call.answered_at is None
    assert subjects(db) == ["Missed call from +79161234567"]


async def test_mango_recording_of_a_ticketed_call_is_journaled_on_its_ticket_once(
    db: Database, make_client: ClientFactory
) -> None:
    client = await make_client(
        settings_with(
            {"mango": {"enabled": True, "api_key_env": "MANGO_KEY", "api_salt_env": "MANGO_SALT"}}
        )
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    call = {
        "entry_id": "cmVj",
        "from": {"number": "79161234567"},
        "to": {"number": "74951112233", "line_number": "74951112233"},
    }
    recording = {**call, "recording_id": "r1", "recording_state": "Completed"}
    url = "https://records.example.com/r1.mp3"
    for path, payload in (
        ("call", {**call, "call_id": "Y2FsbA==", "seq": 1, "call_state": "Appeared"}),
        ("summary", {**call, "call_direction": 1, "entry_result": 0}),
        ("recording", {**recording, "recording_url": url}),
        ("recording", {**recording, "recording_id": "r1-again", "recording_url": url}),
    ):
        response = await client.post(
            f"{MANGO_PATH}/{path}", data=mango_form(payload), headers=headers
        )
        assert response.status == 200

    await processed(client)

    (ticket,) = ticket_ids(db)
    assert the_call(db, "mango").recording_url == url
    with db.transaction() as session:
        details = list(
            session.scalars(
                select(JournalEntry.details).where(
                    JournalEntry.ticket_id == ticket, JournalEntry.action == "call_recording"
                )
            )
        )
    assert [d["recording_url"] for d in details] == [url]


def ticket_ids(db: Database) -> list[int]:
    with db.transaction() as session:
        return list(session.scalars(select(Ticket.id)))


@pytest.mark.parametrize(
    ("seq", "reason"),
    [(True, "json.seq must be a number"), (2**70, "sequence is out of range")],
    ids=["a boolean", "past the column's range"],
)
async def test_a_signed_mango_event_with_a_seq_no_column_holds_is_422(
    db: Database, make_client: ClientFactory, seq: Any, reason: str
) -> None:
    client = await make_client(
        settings_with(
            {"mango": {"enabled": True, "api_key_env": "MANGO_KEY", "api_salt_env": "MANGO_SALT"}}
        )
    )
    payload = {"entry_id": "ZW50cnk=", "seq": seq, "call_state": "Appeared"}

    response = await client.post(
        f"{MANGO_PATH}/call",
        data=mango_form(payload),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert (response.status, await response.json()) == (422, {"error": reason})
    with db.transaction() as session:
        assert session.scalars(select(InboundItem)).all() == []


@pytest.mark.parametrize(
    ("cause", "outcome"),
    [
        ("normal_clearing", None),
        ("time_limit", None),
        ("unspecified", None),
        ("user_busy", CallOutcome.BUSY),
        ("call_rejected", CallOutcome.BUSY),
        ("originator_cancel", CallOutcome.CANCELLED),
        ("timeout", CallOutcome.MISSED),
        ("no_answer", CallOutcome.MISSED),
        ("not_found", CallOutcome.FAILED),
        ("something_new", CallOutcome.FAILED),
    ],
)
def test_telnyx_hangup_causes_as_telnyx_documents_them(
    cause: str, outcome: CallOutcome | None
) -> None:
    # None: the cause does not say whether anyone answered; the call's history decides
    # (a call that reached its time limit was answered, as a rule).
    public = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    adapter = Telnyx(TelnyxSettings(enabled=True, public_key=public), AdapterContext("RU"))
    body = telnyx_event("call.hangup", "e-1", hangup_cause=cause)
    headers = CIMultiDict({"Content-Type": "application/json"})
    request = WebhookRequest("POST", TELNYX_PATH, TELNYX_PATH, {}, headers, body)

    (event,) = adapter.normalise(request).events

    assert (event.outcome, event.cause) == (outcome, cause)
