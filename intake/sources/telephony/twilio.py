"""Twilio voice status callbacks (form POSTs), signed with ``X-Twilio-Signature``.

The signature is base64(HMAC-SHA1(auth token, URL + every POST parameter sorted by name,
name and value concatenated)); the URL is the one Twilio was given (with or without its
port: Twilio signs either), so a deployment behind a proxy configures its public base URL.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import logging
from urllib.parse import urlsplit, urlunsplit

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

log = logging.getLogger(__name__)

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


_DEFAULT_PORTS = {"https": 443, "http": 80}


def _as_signed(url: str) -> tuple[str, ...]:
    """The URL as Twilio may have signed it: with its port and without. Twilio's signing
    is not consistent about the port (an https URL is signed now without a port, now with
    :443), and its own validator accepts either; so does this."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return (url,)
    host = parts.netloc[: parts.netloc.rfind(":")] if port is not None else parts.netloc
    port = port or _DEFAULT_PORTS.get(parts.scheme)
    forms = [url, urlunsplit(parts._replace(netloc=host))]
    if port is not None:
        forms.append(urlunsplit(parts._replace(netloc=f"{host}:{port}")))
    return tuple(dict.fromkeys(forms))


class Twilio:
    name = "twilio"
    description = "Twilio voice status callbacks"
    # A <Dial>'s child calls post only their end unless asked for more, and the caller's
    # call may end at the same moment: its end waits this long for theirs.
    settle = 15.0
    routes = (
        Route(
            "POST",
            "/api/v1/telephony/twilio/status",
            "Twilio call status callback",
            headers=("X-Twilio-Signature",),
        ),
    )

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
        params = request.form()
        # Every form of the URL is compared, so that timing tells nothing of which matched.
        matched = [
            equal(given, signature(self.auth_token, url, params))
            for url in _as_signed(self._public_url(request.url))
        ]
        if not given or not any(matched):
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
            # A <Dial> rings each number on a child call of the caller's: a leg of it.
            call_id=fields.get("ParentCallSid") or sid,
            leg=sid,
            kind=kind,
            # Twilio counts its callbacks from 0; without the count the status orders them.
            sequence=sequence + 1 if sequence is not None else KIND_SEQUENCE[kind],
            direction=CallDirection.IN if direction == "inbound" else CallDirection.OUT,
            from_number=fields.get("From", ""),
            to_number=fields.get("To", ""),
            occurred_at=_timestamp(fields.get("Timestamp")),
            duration=digits(duration, 9),
            outcome=outcome,
            cause=status,
            recording_url=fields.get("RecordingUrl") or None,
        )
        ref = f"{sid}:{status}:{sequence_number}"
        return Normalised(Reply(200, b"", "text/plain"), ref, (event,))


def _timestamp(value: str | None) -> dt.datetime | None:
    """When the callback's event fired: RFC 2822, in UTC ("Mon, 16 Aug 2010 03:45:01 +0000")."""
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        # Only informative: the event is applied as of when it is processed, rather than
        # lost (Twilio does not deliver a refused callback again).
        log.warning("twilio: Timestamp is not an RFC 2822 time: %r", value)
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
