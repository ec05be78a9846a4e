"""No byte string makes the parser raise or hang; the last-resort guard is not how normal
breakage is handled."""

from __future__ import annotations

import random
import re
import time
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parsers.request
from parsers import ParseOptions, parse_mail
from parsers.classify import ClassifyRules
from tests.parsers.unicode_check import assert_writable

MAIL = Path(__file__).parent.parent / "data" / "mail"
SEEDS = [p.read_bytes() for p in sorted(MAIL.glob("*.eml"))]
FRAGMENTS = [
    b"\r\n", b"\n", b"--", b"--b1", b"--b1--", b"Content-Type: multipart/mixed; boundary=b1\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"=?utf-8?B?0J8=?=", b"=?koi8-r?Q?=F0?=",
    b"filename*0*=utf-8''%D0", b"begin 644 x\n", b"\nend\n", b"<blockquote>", b"<div>" * 50,
    b"\xff\xfe", b"\xd0", b"data:image/png;base64,iVBORw0KGgo=", b"\x78\x9f\x3e\x22",
    b"-----BEGIN PGP SIGNED MESSAGE-----\n", b"> ", b"On Mon wrote:\n", b"\x00",
    b"Content-Type: text/plain; charset=utf-7\r\n", b"+2D3YPQ-", b"=?utf-7?Q?+2D0-?=",
    b"+2D3eAA-", rb"{\rtf1 \u-10179?}",
]


def _internal_error(result: object) -> bool:
    warnings = getattr(result, "warnings", ())
    return any(w.startswith("internal error") for w in warnings)


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(FRAGMENTS)
        elif op == 2:
            del buf[pos:pos + rng.randint(1, 200)]
        elif op == 3 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start:start + rng.randint(1, 300)]
        elif op == 4:
            del buf[pos:]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
    return bytes(buf)


def generated(rng: random.Random) -> bytes:
    parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 40))]
    return b"Subject: x\r\n" + b"".join(parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = parse_mail(raw)
    assert not _internal_error(result)
    assert_writable(result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.randoms(use_true_random=False))
def test_mutated_corpus_messages_never_raise(seed: bytes, rng: random.Random) -> None:
    result = parse_mail(mutate(rng, seed))
    assert not _internal_error(result)
    assert_writable(result)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60), st.text(max_size=200))
def test_structured_fragments_never_raise(fragments: list[bytes], text: str) -> None:
    raw = b"".join(fragments) + text.encode("utf-8", "surrogatepass")
    result = parse_mail(raw)
    assert not _internal_error(result)
    assert_writable(result)


# A message that takes this long is stuck (a loop, a backtracking pattern), not slow: the
# parse's speed, the pathological messages' below included, is bench/parse.py's to measure
# (the slowest took 118 ms there). A bound near the usual time fails on a loaded or slow
# machine: 1.05 s for one fuzzed message once, on a day the machine ran three times slower.
HANG = 10.0


def test_fuzz_ten_thousand_messages_none_hangs() -> None:
    rng = random.Random(20260125)
    for i in range(10_000):
        raw = generated(rng) if i % 4 == 0 else mutate(rng, rng.choice(SEEDS))
        t0 = time.monotonic()
        result = parse_mail(raw)
        assert time.monotonic() - t0 < HANG, raw[:200]
        assert not _internal_error(result), result.warnings
        assert_writable(result)


def test_guard_turns_an_internal_bug_into_a_warning(monkeypatch: object) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(parsers.request.versions, "extract", broken)  # type: ignore[attr-defined]
    result = parse_mail(b"Subject: x\r\n\r\nbody text")
    assert result.warnings[0].startswith("internal error while parsing (RuntimeError: boom)")
    assert "body text" in result.text


def pathological() -> dict[str, bytes]:
    head = b"From: a@b\r\nSubject: p\r\n"
    return {
        "deep html": head + b"Content-Type: text/html\r\n\r\n" + b"<div><li>" * 200_000,
        "million tiny parts": head + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        + b"--b\r\n\r\nx\r\n" * 1_000_000 + b"--b--\r\n",
        "deep multipart": head + b"".join(
            f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
            for i in range(20_000)),
        "deep rfc822": head + b"Content-Type: message/rfc822\r\n\r\n" * 50_000,
        "huge header": head + b"X-Long: " + b"=?utf-8?B?0J8=?= " * 200_000 + b"\r\n\r\nx",
        "many headers": head + b"X-H: v\r\n" * 300_000 + b"\r\nx",
        "long line": head + b"\r\n" + b"a" * 20_000_000,
        "quotes": head + b"\r\n" + b"> On x wrote:\n" * 300_000,
        "digits": head + b"\r\n" + b"Windows 1" + b".1" * 500_000 + b" Chrome " + b"9" * 100_000,
        "unclosed comments": head + b"Content-Type: text/html\r\n\r\n" + b"<!--<a " * 300_000,
        "data uris": head + b"Content-Type: text/html\r\n\r\n"
        + b"<img src='data:image/png;base64,iVBORw0KGgo='>" * 50_000,
        "uu flood": head + b"\r\n" + b"begin 644 a\nM\nend\n" * 100_000,
    }


def test_no_pathological_message_hangs() -> None:
    for name, raw in pathological().items():
        t0 = time.monotonic()
        result = parse_mail(raw)
        assert time.monotonic() - t0 < HANG, name
        assert not _internal_error(result), name


def test_25_mb_attachment_peak_memory_below_four_times_its_size() -> None:
    size = 25 * 1024 * 1024
    payload = random.Random(1).randbytes(size)
    import base64
    body = base64.encodebytes(payload)
    raw = (b"From: a@b\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nbig file\r\n--b\r\nContent-Type: "
           b"application/zip\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: "
           b"attachment; filename=big.zip\r\n\r\n" + body + b"--b--\r\n")
    del body
    tracemalloc.start()
    try:
        result = parse_mail(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.attachments[0].size == size
    assert peak < 4 * size


def test_registration_number_prefix_and_pattern_are_configurable() -> None:
    raw = "Subject: Re: [HD-2026-42] ошибка\r\n\r\nДа.\r\n> [OV-2026-000001]".encode()
    assert parse_mail(raw).registration_number == "OV-2026-000001"
    assert parse_mail(raw, options=ParseOptions(number_prefix="HD")).registration_number == (
        "HD-2026-42")
    custom = ParseOptions(number_pattern=re.compile(r"#(\d{5})"))
    assert parse_mail(b"Subject: ticket #12345\r\n\r\n", options=custom).registration_number == (
        "12345")


def test_screenshot_size_limit_keeps_the_image_as_a_file_with_the_reason() -> None:
    raw = (MAIL / "html_cid_inline_image.eml").read_bytes()
    result = parse_mail(raw, options=ParseOptions(max_screenshot_bytes=100))
    assert result.screenshots == ()
    assert "size limit" in (result.attachments[0].note or "")


def test_classify_rules_come_from_configuration() -> None:
    rules = ClassifyRules(tags=((r"\[bug\]", "problem"),))
    result = parse_mail(b"Subject: [bug] x\r\n\r\nhello", options=ParseOptions(classify=rules))
    assert (result.kind, result.priority) == ("problem", "P1")
