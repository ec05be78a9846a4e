"""The request an adapter sees: what it reads lazily, and the raw form it is kept in."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, MultiDict

from intake.sources.telephony import base
from intake.sources.telephony.base import Invalid, WebhookRequest


def request(body: bytes, content_type: str = "application/x-www-form-urlencoded") -> WebhookRequest:
    headers = CIMultiDict({"Content-Type": content_type, "Authorization": "Bearer secret"})

    def no_url() -> str:
        raise AssertionError("the URL was built")

    return WebhookRequest("POST", no_url, "/hook/{token}", {"a": "1"}, headers, body)


def test_a_form_is_parsed_once_for_verify_and_normalise(monkeypatch: pytest.MonkeyPatch) -> None:
    received = request(b"x=1&y=2")
    calls = []
    parse_qsl = base.parse_qsl

    def counted(text: str, **kw: bool) -> list[tuple[str, str]]:
        calls.append(text)
        return parse_qsl(text, **kw)

    monkeypatch.setattr(base, "parse_qsl", counted)

    assert received.form() == [("x", "1"), ("y", "2")]
    assert received.form() == [("x", "1"), ("y", "2")]
    assert calls == ["x=1&y=2"]


def test_a_body_read_one_way_is_refused_the_other_way() -> None:
    as_json = request(b'{"x": 1}', "application/json")
    as_form = request(b"x=1")

    assert as_json.json() == {"x": 1}
    assert as_form.form() == [("x", "1")]
    with pytest.raises(Invalid, match="not a form"):
        as_json.form()
    with pytest.raises(Invalid, match="not JSON"):
        as_form.json()


def test_kept_raw_request_reads_back_without_credentials_and_without_building_the_url() -> None:
    raw = request(b'{"x": 1}', "application/json").to_raw()

    again = WebhookRequest.from_raw(raw, route="/hook/{token}")

    assert raw.startswith(b"POST /hook/{token}?a=1\r\n")
    assert b"secret" not in raw
    assert again.header("content-type") == "application/json"
    assert again.header("Authorization") is None
    assert (again.query, again.json()) == ({"a": "1"}, {"x": 1})


def test_a_nul_in_what_is_kept_as_the_reason_is_refused() -> None:
    # Telnyx's adapter keeps an event type it has no use for as the item's reason.
    kept = base.Normalised(base.Reply.json({}), "event-1", ignored="event call.\x00bridged")
    with pytest.raises(Invalid, match="kind must not contain NUL"):
        base.fit_for_storage(kept)
    base.fit_for_storage(
        base.Normalised(base.Reply.json({}), "event-1", ignored="event call.bridged")
    )


def test_a_repeated_query_field_reads_back_as_received() -> None:
    received = WebhookRequest(
        "GET",
        "http://pbx/hook?a=1&a=2&b=3",
        "/hook",
        MultiDict([("a", "1"), ("a", "2"), ("b", "3")]),
        CIMultiDict(),
        b"",
    )

    raw = received.to_raw()
    again = WebhookRequest.from_raw(raw, route="/hook")

    assert raw.startswith(b"GET /hook?a=1&a=2&b=3\r\n")
    assert again.to_raw() == raw
    assert (again.query["a"], list(again.query.items())) == (
        "1",
        [("a", "1"), ("a", "2"), ("b", "3")],
    )
