"""Parsing throughput and bounds: ``.venv/bin/python bench/parse.py``.

Prints messages/s and MB/s for the full ``parse_mail`` (text, screenshots, versions, kind)
next to the standard library's bare ``email.message_from_bytes(policy=default)`` plus a walk
that decodes every part, over one generated corpus; the peak RSS growth while parsing a
25 MB attachment (in a child process); the slowest pathological message; and the slowest
of 10,000 fuzzed ones.
"""

from __future__ import annotations

import base64
import email
import email.policy
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parsers import parse_mail
from tests.parsers import test_robustness as robustness

RU = ("Здравствуйте! После обновления у оператора не работает AgentZone 3.2.1.\n"
      "Версия ОС: Windows 10 Pro\nБраузер: Google Chrome 120.0.6099.130\n"
      "Помогите, пожалуйста, это срочно.\n\nС уважением,\nИван Петров\n")
EN = ("Hello,\nOne agent gets an error when closing a chat in OmniVOX Chat 2.4.1.\n"
      "OS version: Ubuntu 22.04\nBrowser: Firefox 121.0\n\nBest regards,\nJohn\n")


def png(size: int, rng: random.Random) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 1280, 720, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rng.randbytes(size))


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def head(i: int, subject: str, ctype: str, extra: str = "") -> bytes:
    subj = "=?utf-8?B?" + base64.b64encode(subject.encode()).decode() + "?="
    return (f"From: =?utf-8?B?0JjQstCw0L0=?= <ivan{i}@customer.ru>\r\nTo: support@omnivox.ru"
            f"\r\nSubject: {subj}\r\nDate: Mon, 15 Jan 2024 10:00:00 +0300\r\nMessage-ID: "
            f"<{i}@customer.ru>\r\nMIME-Version: 1.0\r\n{extra}Content-Type: {ctype}\r\n"
            ).encode()


KINDS = ("plain utf-8", "koi8-r / windows-1251", "HTML alternative", "200 KB screenshot",
         "reply with quotes", "user-agent pasted")


def corpus(n: int) -> list[bytes]:
    """``n`` messages, the six kinds of KINDS in turn."""
    rng = random.Random(7)
    out: list[bytes] = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append(head(i, "Ошибка AgentZone", "text/plain; charset=utf-8")
                       + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + RU.encode())
        elif kind == 1:
            cs = "koi8-r" if i % 2 else "windows-1251"
            out.append(head(i, "Ошибка", f"text/plain; charset={cs}")
                       + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + RU.encode(cs))
        elif kind == 2:
            html = "<html><body>" + "".join(f"<p>{line}</p>" for line in EN.split("\n")) + (
                "<ul><li>one</li><li>two <a href='https://x.example'>link</a></li></ul>"
                "</body></html>")
            out.append(head(i, "Chat error", "multipart/alternative; boundary=alt")
                       + b"\r\n--alt\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                       + EN.encode().replace(b"\n", b"\r\n")
                       + b"\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
                       + html.encode() + b"\r\n--alt--\r\n")
        elif kind == 3:
            out.append(head(i, "Скриншот", "multipart/mixed; boundary=mix")
                       + b"\r\n--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                       + RU.encode() + b"\r\n--mix\r\nContent-Type: image/png; name=s.png\r\n"
                       b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment;"
                       b" filename=s.png\r\n\r\n" + b64(png(200_000, rng)) + b"--mix--\r\n")
        elif kind == 4:
            reply = ("Проблема повторилась в Яндекс Браузере 24.1.\r\n\r\n15.01.2024, 10:00, "
                     "\"Поддержка\" <support@omnivox.ru>:\r\n" + "".join(
                         f"> {line}\r\n" for line in RU.split("\n")) * 5)
            out.append(head(i, "Re: [OV-2026-000123] Ошибка", "text/plain; charset=utf-8",
                            "In-Reply-To: <ack@omnivox.ru>\r\n")
                       + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + reply.encode())
        else:
            out.append(head(i, "Question", "text/plain; charset=us-ascii")
                       + b"\r\n" + EN.encode() + b"UA: Mozilla/5.0 (Windows NT 10.0; Win64; "
                       b"x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
                       b"Safari/537.36\r\n")
    return out


def stdlib_walk(raw: bytes) -> None:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        if not part.is_multipart():
            try:
                part.get_content()  # type: ignore[attr-defined]
            except (LookupError, ValueError, KeyError):
                part.get_payload(decode=True)


def measure(label: str, func: object, messages: list[bytes], rounds: int) -> float:
    total = sum(map(len, messages)) * rounds
    start = time.perf_counter()
    for _ in range(rounds):
        for raw in messages:
            func(raw)  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    count = len(messages) * rounds
    rate = count / elapsed
    print(f"  {label:42} {rate:9.0f} messages/s  {total / elapsed / 1e6:8.1f} MB/s")
    return rate


