"""The contract between the HTTP edge and a provider adapter, and the request it sees.

An adapter is pure: it gets the received request (method, URL, headers, raw body) and the
time, checks the provider's signature, and says which call events the request carries,
what identifies this delivery, and what to answer. Storage and the desk are not its business.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlencode

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict
from sqlalchemy import ColumnElement, String

from intake.sources.telephony.model import CallEvent
from storage.models import Call, InboundItem, text_fault


class WebhookError(Exception):
    """The request is refused; ``reason`` is told to the peer (never a secret)."""

    status = 422

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unauthorized(WebhookError):
    status = 401


class Invalid(WebhookError):
    status = 422


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(value).encode())

    @classmethod
    def text(cls, value: str, status: int = 200) -> Reply:
        return cls(status, value.encode(), "text/plain")


@dataclass(frozen=True)
class Normalised:
    """What a verified request means."""

    reply: Reply
    # What identifies this delivery in the inbound store; None: nothing to keep (a probe).
    source_ref: str | None = None
    events: tuple[CallEvent, ...] = ()
    # Kept but not acted on, and why (an event kind the desk has no use for, a blocked caller).
    ignored: str | None = None


_EVENT_TEXT = tuple(
    name for name, kind in CallEvent.__annotations__.items() if kind in ("str", "str | None")
)
_EVENT_TIMES = tuple(
    name for name, kind in CallEvent.__annotations__.items() if kind == "dt.datetime | None"
)


def _length(column: ColumnElement[Any]) -> int | None:
    kind = column.type
    return kind.length if isinstance(kind, String) else None


# What the worker writes of an event, and where (storage.models): an identity longer than
# its column is refused; a text only shown to people is cut to its column.
_CALLS = Call.__table__.c
_TEXT_LIMITS = {
    name: length
    for name in _EVENT_TEXT
    if name in _CALLS and (length := _length(_CALLS[name])) is not None
}
# A leg names a call within its provider's call, as a call id does.
_TEXT_LIMITS["leg"] = _TEXT_LIMITS["call_id"]
# The numbers too: E.164 when they parse (a few digits), else as sent, and then only
# shown (Twilio's "client:<identity>" runs to 128 characters).
_SHOWN = frozenset({"agent", "cause", "from_number", "to_number"})
_SOURCE_REF_LIMIT = _length(InboundItem.__table__.c.source_ref)
# The ranges of the columns the numbers go to: calls.last_sequence and calls.duration.
_NUMBER_RANGES = {"sequence": 2**63, "duration": 2**31}


def fit_for_storage(normalised: Normalised) -> Normalised:
    """What the request means, as the database can hold it; Invalid (422, naming the
    field) for a value that no column would take: a text with a NUL (PostgreSQL's text
    cannot hold one) or a lone surrogate (it is no UTF-8), an identity longer than its
    column, a number out of its column's range, a time that has no UTC equivalent (a year
    9999 date behind UTC). Texts only shown to people (the agents a call rang, the
    provider's cause, a caller that is no phone number) are cut to their column instead;
    the request is kept whole as received.

    Stored as they came, such values would fail in the worker on every attempt and end
    quarantined, or be kept on SQLite and refused on PostgreSQL; refused, the sender is
    told which field."""
    events = tuple(_fit(event) for event in normalised.events)
    if normalised.source_ref is not None:
        check_text("the event's identity", normalised.source_ref, _SOURCE_REF_LIMIT)
    # Kept as the item's reason (an adapter may name the provider's event in it).
    if normalised.ignored is not None:
        check_text("the event's kind", normalised.ignored)
    if all(fit is event for fit, event in zip(events, normalised.events, strict=True)):
        return normalised
    return replace(normalised, events=events)


def _fit(event: CallEvent) -> CallEvent:
    cut = {}
    for name in _EVENT_TEXT:
        value = getattr(event, name)
        if value is None:
            continue
        limit = _TEXT_LIMITS.get(name)
        shown = name in _SHOWN
        check_text(name, value, None if shown else limit)
        if shown and limit is not None and len(value) > limit:
            cut[name] = value[: limit - 1] + "…"
    for name, bound in _NUMBER_RANGES.items():
        number = getattr(event, name)
        if number is not None and not -bound <= number < bound:
            raise Invalid(f"{name} is out of range")
    for name in _EVENT_TIMES:
        moment = getattr(event, name)
        if moment is not None:
            # Kept in UTC: 9999-12-31T23:59-01:00 has no such time.
            try:
                moment.astimezone(dt.UTC)
            except OverflowError:
                raise Invalid(f"{name} is out of range") from None
    return replace(event, **cut) if cut else event


def check_text(name: str, value: str, limit: int | None = None) -> None:
    """Invalid, naming the field, unless the store can keep ``value`` (within ``limit``
    characters, if given)."""
    fault = text_fault(value)
    if fault is not None:
        raise Invalid(f"{name} {fault}")
    if limit is not None and len(value) > limit:
        raise Invalid(f"{name} is longer than {limit} characters")


def digits(text: str, most: int = 18) -> int | None:
    """The value of a whole number written in ASCII digits, at most ``most`` of them (a
    timestamp, a count, a duration); None for anything else, such as the digits other
    than 0-9 that str.isdigit() takes ("²", "٣"), a sign, or a number too long for any
    column (int() of thousands of digits is refused, and slow before that)."""
    if 0 < len(text) <= most and text.isascii() and text.isdigit():
        return int(text)
    return None


_UNREAD: Any = object()

# Header bytes that are not UTF-8 (a Latin-1 caller name) reach the adapter as aiohttp
# decodes them, as lone surrogates, and are kept as the bytes they were received as. (The
# query reaches it decoded by yarl, which has already replaced such bytes; a query that a
# test or a restart builds with lone surrogates is kept and read back the same way.)
_AS_RECEIVED = "surrogateescape"


class WebhookRequest:
    """A received request as an adapter sees it.

    What only some adapters need is worked out when first asked for: the URL as addressed
    (Twilio signs it), and the body as a form or as JSON, parsed once for ``verify`` and
    ``normalise`` alike. Headers are looked up regardless of case."""

    __slots__ = (
        "_parsed",
        "_url",
        "body",
        "headers",
        "match_info",
        "method",
        "query",
        "raw_headers",
        "route",
    )

    def __init__(
        self,
        method: str,
        # The URL as the provider addressed it (after any configured public base URL), or
        # how to make it.
        url: str | Callable[[], str],
        route: str,
        query: Mapping[str, str],
        headers: CIMultiDictProxy[str] | CIMultiDict[str],
        body: bytes,
        match_info: Mapping[str, str] | None = None,
        # The header lines as received (aiohttp's ``raw_headers``), kept as they are.
        raw_headers: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.method = method
        self.raw_headers = raw_headers
        self.route = route
        self.query = query
        self.headers = headers
        self.body = body
        self.match_info: Mapping[str, str] = match_info or {}
        self._url = url
        self._parsed: Any = _UNREAD

    @property
    def url(self) -> str:
        if not isinstance(self._url, str):
            self._url = self._url()
        return self._url

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def form(self) -> list[tuple[str, str]]:
        """The fields of a urlencoded or multipart body, in order; Invalid otherwise."""
        if self._parsed is _UNREAD:
            self._parsed = self._form()
        if not isinstance(self._parsed, _Form):
            raise Invalid("the body is not a form (application/x-www-form-urlencoded)")
        return list(self._parsed.fields)

    def _form(self) -> _Form:
        if self.content_type == "multipart/form-data":
            return _Form(_multipart_fields(self.header("Content-Type") or "", self.body))
        try:
            text = self.body.decode("utf-8")
            return _Form(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
        except (UnicodeDecodeError, ValueError):
            raise Invalid("the body is not a form (application/x-www-form-urlencoded)") from None

    def json(self) -> Any:
        if self._parsed is _UNREAD:
            try:
                self._parsed = json.loads(self.body)
            except (ValueError, RecursionError):
                raise Invalid("the body is not JSON") from None
        if isinstance(self._parsed, _Form):
            raise Invalid("the body is not JSON")
        return self._parsed

    # The inbound store keeps the request as received, minus what authenticates it.
    _KEPT_OUT = frozenset({b"authorization", b"cookie"})

    def to_raw(self) -> bytes:
        # The route, not the URL: a generic CTI URL carries its token.
        target = self.route
        if self.query:
            target += "?" + urlencode(list(self.query.items()), errors=_AS_RECEIVED)
        raw_headers = self.raw_headers
        if raw_headers is None:
            raw_headers = [
                (name.encode("utf-8", _AS_RECEIVED), value.encode("utf-8", _AS_RECEIVED))
                for name, value in self.headers.items()
            ]
        lines = [f"{self.method} {target}".encode("utf-8", _AS_RECEIVED)]
        lines += [b"%s: %s" % pair for pair in raw_headers if pair[0].lower() not in self._KEPT_OUT]
        lines += (b"", self.body)
        return b"\r\n".join(lines)

    @classmethod
    def from_raw(cls, raw: bytes, *, route: str) -> WebhookRequest:
        head, _, body = raw.partition(b"\r\n\r\n")
        first, *lines = head.decode("utf-8", _AS_RECEIVED).split("\r\n")
        method, _, target = first.partition(" ")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(": ")
            headers.add(name, value)
        # Every field, in order; a repeated name reads as its first value, as the live
        # request's query does.
        query = MultiDict(
            parse_qsl(target.partition("?")[2], keep_blank_values=True, errors=_AS_RECEIVED)
        )
        return cls(method, target, route, query, headers, body)


class _Form(NamedTuple):
    """A body read as a form (as opposed to JSON, whose value may be any)."""

    fields: list[tuple[str, str]]


def _multipart_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise Invalid("the body is not multipart/form-data")
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            raise Invalid("a multipart part has no field name")
        charset = part.get_content_charset() or "utf-8"
        try:
            fields.append((name, payload.decode(charset, "replace")))
        except (LookupError, ValueError):
            raise Invalid(f"a multipart part's charset is unknown: {charset[:40]!r}") from None
    return fields


def equal(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison, so that timing does not tell how much of a secret matched."""
    # A header of bytes that are not UTF-8 reaches here with surrogates: encoded as they
    # are, it compares (unequal) rather than raising.
    a = given.encode("utf-8", "surrogatepass") if isinstance(given, str) else given
    b = expected.encode("utf-8", "surrogatepass") if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    # For the OpenAPI document: the request media types (a form is read from either, see
    # WebhookRequest.form), the query parameters it must have, and the headers that carry
    # the provider's signature.
    consumes: tuple[str, ...] = ("application/x-www-form-urlencoded", "multipart/form-data")
    query: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdapterContext:
    default_region: str


class TelephonyAdapter(Protocol):
    """A provider's adapter. Optionally ``settle``: seconds an ended call waits for the
    final events of its other legs, where the provider tells of them only once they end
    (Twilio's child calls); 0 when absent."""

    name: str
    description: str
    routes: Sequence[Route]

    def verify(self, request: WebhookRequest, now: float) -> None:
        """Unauthorized unless the request comes from the provider (``now``: unix time)."""

    def normalise(self, request: WebhookRequest) -> Normalised:
        """What the request means; Invalid with a reason if it makes no sense."""


class AdapterFactory(Protocol):
    """What the ``intake.sources`` entry point names: builds the adapter from its table."""

    name: str
    description: str

    def __call__(self, settings: Any, context: AdapterContext) -> TelephonyAdapter: ...
