"""Zadarma PBX notifications (``NOTIFY_*``), form or multipart POSTs.

Header ``Signature`` = base64 of the lowercase hex HMAC-SHA1 (PHP's ``hash_hmac``) of the
fields Zadarma names for each event, concatenated. ``GET ?zd_echo=X`` is Zadarma's check of
the URL and is answered ``X``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from intake.config import ZadarmaSettings
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

# The signed fields of each event, in order (Zadarma API, "Incoming call notifications").
SIGNED: dict[str, tuple[str, ...]] = {
    "NOTIFY_START": ("caller_id", "called_did", "call_start"),
    "NOTIFY_INTERNAL": ("caller_id", "called_did", "call_start"),
    "NOTIFY_END": ("caller_id", "called_did", "call_start"),
    "NOTIFY_ANSWER": ("caller_id", "destination", "call_start"),
    "NOTIFY_OUT_START": ("internal", "destination", "call_start"),
    "NOTIFY_OUT_END": ("internal", "destination", "call_start"),
    "NOTIFY_RECORD": ("pbx_call_id", "call_id_with_rec"),
}
DISPOSITIONS = {
    "answered": CallOutcome.ANSWERED,
    "busy": CallOutcome.BUSY,
    "cancel": CallOutcome.CANCELLED,
    "no answer": CallOutcome.MISSED,
}


def signature(secret: str, event: str, fields: dict[str, str]) -> str:
    data = "".join(fields.get(name, "") for name in SIGNED[event])
    hex_digest = hmac.new(secret.encode(), data.encode(), hashlib.sha1).hexdigest()
    return base64.b64encode(hex_digest.encode()).decode()


class Zadarma:
    name = "zadarma"
    description = "Zadarma PBX call notifications"
    routes = (
        Route(
            "POST",
            "/api/v1/telephony/zadarma",
            "Zadarma call notification",
            headers=("Signature",),
        ),
        Route(
            "GET", "/api/v1/telephony/zadarma", "Zadarma URL check (zd_echo)", (), ("zd_echo",)
        ),
    )

    def __init__(self, settings: ZadarmaSettings, context: AdapterContext) -> None:
        if settings.api_secret is None:
            raise ValueError("needs api_secret_env or api_secret_credential")
        self.secret = settings.api_secret.read()

    def verify(self, request: WebhookRequest, now: float) -> None:
        if request.method == "GET":
            return
        fields = dict(request.form())
        event = fields.get("event", "")
        if event not in SIGNED:
            raise Invalid(f"unknown event '{event}'")
        given = request.header("Signature") or ""
        if not given or not equal(given, signature(self.secret, event, fields)):
            raise Unauthorized("Signature does not match")

    def normalise(self, request: WebhookRequest) -> Normalised:
        if request.method == "GET":
            echo = request.query.get("zd_echo")
            if echo is None:
                raise Invalid("zd_echo is required")
            return Normalised(Reply.text(echo))
        fields = dict(request.form())
        event = fields.get("event", "")
        call_id = fields.get("pbx_call_id", "")
        if event not in SIGNED:
            raise Invalid(f"unknown event '{event}'")
        if not call_id:
            raise Invalid("pbx_call_id is required")
        ref = f"{call_id}:{event}"
        if event in ("NOTIFY_INTERNAL", "NOTIFY_RECORD"):
            # Ringing at an extension adds nothing to the call's start; a recording has to
            # be fetched through Zadarma's API by its id, which is kept with the request.
            return Normalised(Reply.json({}), ref, ignored=f"{event} kept for reference")
        outbound = event.startswith("NOTIFY_OUT_")
        kind = {"NOTIFY_ANSWER": EventKind.ANSWERED}.get(
            event, EventKind.ENDED if event.endswith("_END") else EventKind.RINGING
        )
        disposition = fields.get("disposition") or None
        duration = fields.get("duration", "")
        call = CallEvent(
            provider=self.name,
            call_id=call_id,
            kind=kind,
            sequence=KIND_SEQUENCE[kind],
            direction=CallDirection.OUT if outbound else CallDirection.IN,
            from_number=fields.get("internal" if outbound else "caller_id", ""),
            to_number=fields.get("destination" if outbound else "called_did", ""),
            agent=fields.get("destination")
            if kind is EventKind.ANSWERED
            else fields.get("internal"),
            duration=digits(duration, 9),
            outcome=(DISPOSITIONS.get(disposition, CallOutcome.FAILED) if disposition else None),
            cause=disposition,
        )
        return Normalised(Reply.json({}), ref, (call,))
