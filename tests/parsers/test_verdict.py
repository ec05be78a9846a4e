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
        ("We confirm the solution", CONFIRMS),
        ("Yes, confirmed, thank you", CONFIRMS),
        ("Hello,\n\nconfirmed\n", CONFIRMS),
        ("Hi John, yes, we confirm.", CONFIRMS),
        ("Подтверждаю", CONFIRMS),
        ("Подтверждаю решение", CONFIRMS),
        ("Да, подтверждаем", CONFIRMS),
        ("Добрый день, коллеги! Подтверждаю.", CONFIRMS),
        # Beside it only thanks, "it works", a sign-off and a name on its own line.
        ("Thank you, confirmed.", CONFIRMS),
        ("Всё работает, подтверждаю, спасибо!", CONFIRMS),
        # An objection says what is still wrong, whatever else it says.
        ("Not confirmed, it still crashes", OBJECTS),
        ("Can't confirm: the error is back", OBJECTS),
        ("Cannot confirm", OBJECTS),
        ("I dont confirm", OBJECTS),
        ("Partially confirmed", OBJECTS),
        ("Не подтверждаю, ошибка осталась", OBJECTS),
        ("Подтверждаю, что ошибка не исправлена: софтфон всё так же молчит.", OBJECTS),
        ("Мы подтверждаем, что проблема осталась", OBJECTS),
        ("I confirm the problem is still there.", OBJECTS),
        ("Yes, I confirm that the update is installed, but the error remains", OBJECTS),
        ("Здравствуйте! Проблема не решена", OBJECTS),
        ("Thanks, but the softphone still does not ring", OBJECTS),
        # A confirmation with something wrong beside it: the staff decide.
        ("Confirmed: still broken", ACKNOWLEDGES),
        ("Confirmed. Error", ACKNOWLEDGES),
        ("Confirmed, but please also look at the reports page", ACKNOWLEDGES),
        ("Confirmed, the error no longer appears.", ACKNOWLEDGES),
        ("Hi the softphone still does not ring, I confirm it", ACKNOWLEDGES),
        ("Confirmed. No further action needed.", CONFIRMS),
        ("Thanks, no rush.", ACKNOWLEDGES),
        # What the greeting's piece holds besides a greeting and a name is said.
        ("Здравствуйте, звонки теряются! Подтверждаю.", ACKNOWLEDGES),
        ("Hello, reports empty. Confirmed.", ACKNOWLEDGES),
        ("Добрый день ошибка осталась\nПодтверждаю", ACKNOWLEDGES),
        # Whatever cannot be read (a word on its own line, an emoticon) is said too.
        ("Confirmed.\nAlmost", ACKNOWLEDGES),
        ("Подтверждаю.\nЗавтра", ACKNOWLEDGES),
        ("Confirmed. 👎", ACKNOWLEDGES),
        ("Подтверждаю... :(", ACKNOWLEDGES),
        # Neither: questions, a confirmation put off or of something else, thanks, "OK",
        # and what names nothing wrong, however long: the staff read it.
        ("Confirmed?", ACKNOWLEDGES),
        ("Can you confirm the fix is deployed?", ACKNOWLEDGES),
        ("I'll confirm tomorrow after testing", ACKNOWLEDGES),
        ("Подтверждаю получение письма, проверим завтра.", ACKNOWLEDGES),
        ("Confirmed. Wait", ACKNOWLEDGES),
        ("Thanks, it works!", ACKNOWLEDGES),
        ("Спасибо, проблема решена", ACKNOWLEDGES),
        ("No problem, thanks!", ACKNOWLEDGES),
        ("Всё работает, ошибок нет, спасибо", ACKNOWLEDGES),
        ("Спасибо!", ACKNOWLEDGES),
        ("OK", ACKNOWLEDGES),
        (
            "After the update the operators see the queue panel twice, and the "
            "supervisor's report shows yesterday's figures.",
            ACKNOWLEDGES,
        ),
        # Nothing said.
        ("", None),
        ("   \n ", None),
        ("Hello,", None),
    ],
)
def test_verdict(text: str, expected: Verdict | None) -> None:
    assert verdict(text) is expected


def test_a_name_beside_a_confirmation_is_the_senders_own() -> None:
    assert verdict("Confirmed.\nJohn Smith", sender_name="John Smith") is CONFIRMS
    signed = "Подтверждаю.\n\nС уважением,\nИван Петров"
    assert verdict(signed, sender_name="Петров Иван") is CONFIRMS
    # Anyone else's words on the last line are said, even capitalised ones.
    assert verdict("Confirmed.\nReports Missing", sender_name="John Smith") is ACKNOWLEDGES
    assert verdict("Confirmed.\nJohn Smith") is ACKNOWLEDGES
    # A name that reads like trouble is no complaint.
    assert verdict("Confirmed.\nIvan Bugaev", sender_name="Ivan Bugaev") is CONFIRMS


def test_what_follows_the_signature_or_answers_inside_the_quote_is_said_too() -> None:
    assert verdict("Подтверждаю.", "С уважением,\nИван\nP.S. Отчёты пустые") is ACKNOWLEDGES
    assert verdict("Confirmed.", "Regards,\nIvan\nExport fails") is ACKNOWLEDGES
    quoted = "> Did the reports page recover?\nNo\n"
    assert verdict("Confirmed.", quoted=quoted) is ACKNOWLEDGES
    # A plain quote under the confirmation, and a plain signature, are what they seem.
    assert verdict("Confirmed.", "Regards,\nIvan", quoted="> Fixed in 3.2.1.\n") is CONFIRMS


def test_a_confirmation_in_a_reply_longer_than_what_is_read_is_left_to_the_staff() -> None:
    assert verdict("Confirmed. " + "Thanks. " * 1000) is ACKNOWLEDGES


def test_a_sign_off_alone_is_read_from_the_first_line_of_the_signature() -> None:
    # The reply splitter takes "Спасибо!" with what follows as the signature.
    signature = "Спасибо!\n\nС уважением,\nИван Петров\nинженер, ООО «Ромашка»\n+7 495 123-45-67"
    assert verdict("", signature) is ACKNOWLEDGES
    assert verdict("", "") is None


def test_only_the_start_of_a_long_reply_is_read() -> None:
    assert verdict("Cannot confirm. " + "x " * 100_000) is OBJECTS
    # What is wrong past the start is the customer's argument, read by the staff.
    assert verdict("x " * 100_000 + " not confirmed") is ACKNOWLEDGES


@given(st.text(max_size=300))
def test_any_text_has_a_verdict_or_none(text: str) -> None:
    assert verdict(text) in (*Verdict, None)
