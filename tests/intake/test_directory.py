"""Addresses and phone numbers as the directory keeps them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intake.desk import DeskError
from intake.directory import normalize_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ivan.Petrov@Example.COM", "Ivan.Petrov@example.com"),
        ("  anna@acme.example ", "anna@acme.example"),
        ('"odd local"@acme.example', '"odd local"@acme.example'),
    ],
)
def test_addresses_are_kept_in_canonical_form(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "no-at-sign", "a@localhost", "ab@[<}.com", "a@b@c.example", "<a@b.example>"]
)
def test_bad_addresses_are_refused_with_a_desk_error(raw: str) -> None:
    with pytest.raises(DeskError, match="invalid email address"):
        normalize_email(raw)


@given(st.text(max_size=40))
def test_any_text_is_a_canonical_address_or_a_desk_error(raw: str) -> None:
    # The stdlib's header parser raises AttributeError on some hostile input; that must
    # come out as a refusal, never as a crash of the worker or a 500.
    try:
        address = normalize_email(raw)
    except DeskError:
        return
    assert normalize_email(address) == address