def _rate(func: object, messages: list[bytes], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for raw in messages:
            func(raw)  # type: ignore[operator]
    return len(messages) * rounds / (time.perf_counter() - start)


CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from parsers import parse_mail
parse_mail(b"Subject: warm-up\\r\\n\\r\\nx")
raw = open(sys.argv[1], "rb").read()

def status(key):
    lines = open("/proc/self/status").read().splitlines()
    return int(next(line for line in lines if line.startswith(key)).split()[1])

# Reset the high-water mark (Linux) so that reading the file does not count.
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
result = parse_mail(raw)
print(status("VmHWM:") - before, result.attachments[0].size)
"""


def big_attachment() -> None:
    size = 25 * 1024 * 1024
    raw = (b"From: a@b\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nlog attached\r\n--b\r\nContent-Type: "
           b"application/zip\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: "
           b"attachment; filename=big.zip\r\n\r\n" + b64(random.Random(3).randbytes(size))
           + b"--b--\r\n")
    with tempfile.NamedTemporaryFile(suffix=".eml") as tmp:
        tmp.write(raw)
        tmp.flush()
        root = str(Path(__file__).resolve().parent.parent)
        out = subprocess.run([sys.executable, "-c", CHILD, tmp.name, root],
                             capture_output=True, text=True, check=True).stdout.split()
    growth_kb, decoded = int(out[0]), int(out[1])
    print(f"  25 MB attachment ({len(raw) / 1e6:.1f} MB message, {decoded} bytes decoded): "
          f"peak RSS growth {growth_kb / 1024:.1f} MiB = {growth_kb * 1024 / size:.2f}x "
          "the attachment")


def pathological() -> None:
    top = b"From: a@b\r\nSubject: p\r\n"
    cases = {
        "HTML nested 200,000 deep": top + b"Content-Type: text/html\r\n\r\n"
        + b"<div><li>" * 200_000,
        "a million tiny parts": top + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        + b"--b\r\n\r\nx\r\n" * 1_000_000 + b"--b--\r\n",
        "multipart nested 20,000 deep": top + b"".join(
            f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
            for i in range(20_000)),
        "300,000 header lines": top + b"X-H: v\r\n" * 300_000 + b"\r\nx",
        "20 MB single line": top + b"\r\n" + b"a" * 20_000_000,
        "300,000 quoted lines": top + b"\r\n" + b"> On x wrote:\n" * 300_000,
        # The tests' own (which only make sure that none hangs).
        **{f"{name} (tests)": raw for name, raw in robustness.pathological().items()},
    }
    slowest = ("", 0.0)
    for name, raw in cases.items():
        start = time.perf_counter()
        parse_mail(raw)
        elapsed = time.perf_counter() - start
        print(f"  {name:42} {elapsed * 1000:8.1f} ms")
        if elapsed > slowest[1]:
            slowest = (name, elapsed)
    print(f"  slowest: {slowest[0]} in {slowest[1] * 1000:.1f} ms")


def fuzzed() -> None:
    """The tests' 10,000 fuzzed messages (mutated corpus mails and generated ones): the
    slowest to parse."""
    rng = random.Random(20260125)
    generated, mutate, seeds = robustness.generated, robustness.mutate, robustness.SEEDS
    slowest = 0.0
    began = time.perf_counter()
    for i in range(10_000):
        raw = generated(rng) if i % 4 == 0 else mutate(rng, rng.choice(seeds))
        start = time.perf_counter()
        parse_mail(raw)
        slowest = max(slowest, time.perf_counter() - start)
    print(
        f"  10,000 fuzzed messages in {time.perf_counter() - began:.1f} s; "
        f"slowest {slowest * 1000:.1f} ms"
    )


def main() -> None:
    messages = corpus(300)
    parse_mail(messages[-1])  # loads ua-parser's rules once, as the daemon does at start
    size = sum(map(len, messages))
    print(f"corpus: {len(messages)} messages, {size / 1e6:.1f} MB "
          "(plain, koi8-r/windows-1251, HTML, 200 KB screenshots, replies, user-agents)")
    ours = measure("parse_mail (full parse)", parse_mail, messages, 3)
    theirs = measure("stdlib message_from_bytes + decoding walk", stdlib_walk, messages, 3)
    print(f"  full parse is {ours / theirs:.2f}x the bare stdlib walk")
    print("by kind (full parse / stdlib walk, messages/s):")
    for index, kind in enumerate(KINDS):
        subset = messages[index::len(KINDS)]
        rates = [_rate(func, subset, 3) for func in (parse_mail, stdlib_walk)]
        print(f"  {kind:42} {rates[0]:9.0f} / {rates[1]:7.0f}  ({rates[0] / rates[1]:.2f}x)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"memory (this process peak so far: {rss / 1024:.0f} MiB):")
    big_attachment()
    print("pathological messages:")
    pathological()
    fuzzed()


if __name__ == "__main__":
    main()
