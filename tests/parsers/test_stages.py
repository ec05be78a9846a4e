"""Behaviour of the individual stages, pinned on small inputs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from parsers import as_json, parse_mail, render_text
from parsers.charsets import decode
from parsers.classify import classify
from parsers.headers import decode_encoded_words, parse_params
from parsers.replies import split
from parsers.screenshots import sniff
from parsers.text import html_to_text, sanitize_html
from parsers.versions import extract
from tests.parsers.unicode_check import assert_writable

REQUIRED_JSON_KEYS = {
    "subject", "from", "to", "cc", "date", "message_id", "in_reply_to", "references",
    "language", "text", "new_text", "quoted_text", "kind", "priority", "environment",
    "screenshots", "attachments", "missing", "is_auto_reply", "auto_reply_reason",
    "registration_number", "warnings",
}


def test_parsers_import_neither_intake_storage_nor_notifiers() -> None:
    for path in (Path(__file__).parents[2] / "parsers").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"intake", "storage", "notifiers"}, path


@pytest.mark.parametrize("text", ["Здравствуйте, не работает очередь", "ОШИБКА ВХОДА",
                                  "Добрый день"])
@pytest.mark.parametrize("actual", ["cp1251", "koi8_r"])
@pytest.mark.parametrize("declared", [None, "us-ascii", "iso-8859-1", "koi8-r",
                                      "windows-1251"])
def test_cyrillic_is_read_right_whatever_the_label(text: str, actual: str,
                                                   declared: str | None) -> None:
    assert decode(text.encode(actual), declared).text == text


def test_latin1_text_stays_latin1() -> None:
    assert decode("café crème".encode("latin-1"), "iso-8859-1").text == "café crème"


def test_double_encoded_utf8_is_repaired() -> None:
    broken = "Добрый день, коллеги".encode().decode("cp1251")
    result = decode(broken.encode(), "utf-8")
    assert result.text == "Добрый день, коллеги"
    assert result.warning is not None


def test_encoded_words_in_several_charsets_and_split_characters() -> None:
    word = "Привет".encode()
    import base64
    a = base64.b64encode(word[:3]).decode()
    b = base64.b64encode(word[3:]).decode()
    assert decode_encoded_words(f"=?utf-8?B?{a}?= =?utf-8?B?{b}?=") == "Привет"
    assert decode_encoded_words("=?koi8-r?B?8NLJ18XU?= =?iso-8859-1?Q?caf=E9?=") == (
        "Приветcafé")


def test_rfc2231_continuations_with_charset() -> None:
    _, params = parse_params("attachment; filename*0*=utf-8''%D1%84; filename*1=.png")
    assert params["filename"] == "ф.png"


@pytest.mark.parametrize(("text", "new"), [
    ("New.\n\nOn Mon, 15 Jan 2024 at 10:00, A <a@b.c> wrote:\n> old", "New."),
    ("Новое.\n\n15.01.2024, 10:00, \"Поддержка\" <s@x.ru>:\n> старое", "Новое."),
    ("Новое.\n\nВторник, 16 января 2024, 10:00 +03:00 от Поддержка <s@x.ru>:\n> старое",
     "Новое."),
    ("Новое.\n\n16.01.2024 10:00, Поддержка пишет:\n> старое", "Новое."),
    ("Новое.\n\n-----Исходное сообщение-----\nОт: x\nстарое", "Новое."),
    ("New.\nFrom: A\nSent: today\nTo: B\nSubject: x\nold", "New."),
])
def test_quoted_history_is_separated(text: str, new: str) -> None:
    assert split(text).new_text == new


def test_outlook_header_block_in_a_forward_is_content() -> None:
    text = "FYI\nFrom: A\nSent: today\nTo: B\nSubject: x\nthe problem"
    assert split(text, is_forward=True).new_text == text


def test_signature_after_dashes_and_phone_footer() -> None:
    result = split("Text.\n-- \nIvan\nSent from my iPhone")
    assert (result.new_text, result.signature) == ("Text.", "-- \nIvan\nSent from my iPhone")


def test_html_to_text_keeps_paragraphs_lists_links_and_quotes() -> None:
    text = html_to_text("<p>A&amp;B</p><ol><li>one</li><li>two</li></ol>"
                        "<a href='https://x.ru'>site</a><blockquote>old</blockquote>")
    assert text == "A&B\n\n1. one\n2. two\nsite (https://x.ru)\n> old"


def test_sanitized_html_has_no_script_or_handlers() -> None:
    html, problem = sanitize_html("<p onclick='x()'>hi</p><script>alert(1)</script>")
    assert problem is None
    assert html == "<p>hi</p>"


def test_image_type_comes_from_bytes() -> None:
    info = sniff(b"GIF89a\x10\x00\x20\x00" + b"\x00" * 20)
    assert (info.content_type, info.width, info.height) == ("image/gif", 16, 32)  # type: ignore[union-attr]
    assert sniff(b"not an image at all") is None


def test_versions_keep_their_source_and_labelled_lines_win() -> None:
    env = extract("у нас Windows 10\nВерсия ОС: Windows 11\nхром 120")
    assert env.os_version is not None
    assert (env.os_version.value, env.os_version.source) == ("11", "labelled line 'Версия ОС:'")
    assert env.browser_version is not None
    assert env.browser_version.source.startswith("free text")
    assert env.missing() == ("product", "product_version")


def test_explicit_tag_wins_over_keywords() -> None:
    result = classify("[проблема] вопрос", "Подскажите, как настроить?")
    assert (result.kind, result.priority) == ("problem", "P1")


def test_urgency_raises_priority_one_step() -> None:
    result = classify("Вопрос", "Срочно подскажите, как настроить очередь?")
    assert (result.kind, result.priority) == ("service_request", "P2")


def test_json_has_the_agreed_keys_and_no_file_bytes() -> None:
    parsed = parse_mail((Path(__file__).parents[1] / "data" / "mail" /
                         "rfc2231_filename.eml").read_bytes())
    got = as_json(parsed)
    assert set(got) >= REQUIRED_JSON_KEYS
    assert set(got["environment"]) == {  # type: ignore[arg-type]
        "os", "os_version", "product", "product_version", "browser", "browser_version"}
    assert set(got["screenshots"][0]) >= {  # type: ignore[index]
        "filename", "content_type", "size", "width", "height", "sha256"}
    assert "data" not in got["screenshots"][0]  # type: ignore[index]


def test_text_rendering_shows_what_was_found_where_and_what_is_missing() -> None:
    parsed = parse_mail("Subject: Ошибка\r\n\r\nВерсия ОС: Windows 10".encode())
    shown = render_text(parsed)
    assert "os_version:       10  (labelled line 'Версия ОС:')" in shown
    assert "browser:          MISSING" in shown


def test_bad_classification_config_fails_when_loaded() -> None:
    from parsers import ClassifyRules, ParseOptions

    with pytest.raises(ValueError, match="invalid classification pattern"):
        ClassifyRules(urgent=("(unclosed",))
    with pytest.raises(ValueError, match="unknown kind"):
        ClassifyRules(tags=((r"\[x\]", "bug"),))
    with pytest.raises(ValueError, match="prefix"):
        ParseOptions(number_prefix=" ")


def test_unreadable_date_is_reported_not_guessed() -> None:
    parsed = parse_mail(b"Date: yesterday-ish\r\nSubject: x\r\n\r\nbody")
    assert parsed.date is None
    assert any("Date" in w for w in parsed.warnings)


def test_urgency_does_not_make_an_incident_p1_but_a_critical_hint_does() -> None:
    assert classify("Ошибка", "Срочно! Не работает отчёт").priority == "P2"
    assert classify("Ошибка", "Не работает у всех операторов").priority == "P1"


def test_utf7_surrogates_come_back_as_one_character_or_the_replacement_mark() -> None:
    assert decode(b"+2D3YPQ-", "utf-7").text == "\ufffd\ufffd"
    assert decode(b"+2D3eAA-", "utf-7").text == "\U0001f600"
    parsed = parse_mail(b"Subject: =?utf-7?Q?+2D0-?=\r\n\r\nx")
    assert parsed.subject == "\ufffd"


def test_one_stray_byte_does_not_turn_utf8_text_into_mojibake() -> None:
    data = "Здравствуйте, ошибка в AgentZone".encode() + b" \xa0"
    result = decode(data, "utf-8")
    assert result.text == "Здравствуйте, ошибка в AgentZone \u00a0"
    assert result.warning is not None
    assert "1 byte(s)" in result.warning
    assert decode(data, None).text == result.text
    assert decode(data, "windows-1251").text == result.text


def test_text_in_a_single_byte_charset_is_not_mistaken_for_broken_utf8() -> None:
    text = "Здравствуйте, не работает очередь"
    for charset in ("cp1251", "koi8_r"):
        assert decode(text.encode(charset), None).text == text


def test_farewell_starts_the_signature_only_before_signature_lines() -> None:
    assert split("Ошибка.\n\nСпасибо!\nИван Петров\nООО Ромашка").signature == (
        "Спасибо!\nИван Петров\nООО Ромашка")
    for body in ("Ошибка.\nСпасибо!\nВерсия ОС: Windows 10",
                 "Hi,\nThanks!\nAfter the update agents can't log in.",
                 "Hi,\nThanks!\nCould you check it today?"):
        result = split(body)
        assert (result.new_text, result.signature) == (body, "")


def test_versions_after_the_dash_signature_are_found_but_not_the_phone_client_os() -> None:
    parsed = parse_mail("Subject: x\r\n\r\nОшибка.\n-- \nИван\nWindows 11, Chrome 120\n"
                        "Sent from my Android".encode())
    assert parsed.signature.startswith("-- \nИван")
    assert parsed.environment.os_version is not None
    assert parsed.environment.os_version.value == "11"
    parsed = parse_mail(b"Subject: x\r\n\r\nError in queue.\n\nGet Outlook for Android\n")
    assert parsed.environment.os is None


def test_labelled_answer_naming_nothing_known_stays_missing_with_a_warning() -> None:
    env = extract("ОС: не знаю\nБраузер: последняя версия\nПлатформа: сервер")
    assert env.missing() == ("os", "os_version", "product", "product_version", "browser",
                             "browser_version")
    assert env.unrecognised == ("labelled line 'ОС:' says 'не знаю'",
                                "labelled line 'Браузер:' says 'последняя версия'",
                                "labelled line 'Платформа:' says 'сервер'")
    parsed = parse_mail(b"Subject: x\r\n\r\nOS: -\nBrowser: Chrome 120")
    assert "labelled line 'OS:' says '-': not a known name; left missing" in parsed.warnings
    assert extract("Система: зависла после обновления").missing()[0] == "os"


@pytest.mark.parametrize(("body", "version"), [
    ("Версия OmniVOX: 4.1.2 (AgentZone)", "4.1.2"),
    ("Version 3.2.1 of AgentZone", "3.2.1"),
    ("версия 2.4 для OmniVOX Chat", "2.4"),
])
def test_product_version_written_before_the_product_name_is_kept(body: str,
                                                                 version: str) -> None:
    env = extract(body)
    assert env.product is not None
    assert env.product_version is not None
    assert env.product_version.value == version


@pytest.mark.parametrize(("body", "field", "value"), [
    ("macOS Sonoma 14.2", "os_version", "14.2"),
    ("macOS Sonoma", "os_version", "14"),
    ("Firefox ESR 115.6.0esr", "browser_version", "115.6.0"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91", "browser_version", "120.0.2210.91"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 YaBrowser/24.1.0.0 Safari/537.36", "browser_version", "24.1.0.0"),
])
def test_versions_keep_every_part_written(body: str, field: str, value: str) -> None:
    found = getattr(extract(body), field)
    assert found is not None
    assert found.value == value


@pytest.mark.parametrize(("subject", "body", "kind", "priority", "reason"), [
    ("Feature request: export", "Please add a button to export call reports for all "
     "operators at once. It would be great.", "development_request", "P4",
     "default for development_request"),
    ("[доработка] отчёты", "Не работает выгрузка, добавьте кнопку", "development_request",
     "P4", "default for development_request"),
    ("Отчёт", "Не работает выгрузка отчёта", "incident", "P2", "default for incident"),
    ("Вопрос", "Подскажите, как настроить очередь? Срочно!", "service_request", "P2",
     "urgency hint 'срочно'"),
    ("Срочно", "Никто не может войти, работа остановлена", "problem", "P1",
     "default for problem"),
    ("Ошибка", "Ошибка у всех операторов", "problem", "P1", "default for problem"),
    ("Ошибка", "Критично: ошибка при звонке", "incident", "P2", "default for incident"),
])
def test_priority_hints_apply_by_kind(subject: str, body: str, kind: str, priority: str,
                                      reason: str) -> None:
    result = classify(subject, body)
    assert (result.kind, result.priority, result.priority_reason) == (kind, priority, reason)


@pytest.mark.parametrize(("body", "language"), [
    ("ОС: Astra Linux 1.7, браузер Firefox 115 ESR", "ru"),
    ("Сервер: Windows Server 2019, клиенты на Windows 11 и Microsoft Edge 120", "ru"),
    ("The chat does not open in Chrome 120 on Windows 11", "en"),
    ("Windows 11, Chrome 120", "en"),
])
def test_language_counts_words_not_product_names(body: str, language: str) -> None:
    assert parse_mail(f"Subject: x\r\n\r\n{body}".encode()).language == language


def test_registration_number_comes_from_subject_or_our_quoted_mail_never_new_text() -> None:
    new = parse_mail("Subject: Новая проблема\r\n\r\nПохоже на [OV-2026-000100], но теперь "
                     "другое".encode())
    assert (new.registration_number, new.registration_number_source) == (None, None)
    reply = parse_mail("Subject: RE: Ошибка\r\n\r\nСм. [OV-2026-000001].\n\nFrom: Support "
                       "<s@o.ru>\nSent: Monday\nTo: Ivan\nSubject: [OV-2026-000123] Ошибка\n\n"
                       "Готово.".encode())
    assert (reply.registration_number, reply.registration_number_source) == (
        "OV-2026-000123", "quoted text")
    tagged = parse_mail(b"Subject: Re: [OV-2026-000007] x\r\n\r\n> [OV-2026-000123]")
    assert (tagged.registration_number, tagged.registration_number_source) == (
        "OV-2026-000007", "subject")


def test_reply_under_an_attribution_and_its_quote_is_the_new_text() -> None:
    for body, answer in (
            ("On Tue, Nov 24, 2026 at 5:00 PM Support <s@o.com> wrote:\n> Which browser?\n\n"
             "Chrome 120 on Windows 11, still broken.", "Chrome 120 on Windows 11, still broken."),
            ("24.11.2026 17:00, Поддержка пишет:\n> Какой браузер?\n\nChrome 120.",
             "Chrome 120.")):
        result = split(body)
        assert result.new_text == answer
        assert result.quoted_text.endswith("?")


def test_parts_over_the_cap_are_counted_in_the_warning() -> None:
    raw = (b"Subject: p\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           + b"--b\r\n\r\nx\r\n" * 1200 + b"--b--\r\n")
    warnings = parse_mail(raw).warnings
    assert "the 201 remaining parts of this multipart were skipped" in warnings[0]


def test_nul_characters_never_reach_the_result() -> None:
    parsed = parse_mail(
        b"From: a\x00b@x.example\r\nSubject: =?utf-8?Q?he=00llo?= x\x00y\r\n"
        b"Message-ID: <a\x00b@x>\r\n\r\nbody\x00text\r\n"
    )
    assert (parsed.subject, parsed.from_address, parsed.message_id) == (
        "hello xy",
        "ab@x.example",
        "<ab@x>",
    )
    assert_writable(parsed)
