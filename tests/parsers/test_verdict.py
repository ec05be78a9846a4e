"""What a reply to a resolved request says: confirms, objects, acknowledges, or nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parsers.verdict import Verdict, verdict

CONFIRMS, OBJECTS, ACKNOWLEDGES = Verdict.CONFIRMS, Verdict.OBJECTS, Verdict.ACKNOWLEDGES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # As the resolved mail asks, in both languages, after greetings and addresses.
        ("confirmed", CONFIRMS),
        ("Confirmed.", CONFIRMS),
        ("I confirm", CONFIRMS),
        ("Yes, confirmed, thank you", CONFIRMS),
        ("Hello,\n\nconfirmed\n", CONFIRMS),
        ("Hi John, yes, we confirm.", CONFIRMS),
        ("Подтверждаю", CONFIRMS),
        ("Да, подтверждаем", CONFIRMS),
        ("Добрый день, коллеги! Подтверждаю.", CONFIRMS),
        ("Confirmed, but please also look at the reports page", CONFIRMS),
        # Short, nothing wrong, and a confirmation in it.
        ("Thank you, confirmed.", CONFIRMS),
        ("Всё работает, подтверждаю, спасибо!", CONFIRMS),
        # An objection says what is wrong, or says more than a few words.
        ("Not confirmed, it still crashes", OBJECTS),
        ("Can't confirm: the error is back", OBJECTS),
        ("Не подтверждаю, ошибка осталась", OBJECTS),
        ("Здравствуйте! Проблема не решена", OBJECTS),
        ("Thanks, but the softphone still does not ring", OBJECTS),
        ("Hello, the problem is still there after the update.", OBJECTS),
        (
            "After the update the operators see the queue panel twice, and the "
            "supervisor's report shows yesterday's figures.",
            OBJECTS,
        ),
        # A question about confirming is not a confirmation.
        ("Confirmed?", ACKNOWLEDGES),
        # Neither: thanks, "OK".
        ("Thanks, it works!", ACKNOWLEDGES),
        ("Спасибо!", ACKNOWLEDGES),
        ("OK", ACKNOWLEDGES),
        # Nothing said.
        ("", None),
        ("   \n ", None),
        ("Hello,", None),
    ],
)
def test_verdict(text: str, expected: Verdict | None) -> None:
    assert verdict(text) is expected


def test_a_sign_off_alone_is_read_from_the_signature() -> None:
    # The reply splitter takes "Спасибо!" with what follows as the signature.
    assert verdict("", "Спасибо!\nИван Петров") is ACKNOWLEDGES
    assert verdict("", "") is None


def test_only_the_start_of_a_long_reply_is_read() -> None:
    assert verdict("Confirmed. " + "x " * 100_000) is CONFIRMS
    assert verdict("x " * 100_000 + " confirmed") is OBJECTS


@given(st.text(max_size=300))
def test_any_text_has_a_verdict_or_none(text: str) -> None:
    assert verdict(text) in (*Verdict, None)
