"""Mango Office VPBX events: form fields ``vpbx_api_key``, ``sign`` and ``json``.

``sign`` = hex SHA-256(api key + json + salt), over the ``json`` field exactly as received.
Call events carry ``seq``, which orders them per call; the summary ends the call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from intake.config import MangoSettings
from intake.sources.telephony.base import (
    AdapterContext,
    Invalid,
    Normalised,
    Reply,
    Route,
    Unauthorized,
    WebhookRequest,
    equal,
)
from intake.sources.telephony.model import CallEvent, EventKind
from storage.models import CallDirection, CallOutcome

BASE = "/api/v1/telephony/mango/events"
STATES = {"Appeared": EventKind.RINGING, "Connected": EventKind.ANSWERED}
# The summary comes after every call event, whatever their seq.
SUMMARY_SEQUENCE = 2**62


def sign(api_key: str, payload: str, salt: str) -> str:
    return hashlib.sha256((api_key + payload + salt).encode()).hexdigest()


class Mango:
    name = "mango"
    description = "Mango Office VPBX call events"
    routes = (
        Route("POST", f"{BASE}/call", "Mango Office call event"),
        Route("POST", f"{BASE}/summary", "Mango Office call summary"),
        Route("POST", f"{BASE}/recording", "Mango Office recording event"),
    )

    def __init__(self, settings: MangoSettings, context: AdapterContext) -> None:
        if settings.api_key is None or settings.api_salt is None:
            raise ValueError("needs api_key_* and api_salt_*")
        self.api_key = settings.api_key.read()
        self.salt = settings.api_salt.read()

    def verify(self, request: WebhookRequest, now: float) -> None:
        fields = dict(request.form())
        if not equal(fields.get("vpbx_api_key", ""), self.api_key):
            raise Unauthorized("unknown vpbx_api_key")
        expected = sign(self.api_key, fields.get("json", ""), self.salt)
        if not equal(fields.get("sign", "").lower(), expected):
            raise Unauthorized("sign does not match")

    def normalise(self, request: WebhookRequest) -> Normalised:
        try:
            data = json.loads(dict(request.form()).get("json", ""))
        except (ValueError, RecursionError):
            raise Invalid("json is not JSON") from None
        if not isinstance(data, dict):
            raise Invalid("json must be an object")
        entry = str(data.get("entry_id") or "")
        if not entry:
            raise Invalid("json.entry_id is required")
        kind = request.route.rsplit("/", 1)[-1]
        if kind == "call":
            return self._call(data, entry)
        if kind == "summary":
            return self._summary(data, entry)
        url = data.get("recording_url")
        ref = f"{entry}:recording:{data.get('recording_id', '')}:{data.get('recording_state', '')}"
        if not isinstance(url, str):
            return Normalised(Reply.json({}), ref, ignored="recording without a URL")
        return Normalised(
            Reply.json({}), ref, (self._event(data, entry, EventKind.RECORDING, 0, url),)
        )

    def _call(self, data: dict[str, Any], entry: str) -> Normalised:
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise Invalid("json.seq must be a number")
        state = str(data.get("call_state"))
        ref = f"{entry}:call:{seq}"
        kind = STATES.get(state, EventKind.PROGRESS)
        return Normalised(Reply.json({}), ref, (self._event(data, entry, kind, seq),))

    def _summary(self, data: dict[str, Any], entry: str) -> Normalised:
        answered = data.get("entry_result") == 1
        talk = data.get("talk_time")
        end = data.get("end_time")
        event = self._event(data, entry, EventKind.ENDED, SUMMARY_SEQUENCE)
        reason = data.get("disconnect_reason")
        event = replace(
            event,
            outcome=CallOutcome.ANSWERED if answered else CallOutcome.MISSED,
            cause=str(reason) if reason is not None else None,
            duration=end - talk
            if isinstance(end, int) and isinstance(talk, int) and talk
            else None,
        )
        return Normalised(Reply.json({}), f"{entry}:summary", (event,))

    def _event(
        self, data: dict[str, Any], entry: str, kind: EventKind, seq: int, url: str | None = None
    ) -> CallEvent:
        source, target = _side(data, "from"), _side(data, "to")
        outbound = data.get("call_direction") == 2 or bool(source.get("extension"))
        return CallEvent(
            provider=self.name,
            call_id=entry,
            kind=kind,
            sequence=seq,
            direction=CallDirection.OUT if outbound else CallDirection.IN,
            from_number=str(source.get("number") or ""),
            to_number=str(target.get("number") or ""),
            agent=str(target.get("extension")) if target.get("extension") else None,
            recording_url=url,
        )


def _side(data: dict[str, Any], key: str) -> dict[str, Any]:
    side = data.get(key)
    return side if isinstance(side, dict) else {}
