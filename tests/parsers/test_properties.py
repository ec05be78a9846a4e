"""Properties over generated MIME trees: whatever the charset, transfer encoding and
structure, the customer's words come back intact and files come back byte for byte."""

from __future__ import annotations

import base64
import hashlib
import quopri

from hypothesis import given, settings
from hypothesis import strategies as st

from parsers import parse_mail
from tests.parsers.unicode_check import assert_writable

WORDS = ("здравствуйте", "ошибка", "не", "работает", "очередь", "оператор", "звонок", "чат",
         "после", "обновления", "Windows", "AgentZone", "error", "agent", "queue", "the",
         "login", "fails", "Спасибо", "Добрый", "день", "версия", "браузер", "3.2.1")
CHARSETS = ("utf-8", "koi8-r", "windows-1251", "iso-8859-5", "utf-16", "cp866")
ENCODINGS = ("base64", "quoted-printable", "8bit")

sentences = st.lists(st.sampled_from(WORDS), min_size=3, max_size=25).map(" ".join)


@st.composite
def text_part(draw: st.DrawFn) -> tuple[bytes, str]:
    words = draw(sentences)
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(ENCODINGS if charset != "utf-16" else ("base64",)))
    data = words.encode(charset)
    if cte == "base64":
        payload = base64.encodebytes(data)
    elif cte == "quoted-printable":
        payload = quopri.encodestring(data)
    else:
        payload = data
    head = f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}"
    return head.encode() + b"\r\n\r\n" + payload, words


@st.composite
def file_part(draw: st.DrawFn) -> tuple[bytes, bytes]:
    data = draw(st.binary(min_size=1, max_size=300))
    name = draw(st.sampled_from(["dump.bin", "отчёт.pdf", "log.zip"]))
    head = ("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename*=utf-8''"
            f"{''.join(f'%{b:02X}' for b in name.encode())}")
    return head.encode() + b"\r\n\r\n" + base64.encodebytes(data), data


def multipart(children: list[bytes], subtype: str, boundary: str) -> bytes:
    out = f"Content-Type: multipart/{subtype}; boundary=\"{boundary}\"\r\n\r\n".encode()
    for child in children:
        out += f"--{boundary}\r\n".encode() + child + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@settings(max_examples=150, deadline=None)
@given(st.lists(text_part(), min_size=1, max_size=4), st.lists(file_part(), max_size=3),
       st.booleans(), st.sampled_from(["\r\n", "\n"]))
def test_text_and_files_survive_any_structure(texts: list[tuple[bytes, str]],
                                              files: list[tuple[bytes, bytes]],
                                              nest: bool, newline: str) -> None:
    parts = [t for t, _ in texts] + [f for f, _ in files]
    if nest and len(parts) > 1:
        body = multipart([parts[0], multipart(parts[1:], "mixed", "inner=_1")], "mixed", "o")
    else:
        body = multipart(parts, "mixed", "outer-boundary")
    raw = b"From: a@customer.ru\r\nSubject: test\r\nMIME-Version: 1.0\r\n" + body
    if newline == "\n":
        raw = raw.replace(b"\r\n", b"\n")
    parsed = parse_mail(raw)
    assert_writable(parsed)
    for _, words in texts:
        assert words in parsed.text
    expected = {hashlib.sha256(data).hexdigest() for _, data in files}
    got = {a.sha256 for a in parsed.attachments} | {s.sha256 for s in parsed.screenshots}
    assert got == expected
    assert not any("declared" in w for w in parsed.warnings), parsed.warnings


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab_1 -.ошибка\n", max_size=40))
def test_keyword_rewrite_matches_exactly_what_the_rule_matches(text: str) -> None:
    import re

    from parsers.classify import _literal_first

    for source in (r"\bab\b", r"\bошибк\w*", r"\ba1?\b", r"\bb_a"):
        assert [m.span() for m in re.finditer(source, text)] == [
            m.span() for m in re.finditer(_literal_first(source), text)]
