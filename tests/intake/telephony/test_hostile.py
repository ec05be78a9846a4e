"""Every adapter against hostile requests: what it cannot read is a WebhookError (a 4xx
with its reason), never another exception (a 500), and what it reads is read the same
again from the kept request (the worker's second reading after a restart)."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from nacl.signing import SigningKey

from intake.sources.telephony.base import (
    AdapterContext,
    Normalised,
    TelephonyAdapter,
    WebhookError,
    WebhookRequest,
    fit_for_storage,
)
from intake.sources.telephony.registry import build_adapters
from tests.intake.telephony.conftest import PROVIDERS, settings_with

# The names the adapters read, so that the requests get past "unknown event" often.
FIELDS = [
    # Generic CTI
    "event", "from", "to", "direction", "callId", "user", "user[]", "queue",
    "answeringNumber", "cause",
    # Twilio
    "CallSid", "CallStatus", "From", "To", "Direction", "CallDuration", "SequenceNumber",
    "RecordingUrl", "Timestamp", "ParentCallSid",
    # Zadarma
    "pbx_call_id", "caller_id", "called_did", "internal", "destination", "disposition",
    "duration", "call_start", "status_code", "is_recorded", "call_id_with_rec",
    # Mango Office
    "vpbx_api_key", "sign", "json", "entry_id", "seq", "call_state", "call_direction",
    "talk_time", "end_time", "entry_result", "disconnect_reason", "recording_url",
    "recording_id", "recording_state", "number", "extension",
    # Telnyx
    "data", "id", "event_type", "payload", "call_session_id", "call_leg_id", "hangup_cause",
    "start_time", "occurred_at",
]  # fmt: skip
VALUES = [
    "newCall", "answer", "hangup", "in", "out", "normalClearing", "busy", "noAnswer",
    "ringing", "in-progress", "completed", "no-answer", "inbound", "outbound-api",
    "NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_ANSWER", "NOTIFY_END", "NOTIFY_OUT_START",
    "NOTIFY_OUT_END", "NOTIFY_RECORD", "ANSWERED", "NO ANSWER", "Appeared", "Connected",
    "Disconnected", "call.initiated", "call.answered", "call.hangup", "incoming",
    "+79161234567", "84950000000", "anonymous", "2026-11-26T10:00:00Z",
    "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "²", "٣", "9" * 30,
    "Thu, 26 Nov 2026 10:00:40 +0000", "Fri, 31 Dec 9999 23:59:59 -2359",
    "Mon, 01 Jan 0001 00:00:00 +2359", "Thu, 26 Nov 2026 10:00:40",
]  # fmt: skip
HEADERS = [
    "Content-Type", "X-Telephony-Timestamp", "X-Telephony-Signature", "X-Twilio-Signature",
    "Signature", "telnyx-timestamp", "telnyx-signature-ed25519", "Authorization",
]  # fmt: skip
CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=b",
    "multipart/form-data",
    "text/plain",
    "",
]

# What has broken readers: digits other than 0-9 that str.isdigit() takes, numbers too
# long for int() or for a column, signs, exponents, times with no UTC equivalent.
ODD = ["²", "٣", "9" * 19, "9" * 5000, "-1", "1e5", " 7 ", "9999-12-31T23:59:59-23:59"]
texts = st.one_of(
    st.sampled_from(VALUES),
    st.sampled_from(ODD),
    st.text(max_size=40),
    # Lone surrogates, as JSON's "\ud800" escapes give them.
    st.text(st.characters(categories=["Cs", "Lu", "Nd"]), max_size=5),
)
# An identity that is there, so that the fields after it are read.
ids = st.one_of(st.sampled_from(["CA01", "c-1", "ZW50cnk="]), texts.filter(bool))
scalars = st.one_of(
    texts,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6),
    ),
    max_leaves=20,
)
objects = st.dictionaries(st.sampled_from(FIELDS), values, max_size=10)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True)


def _form(pairs: list[tuple[str, Any]]) -> bytes:
    flat = [(k, v if isinstance(v, str) else _json_text(v)) for k, v in pairs]
    return urlencode(flat, errors="surrogatepass").encode()


def _multipart(pairs: list[tuple[str, Any]], charset: str) -> bytes:
    parts = []
    for name, value in pairs:
        text = value if isinstance(value, str) else _json_text(value)
        parts.append(
            f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n'
            f"Content-Type: text/plain; charset={charset}\r\n\r\n".encode()
            + text.encode("utf-8", "surrogatepass")
            + b"\r\n"
        )
    return b"".join(parts) + b"--b--\r\n"


pairs = st.lists(st.tuples(st.sampled_from(FIELDS), values), max_size=10)
garbage = st.one_of(
    st.binary(max_size=300),
    objects.map(lambda o: _json_text(o).encode()),
    pairs.map(_form),
    st.builds(_multipart, pairs, st.sampled_from(["utf-8", "koi8-r", "bogus", "utf\x00"])),
)
# Each provider's request as it shapes it, with any values in its fields: what gets past
# "unknown event" to the reading of every field.
JSON, FORM = "application/json", "application/x-www-form-urlencoded"


def _fields(
    known: dict[str, Any], required: tuple[str, ...] = ()
) -> st.SearchStrategy[dict[str, Any]]:
    """Fields of these names; the ``required`` ones always there (else most requests are
    refused for want of them, and none is read further)."""
    return st.fixed_dictionaries(
        {name: known[name] for name in required},
        optional={name: shape for name, shape in known.items() if name not in required},
    )


def _posted(fields: dict[str, Any], content_type: str) -> tuple[str, bytes]:
    if content_type == JSON:
        return content_type, _json_text(fields).encode()
    if content_type == FORM:
        return content_type, _form(list(fields.items()))
    return "multipart/form-data; boundary=b", _multipart(list(fields.items()), "utf-8")


def _shaped(
    name: str, shape: dict[str, Any], required: tuple[str, ...], content_types: list[str]
) -> st.SearchStrategy[tuple[str, int, str, bytes]]:
    return st.builds(
        lambda fields, content_type: (name, 0, *_posted(fields, content_type)),
        _fields(shape, required),
        st.sampled_from(content_types),
    )


ZADARMA = FIELDS[FIELDS.index("caller_id") : FIELDS.index("vpbx_api_key")]
MANGO = FIELDS[FIELDS.index("call_state") : FIELDS.index("recording_state") + 1]
TELNYX = ["call_session_id", "call_leg_id", "direction", "from", "to", "hangup_cause"]
TELNYX += ["start_time", "end_time"]
side = st.one_of(values, _fields({"number": values, "extension": values}))
SHAPED = {
    "generic": _shaped(
        "generic",
        {
            "event": st.sampled_from(["newCall", "answer", "hangup"]),
            "direction": st.sampled_from(["in", "out"]),
            "callId": ids,
            **{key: values for key in ("from", "to", "user", "queue", "answeringNumber")},
            "cause": values,
        },
        ("event", "direction", "callId"),
        [JSON, FORM],
    ),
    "twilio": _shaped(
        "twilio",
        {
            "CallSid": ids,
            "CallStatus": st.sampled_from(["ringing", "in-progress", "completed", "no-answer"]),
            **{key: texts for key in ("From", "To", "Direction", "CallDuration")},
            **{key: texts for key in ("SequenceNumber", "RecordingUrl", "Timestamp")},
            "ParentCallSid": ids,
        },
        ("CallSid", "CallStatus"),
        [FORM],
    ),
    "zadarma": _shaped(
        "zadarma",
        {
            "event": st.sampled_from([v for v in VALUES if v.startswith("NOTIFY_")]),
            "pbx_call_id": ids,
            **{key: texts for key in ZADARMA},
        },
        ("event", "pbx_call_id"),
        [FORM, "multipart"],
    ),
    "mango": st.builds(
        lambda route, inner: ("mango", route, FORM, _form([("json", _json_text(inner))])),
        st.integers(0, 2),
        _fields(
            {
                **{key: values for key in MANGO},
                "entry_id": st.one_of(ids, values),
                "seq": st.one_of(st.integers(-(2**70), 2**70), values),
                "from": side,
                "to": side,
            },
            ("entry_id", "seq", "call_state"),
        ),
    ),
    "telnyx": st.builds(
        lambda data: ("telnyx", 0, JSON, _json_text({"data": data}).encode()),
        _fields(
            {
                "id": st.one_of(ids, values),
                "event_type": st.one_of(
                    st.sampled_from(["call.initiated", "call.answered", "call.hangup"]), texts
                ),
                "occurred_at": values,
                "payload": _fields(
                    {key: values for key in TELNYX} | {"call_session_id": ids}, ("call_session_id",)
                ),
            },
            ("id", "event_type", "payload"),
        ),
    ),
}


# Header values as aiohttp gives them: the bytes received, decoded with surrogateescape.
header_values = st.one_of(
    st.sampled_from([*VALUES, str(int(time.time()))]),
    st.binary(max_size=30)
    .filter(lambda b: b"\r" not in b and b"\n" not in b)
    .map(lambda b: b.decode("utf-8", "surrogateescape")),
)
# A query as yarl decodes it: bytes that are not UTF-8 become U+FFFD, never surrogates.
queries = st.dictionaries(
    st.sampled_from(["zd_echo", "a", "callId"]),
    st.one_of(st.sampled_from(VALUES), st.text(max_size=20)),
    max_size=2,
)


@pytest.fixture(scope="module")
def adapters() -> dict[str, TelephonyAdapter]:
    with pytest.MonkeyPatch.context() as env:
        names = ("CTI_TOKEN", "OPERATOR_ANNA_TOKEN", "TWILIO_TOKEN", "ZADARMA_SECRET", "MANGO_KEY")
        for name in (*names, "MANGO_SALT"):
            env.setenv(name, name.lower())
        env.setenv("CTI_SECRET", "cti-secret")
        public = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
        telephony = settings_with(
            {
                "generic": {
                    "enabled": True,
                    "token_env": "CTI_TOKEN",
                    "signature_secret_env": "CTI_SECRET",
                    "blocked_numbers": ["+7 495 000-00-00"],
                },
                **PROVIDERS,
                "telnyx": {"enabled": True, "public_key": public},
            }
        ).telephony
        built = build_adapters(telephony.enabled(), AdapterContext("RU"))
        return {adapter.name: adapter for adapter in built}


def _meaning(normalised: Normalised) -> tuple[Any, ...]:
    return (normalised.source_ref, normalised.events, normalised.ignored)


@pytest.mark.parametrize("name", list(SHAPED))
@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    content_type=st.one_of(st.none(), st.none(), st.none(), header_values),
    headers=st.dictionaries(st.sampled_from(HEADERS[1:]), header_values, max_size=3),
    query=queries,
    method=st.sampled_from(["POST"] * 5 + ["GET"]),
)
def test_an_adapter_refuses_what_it_cannot_read_and_reads_what_it_keeps_the_same_again(
    adapters: dict[str, TelephonyAdapter],
    name: str,
    data: st.DataObject,
    content_type: str | None,
    headers: dict[str, str],
    query: dict[str, str],
    method: str,
) -> None:
    # Mostly requests shaped as the provider's, now and then any bytes at all.
    anything = st.tuples(st.just(name), st.integers(0, 2), st.sampled_from(CONTENT_TYPES), garbage)
    _, route, shaped_type, body = data.draw(st.one_of(SHAPED[name], SHAPED[name], anything))
    adapter = adapters[name]
    path = adapter.routes[route % len(adapter.routes)].path
    # Now and then a Content-Type other than the body's.
    received = CIMultiDict({"Content-Type": content_type or shaped_type, **headers})
    request = WebhookRequest(
        method, "http://127.0.0.1" + path, path, query, received, body, {"token": "x"}
    )
    with contextlib.suppress(WebhookError):
        adapter.verify(request, time.time())
    # As an adapter whose signature matched (the provider, or whoever holds its secret).
    try:
        normalised = fit_for_storage(adapter.normalise(request))
    except WebhookError:
        event(f"{adapter.name}: refused")
        return
    normalised.reply.body.decode("utf-8")
    if normalised.source_ref is None:
        event(f"{adapter.name}: a probe, nothing kept")
        return
    event(f"{adapter.name}: {'ignored' if normalised.ignored else 'read'}")
    kept = request.to_raw()
    again = WebhookRequest.from_raw(kept, route=path)
    assert _meaning(fit_for_storage(adapter.normalise(again))) == _meaning(normalised)
