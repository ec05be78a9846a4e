"""Every message of tests/data/mail is read as its expectations say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from parsers import as_json, parse_mail, render_text
from tests.parsers.unicode_check import assert_writable

MAIL = Path(__file__).parent.parent / "data" / "mail"
EXPECTED: dict[str, dict[str, object]] = json.loads(
    (MAIL / "expected.json").read_text(encoding="utf-8"))
MOJIBAKE = re.compile(r"[РС][\u0400-\u045f\u00a0-\u00bf\u2018-\u203a]{1}[РС]|Ð|Ñ\u0080|\ufffd")
EXACT = ("subject", "from", "sender_name", "language", "kind", "priority", "text", "new_text",
         "signature", "is_auto_reply", "registration_number", "in_reply_to", "references",
         "missing", "signed")


def test_corpus_is_big_enough_and_complete() -> None:
    files = {p.stem for p in MAIL.glob("*.eml")}
    assert len(files) >= 80
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_message_is_read_as_expected(name: str) -> None:
    expect = EXPECTED[name]
    parsed = parse_mail((MAIL / f"{name}.eml").read_bytes())
    got = as_json(parsed)
    assert not any(w.startswith("internal error") for w in parsed.warnings), parsed.warnings
    assert render_text(parsed)
    assert_writable(parsed)
    for key in EXACT:
        if key in expect:
            assert got[key] == expect[key], key
    env = got["environment"]
    assert isinstance(env, dict)
    for key, value in dict(expect.get("environment", {})).items():  # type: ignore[call-overload]
        assert env[key] == value, key
    sources = got["sources"]
    assert isinstance(sources, dict)
    for key, value in dict(expect.get("source_contains", {})).items():  # type: ignore[call-overload]
        assert value in sources[key]
    for field, key in (("text", "text_contains"), ("new_text", "new_text_contains"),
                       ("quoted_text", "quoted_contains"), ("signature", "signature_contains")):
        for piece in expect.get(key, []):  # type: ignore[attr-defined]
            assert piece in str(got[field]), (field, piece)
    for piece in expect.get("text_excludes", []):  # type: ignore[attr-defined]
        assert piece not in parsed.text
    for piece in expect.get("html_excludes", []):  # type: ignore[attr-defined]
        assert parsed.html is not None
        assert piece not in parsed.html
    if "html_present" in expect:
        assert (parsed.html is not None) == expect["html_present"]
    if expect.get("no_mojibake"):
        assert not MOJIBAKE.search(parsed.subject + parsed.text + parsed.sender_name)
    shots = parsed.screenshots
    if "screenshot_names" in expect:
        assert [s.filename for s in shots] == expect["screenshot_names"]
    if "screenshot_count" in expect:
        assert len(shots) == expect["screenshot_count"]
    if "screenshot_sizes" in expect:
        assert [[s.width, s.height] for s in shots] == expect["screenshot_sizes"]
    if "screenshot_types" in expect:
        assert [s.content_type for s in shots] == expect["screenshot_types"]
    if "screenshot_sources" in expect:
        assert [s.source for s in shots] == expect["screenshot_sources"]
    if "forwarded_screenshots" in expect:
        assert [s.filename for s in shots if s.forwarded] == expect["forwarded_screenshots"]
    files = parsed.attachments
    if "attachment_names" in expect:
        assert [a.filename for a in files] == expect["attachment_names"]
    if "attachment_count" in expect:
        assert len(files) == expect["attachment_count"]
    if "attachment_sizes" in expect:
        assert [a.size for a in files] == expect["attachment_sizes"]
    for piece in expect.get("attachment_notes_contain", []):  # type: ignore[attr-defined]
        assert any(piece in (a.note or "") for a in files)
    if "forwarded_subjects" in expect:
        assert [f.subject for f in parsed.forwarded] == expect["forwarded_subjects"]
    if "kind_reason_contains" in expect:
        assert str(expect["kind_reason_contains"]) in parsed.classification.kind_reason
    if "bounce_original" in expect:
        assert parsed.bounce.is_bounce
        assert parsed.bounce.original_message_id == expect["bounce_original"]
    if "bounce" in expect:
        assert parsed.bounce.is_bounce == expect["bounce"]
    if expect.get("warnings_nonempty"):
        assert parsed.warnings
    for piece in expect.get("warnings_contain", []):  # type: ignore[attr-defined]
        assert any(piece in w for w in parsed.warnings), parsed.warnings
