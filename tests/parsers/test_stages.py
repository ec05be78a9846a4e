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
