"""Telnyx Call Control webhooks: JSON, signed with Ed25519 over ``"{timestamp}|{body}"``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from intake.config import TelnyxSettings
from intake.sources.telephony.base import (
    AdapterContext,
    Invalid,
    Normalised,
    Reply,
    Route,
    Unauthorized,
    WebhookRequest,
    digits,
)
from intake.sources.telephony.model import KIND_SEQUENCE, CallEvent, EventKind
from storage.models import CallDirection, CallOutcome

REPLAY_WINDOW = 300
EVENTS = {
    "call.initiated": EventKind.RINGING,
    "call.answered": EventKind.ANSWERED,
    "call.hangup": EventKind.ENDED,
}
DIRECTIONS = {"incoming": CallDirection.IN, "outgoing": CallDirection.OUT}
# Telnyx's documented hangup causes. None: the cause says nothing of whether anyone
# answered (a call that reached its time limit was, as a rule), and the call's own history
# decides; any other cause is a failure.
CAUSES = {
    "normal_clearing": None,
    "time_limit": None,
    "unspecified": None,
    "user_busy": CallOutcome.BUSY,
    "call_rejected": CallOutcome.BUSY,
    "originator_cancel": CallOutcome.CANCELLED,
    "timeout": CallOutcome.MISSED,
    "no_answer": CallOutcome.MISSED,
    "not_found": CallOutcome.FAILED,
}


class Telnyx:
    name = "telnyx"
    description = "Telnyx Call Control webhooks"
    # Its webhooks are delivered each on its own: a transfer begun as the caller hung up
    # may be heard of after the caller's hangup. The call's end waits this long for it.
    settle = 10.0
    routes = (
        Route(
            "POST",
            "/api/v1/telephony/telnyx",
            "Telnyx call event",
            ("application/json",),
            headers=("telnyx-signature-ed25519", "telnyx-timestamp"),
        ),
    )

    def __init__(self, settings: TelnyxSettings, context: AdapterContext) -> None:
        if settings.public_key is None:
            raise ValueError("needs public_key")
        self.key = VerifyKey(base64.b64decode(settings.public_key))

    def verify(self, request: WebhookRequest, now: float) -> None:
        timestamp = request.header("telnyx-timestamp") or ""
        given = request.header("telnyx-signature-ed25519") or ""
        seconds = digits(timestamp, 12)
        if seconds is None or not given:
            raise Unauthorized("telnyx-timestamp and telnyx-signature-ed25519 are required")
        if abs(now - seconds) > REPLAY_WINDOW:
            raise Unauthorized("telnyx-timestamp is outside the 300 s window")
        try:
            self.key.verify(timestamp.encode() + b"|" + request.body, base64.b64decode(given))
        except (BadSignatureError, binascii.Error, ValueError):
            raise Unauthorized("telnyx-signature-ed25519 does not match the body") from None

    def normalise(self, request: WebhookRequest) -> Normalised:
        body = request.json()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
            raise Invalid('expected {"data": {"event_type", "payload"}}')
        payload: dict[str, Any] = data["payload"]
        event_id = str(data.get("id") or "")
        if not event_id:
            raise Invalid("data.id is required")
        kind = EVENTS.get(str(data.get("event_type")))
        if kind is None:
            return Normalised(Reply.json({}), event_id, ignored=f"event {data.get('event_type')}")
        # A call session holds the caller's leg and a leg for each transfer: the session
        # is the call, and its legs are told apart (intake.calls).
        # A call told without its leg is its own leg (no event should come without it).
        call_id = str(payload.get("call_session_id") or payload.get("call_leg_id") or "")
        if not call_id:
            raise Invalid("data.payload.call_session_id is required")
        leg = str(payload.get("call_leg_id") or "") or call_id
        cause = payload.get("hangup_cause")
        event = CallEvent(
            provider=self.name,
            call_id=call_id,
            kind=kind,
            sequence=KIND_SEQUENCE[kind],
            # Only call.initiated says which way the call goes.
            direction=DIRECTIONS.get(str(payload.get("direction"))),
            from_number=str(payload.get("from") or ""),
            to_number=str(payload.get("to") or ""),
            occurred_at=_time(data.get("occurred_at")),
            started_at=_time(payload.get("start_time")),
            ended_at=_time(payload.get("end_time")),
            outcome=CAUSES.get(cause, CallOutcome.FAILED) if isinstance(cause, str) else None,
            cause=cause if isinstance(cause, str) else None,
            leg=leg,
        )
        return Normalised(Reply.json({}), event_id, (event,))


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"not a time: '{value}'") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
