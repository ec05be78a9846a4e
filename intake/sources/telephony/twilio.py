"""Twilio voice status callbacks (form POSTs), signed with ``X-Twilio-Signature``.

The signature is base64(HMAC-SHA1(auth token, URL + every POST parameter sorted by name,
name and value concatenated)); the URL is the one Twilio was given, so a deployment
behind a proxy configures its public base URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit

from intake.config import TwilioSettings
from intake.sources.telephony.base import (
    AdapterContext,
    Invalid,
    Normalised,
    Reply,
    Route,
    Unauthorized,
    WebhookRequest,
    digits,
    equal,
)
from intake.sources.telephony.model import KIND_SEQUENCE, CallEvent, EventKind
from storage.models import CallDirection, CallOutcome

STATUSES: dict[str, tuple[EventKind, CallOutcome | None]] = {
    "queued": (EventKind.RINGING, None),
    "initiated": (EventKind.RINGING, None),
    "ringing": (EventKind.RINGING, None),
    "in-progress": (EventKind.ANSWERED, None),
    "completed": (EventKind.ENDED, None),
    "busy": (EventKind.ENDED, CallOutcome.BUSY),
    "no-answer": (EventKind.ENDED, CallOutcome.MISSED),
    "canceled": (EventKind.ENDED, CallOutcome.CANCELLED),
    "failed": (EventKind.ENDED, CallOutcome.FAILED),
}


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class Twilio:
    name = "twilio"
    description = "Twilio voice status callbacks"
    routes = (Route("POST", "/api/v1/telephony/twilio/status", "Twilio call status callback"),)

    def __init__(self, settings: TwilioSettings, context: AdapterContext) -> None:
        if settings.auth_token is None:
            raise ValueError("needs auth_token_env or auth_token_credential")
        self.auth_token = settings.auth_token.read()
        self.public_base_url = settings.public_base_url

    def _public_url(self, url: str) -> str:
        if self.public_base_url is None:
            return url
        parts = urlsplit(url)
        return self.public_base_url + parts.path + (f"?{parts.query}" if parts.query else "")

    def verify(self, request: WebhookRequest, now: float) -> None:
        given = request.header("X-Twilio-Signature") or ""
        expected = signature(self.auth_token, self._public_url(request.url), request.form())
        if not given or not equal(given, expected):
            raise Unauthorized("X-Twilio-Signature does not match")

    def normalise(self, request: WebhookRequest) -> Normalised:
        fields = dict(request.form())
        sid = fields.get("CallSid", "")
        status = fields.get("CallStatus", "")
        if not sid:
            raise Invalid("CallSid is required")
        if status not in STATUSES:
            raise Invalid(f"unknown CallStatus '{status}'")
        kind, outcome = STATUSES[status]
        if status == "completed":
            outcome = CallOutcome.ANSWERED
        sequence_number = fields.get("SequenceNumber", "")
        sequence = digits(sequence_number) if sequence_number else None
        if sequence_number and sequence is None:
            raise Invalid("SequenceNumber must be a number")
        duration = fields.get("CallDuration", "")
        direction = fields.get("Direction", "inbound")
        event = CallEvent(
            provider=self.name,
            call_id=sid,
            kind=kind,
            # Twilio counts its callbacks from 0; without the count the status orders them.
            sequence=sequence + 1 if sequence is not None else KIND_SEQUENCE[kind],
            direction=CallDirection.IN if direction == "inbound" else CallDirection.OUT,
            from_number=fields.get("From", ""),
            to_number=fields.get("To", ""),
            duration=digits(duration, 9),
            outcome=outcome,
            cause=status,
            recording_url=fields.get("RecordingUrl") or None,
        )
        ref = f"{sid}:{status}:{sequence_number}"
        return Normalised(Reply(200, b"", "text/plain"), ref, (event,))
