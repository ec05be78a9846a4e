"""The one call-event model every provider adapter normalises its requests to."""

from __future__ import annotations

import datetime as dt
import enum
import functools
from dataclasses import dataclass

import phonenumbers

from storage.models import CallDirection, CallOutcome


class EventKind(enum.StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"
    RECORDING = "recording"
    # A step that changes nothing but the order, such as one leg of a call on hold or hung
    # up while the call goes on (Mango Office numbers every leg's events in one sequence).
    PROGRESS = "progress"


# Providers that do not number their events are ordered by what the event means: a call
# rings, is answered, ends. A recording is not a step of the call and is never "late".
KIND_SEQUENCE = {EventKind.RINGING: 1, EventKind.ANSWERED: 2, EventKind.ENDED: 3}


@dataclass(frozen=True)
class CallEvent:
    provider: str
    call_id: str
    kind: EventKind
    # Position of the event within its call; an event not after the last one applied is
    # a duplicate or late and changes nothing.
    sequence: int
    # None: the event does not say (Telnyx says it only when the call begins).
    direction: CallDirection | None
    from_number: str
    to_number: str
    agent: str | None = None
    queue: str | None = None
    occurred_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    answered_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    duration: int | None = None
    outcome: CallOutcome | None = None
    cause: str | None = None
    recording_url: str | None = None
    # The leg of the call the event is of, where the provider names legs that share the
    # call's id (Telnyx: each transfer is a leg of the caller's call session); None: the
    # call has one leg, or the provider gives each leg a call id of its own.
    leg: str | None = None

    @property
    def caller(self) -> str | None:
        """The customer's side of the call; None while which way it went is not known."""
        if self.direction is None:
            return None
        return self.from_number if self.direction is CallDirection.IN else self.to_number

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.call_id}"


@functools.lru_cache(maxsize=4096)
def e164(raw: str, region: str) -> str | None:
    """The number in E.164, or None for what is no phone number ("anonymous", an extension).

    PBXs write international numbers with or without the leading "+" (Zammad's examples
    send "4930609854180"); a digits-only number that is not valid in the default region
    is tried as international.
    """
    text = raw.strip()
    candidates = [text]
    if text.isdigit():
        candidates.append("+" + text)
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None
