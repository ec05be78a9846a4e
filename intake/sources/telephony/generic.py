"""Generic CTI, compatible with Zammad's: a PBX set up for Zammad only changes the host.

The PBX posts ``newCall``, ``answer`` and ``hangup`` to ``/api/v1/cti/<token>`` as a form
(``user[]`` for several users) or JSON. An optional body signature, on when a secret is
configured: ``X-Telephony-Timestamp`` (unix seconds) and ``X-Telephony-Signature:
v1=<base64url(HMAC-SHA256(secret, timestamp + "." + body))>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from intake.config import GenericCtiSettings
from intake.sources.telephony.base import (
    AdapterContext,
    Invalid,
    Normalised,
    Reply,
    Route,
    Unauthorized,
    WebhookRequest,
    check_text,
    digits,
    equal,
)
from intake.sources.telephony.model import KIND_SEQUENCE, CallEvent, EventKind, e164
from storage.models import CallDirection, CallOutcome

REPLAY_WINDOW = 300
ACCEPTED = Reply.json({})
REJECT = Reply.json({"action": "reject", "reason": "busy"})

EVENTS = {"newCall": EventKind.RINGING, "answer": EventKind.ANSWERED, "hangup": EventKind.ENDED}
DIRECTIONS = {"in": CallDirection.IN, "out": CallDirection.OUT}
# Zammad's hangup causes. normalClearing says nothing about whether anyone answered: the
# call's own history decides that.
CAUSES: Mapping[str, CallOutcome | None] = {
    "normalClearing": None,
    "busy": CallOutcome.BUSY,
    "cancel": CallOutcome.CANCELLED,
    "noAnswer": CallOutcome.MISSED,
    "congestion": CallOutcome.FAILED,
    "notFound": CallOutcome.FAILED,
    "forwarded": CallOutcome.ANSWERED,
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value (base64url, unpadded)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


class GenericCti:
    name = "generic"
    description = "Generic CTI (Zammad-compatible): newCall / answer / hangup"

    def __init__(self, settings: GenericCtiSettings, context: AdapterContext) -> None:
        if settings.token is None:
            raise ValueError("needs token_env or token_credential")
        self.token = settings.token.read()
        self.secret = settings.signature_secret.read() if settings.signature_secret else None
        self.region = context.default_region
        self.blocked = frozenset(e164(n, self.region) or n for n in settings.blocked_numbers)
        self.routes = (
            Route(
                "POST",
                "/api/v1/cti/{token}",
                "Call event from a PBX (Zammad Generic CTI)",
                ("application/x-www-form-urlencoded", "multipart/form-data", "application/json"),
                headers=("X-Telephony-Timestamp", "X-Telephony-Signature") if self.secret else (),
            ),
        )

    def verify(self, request: WebhookRequest, now: float) -> None:
        if not equal(request.match_info.get("token", ""), self.token):
            raise Unauthorized("unknown token")
        if self.secret is None:
            return
        timestamp = request.header("X-Telephony-Timestamp") or ""
        given = request.header("X-Telephony-Signature") or ""
        seconds = digits(timestamp, 12)
        if seconds is None or not given:
            raise Unauthorized("X-Telephony-Timestamp and X-Telephony-Signature are required")
        if abs(now - seconds) > REPLAY_WINDOW:
            raise Unauthorized("X-Telephony-Timestamp is outside the 300 s window")
        if not equal(given.rstrip("="), sign(self.secret, timestamp, request.body)):
            raise Unauthorized("X-Telephony-Signature does not match the body")

    def normalise(self, request: WebhookRequest) -> Normalised:
        fields = _fields(request)
        event = _one(fields, "event")
        kind = EVENTS.get(event)
        if kind is None:
            raise Invalid(f"unknown event '{event}' (newCall, answer, hangup)")
        direction = DIRECTIONS.get(_one(fields, "direction"))
        if direction is None:
            raise Invalid("direction must be 'in' or 'out'")
        call_id = _one(fields, "callId")
        if not call_id:
            raise Invalid("callId is required")
        users = [u for u in _many(fields, "user") if u]
        cause = _one(fields, "cause") or None
        call = CallEvent(
            provider=self.name,
            call_id=call_id,
            kind=kind,
            sequence=KIND_SEQUENCE[kind],
            direction=direction,
            from_number=_one(fields, "from"),
            to_number=_one(fields, "to"),
            agent=", ".join(users) or _one(fields, "answeringNumber") or None,
            queue=_one(fields, "queue") or None,
            outcome=CAUSES.get(cause) if cause else None,
            cause=cause,
        )
        source_ref = f"{call_id}:{event}"
        # Parsing the number is the dearest step of a request: only when it can be refused.
        if direction is CallDirection.IN and self.blocked:
            caller = e164(call.caller, self.region) or call.caller
            if caller in self.blocked:
                # The PBX is told to reject the call when it rings; what it posts of the
                # call after that (its hangup, busy) is kept but changes nothing, so that
                # a blocked caller registers no missed call either.
                reply = REJECT if kind is EventKind.RINGING else ACCEPTED
                return Normalised(reply, source_ref, ignored=f"blocked number {caller}")
        return Normalised(ACCEPTED, source_ref, (call,))


def _fields(request: WebhookRequest) -> Mapping[str, Any]:
    """The request's fields: a JSON object as it is (each field is checked when read), or
    a form's fields as lists of values (``user[]`` read as ``user``)."""
    if request.content_type == "application/json":
        data = request.json()
        if not isinstance(data, dict):
            raise Invalid("the JSON body must be an object")
        return data
    fields: dict[str, list[str]] = {}
    for key, value in request.form():
        fields.setdefault(key.removesuffix("[]"), []).append(value)
    return fields


def _one(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if type(value) is str:
        return _text(key, value)
    values = _strings(key, value)
    return _text(key, values[0]) if values else ""


def _many(fields: Mapping[str, Any], key: str) -> list[str]:
    value = fields.get(key)
    if value is None:
        return []
    return [_text(key, v) for v in ([value] if type(value) is str else _strings(key, value))]


def _strings(key: str, value: Any) -> list[str]:
    # JSON: a string, a number, or a list of them.
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
        raise Invalid(f"{key} must be a string or a list of strings")
    return [str(v) for v in values]


def _text(key: str, value: str) -> str:
    # What no column can hold is refused now, by the PBX's own name for the field, rather
    # than failing in the worker (fit_for_storage checks every adapter's events again).
    check_text(key, value)
    return value.strip()
