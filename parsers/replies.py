"""Follow-ups: the new text separated from the quoted history and the signature.

Markers are those of the clients the desk sees, in Russian and English: Outlook header
blocks and ``-----Original Message-----``, Gmail ``On … wrote:`` (also wrapped over two
lines) and its Russian ``… г. в 10:00, Имя <адрес>:``, Thunderbird ``… пишет:``, Apple
Mail ``… написал(а):``, Yandex ``15.01.2024, 10:00, "Имя" <адрес>:``, Mail.ru ``…, 10:00
+03:00 от Имя <адрес>:`` and ``>`` quoting. Nothing is dropped: the three parts together
are the whole text.

A sign-off line (``Спасибо!``, ``Best regards``) starts the signature only when what follows
looks like one (a few short lines: name, title, company, phone), not when it carries the
request (sentences, questions, system versions): people put versions after "Спасибо!".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from parsers.versions import mentions_environment

MAX_SCAN_LINES = 20000
MAX_LINE = 400
_SIGNATURE_TAIL_LINES = 8
_SIGNATURE_LINE_WORDS = 8
_SENTENCE_WORDS = 4

_ORIGINAL = re.compile(
    r"^[-_=\s]{0,5}-{2,}\s*(?:original message|исходное сообщение|оригинальное сообщение|"
    r"исходное письмо|reply message|ответное сообщение)\s*-{2,}[-\s]*$", re.I)
_FORWARD = re.compile(
    r"^[-\s]{0,5}-{2,}\s*(?:forwarded message|пересылаемое сообщение|"
    r"перенаправленное сообщение|переслано|forwarded)\b.*$|^(?:begin forwarded message|"
    r"начало переадресованного сообщения)\s*:?$", re.I)
_HEADER_FROM = re.compile(r"^\*?(?:from|от|відправник|von|de)\s*\*?:\*?\s*\S", re.I)
_HEADER_OTHER = re.compile(
    r"^\*?(?:sent|date|to|cc|subject|отправлено|дата|кому|копия|тема|надіслано|gesendet)"
    r"\s*\*?:", re.I)
_GMAIL_EN = re.compile(r"^on\s.{1,300}\bwrote\s*:$", re.I)
_WROTE = re.compile(
    r"(?:wrote|writes|написал\(а\)|написала|написал|пишет|пишут|писал\(а\))\s*:$", re.I)
_GMAIL_RU = re.compile(r"\d{4}\s*г\.?,?\s*в\s*\d{1,2}:\d{2}.{0,250}:$", re.I)
_YANDEX = re.compile(r"^\d{1,2}\.\d{1,2}\.\d{2,4},?\s*(?:в\s*)?\d{1,2}:\d{2},\s*.{1,250}:$")
_MAILRU = re.compile(
    r"\d{4},?\s*\d{1,2}:\d{2}\s*(?:[+-]\d{2}:?\d{2}\s+)?(?:от|from)\s+.{1,250}:$", re.I)
_ADDRESS_COLON = re.compile(r"\d{1,2}:\d{2}.{0,250}<[^<>\s]+@[^<>\s]+>\s*:$")
_UNDERSCORES = re.compile(r"^[_\-=]{10,}$")

_SIG_DASHES = re.compile(r"^--\s?$")
_MOBILE = re.compile(
    r"^(?:sent from my .{1,60}|sent from (?:mail|outlook|yandex|yahoo|mail\.ru).{0,80}|"
    r"get outlook for .{1,40}|получить outlook для .{1,40}|"
    r"отправлено с (?:iphone|ipad|моего .{1,60}|помощью .{1,80})|отправлено из .{1,100}|"
    r"sent with .{1,60}|sent via .{1,60}|отправлено через .{1,80})$", re.I)
_VALEDICTION = re.compile(
    r"^(?:с уважением|с наилучшими пожеланиями|всего доброго|всего хорошего|"
    r"с благодарностью|заранее спасибо|большое спасибо|спасибо|благодарю|best regards|"
    r"kind regards|warm regards|regards|"
    r"best wishes|best|thanks|thank you|many thanks|cheers|sincerely|"
    r"yours sincerely|br)[\s,.!]*$", re.I)


@dataclass(frozen=True, slots=True)
class Split:
    new_text: str
    quoted_text: str
    signature: str
    marker: str | None


def _attribution(line: str, nxt: str) -> str | None:
    if len(line) > MAX_LINE:
        return None
    if _ORIGINAL.match(line):
        return "original message separator"
    if _GMAIL_EN.match(line):
        return "'On … wrote:'"
    if line.lower().startswith("on ") and _GMAIL_EN.match(f"{line} {nxt}"[: MAX_LINE * 2]):
        return "'On … wrote:'"
    if _YANDEX.match(line):
        return "Yandex attribution"
    if _MAILRU.search(line):
        return "Mail.ru attribution"
    if _GMAIL_RU.search(line):
        return "Gmail attribution (ru)"
    if _WROTE.search(line) and (any(c.isdigit() for c in line) or "@" in line):
        return "'… wrote:' / '… написал(а):'"
    if _ADDRESS_COLON.search(line):
        return "attribution with address"
    return None


def _outlook_block(lines: list[str], i: int) -> bool:
    if not _HEADER_FROM.match(lines[i]):
        return False
    others = 0
    for line in lines[i + 1 : i + 7]:
        if _HEADER_OTHER.match(line.strip()):
            others += 1
    return others >= 2


def split(text: str, *, is_forward: bool = False) -> Split:
    """Split ``text`` (the whole text of a message) into new, quoted and signature parts.
    ``is_forward`` says the subject marks a forward, whose header blocks are content."""
    lines = text.split("\n")
    scan = min(len(lines), MAX_SCAN_LINES)
    stripped = [line.strip() for line in lines[:scan]]
    quote_at: int | None = None
    marker: str | None = None
    forwarded_from: int | None = None
    span = 1
    for i in range(scan):
        line = stripped[i]
        if not line:
            continue
        if _FORWARD.match(line[:MAX_LINE]):
            forwarded_from = i
            continue
        if line.startswith(">"):
            quote_at, marker = i, "'>' quoting"
            break
        found = _attribution(line, stripped[i + 1] if i + 1 < scan else "")
        if found is not None:
            quote_at, marker = i, found
            # An attribution wrapped over two lines ("On … Support <\naddr> wrote:").
            span = 1 if _attribution(line, "") is not None else 2
            break
        if _outlook_block(stripped, i):
            recent_forward = forwarded_from is not None and i - forwarded_from <= 3
            if is_forward or recent_forward:
                continue
            quote_at, marker = i, "Outlook header block"
            break
    if quote_at is None:
        new_lines, quoted_lines = lines, []
    else:
        if quote_at > 0 and _UNDERSCORES.match(stripped[quote_at - 1]):
            quote_at -= 1
        new_lines, quoted_lines = lines[:quote_at], lines[quote_at:]
        if not "".join(new_lines).strip():
            if marker == "'>' quoting":
                new_lines, quoted_lines = _bottom_posted(quoted_lines)
            elif _quoted_next(quoted_lines[span:]):
                # Written under "On … wrote:" and its quote, or between the quoted lines.
                below, quoted = _bottom_posted(quoted_lines[span:])
                new_lines, quoted_lines = below, quoted_lines[:span] + quoted
    body, signature = _split_signature(new_lines)
    return Split(
        new_text="\n".join(body).strip("\n"),
        quoted_text="\n".join(quoted_lines).strip("\n"),
        signature="\n".join(signature).strip("\n"),
        marker=marker,
    )


def _quoted_next(lines: list[str]) -> bool:
    first = next((line.lstrip() for line in lines[:MAX_SCAN_LINES] if line.strip()), "")
    return first.startswith(">")


def _bottom_posted(lines: list[str]) -> tuple[list[str], list[str]]:
    """Replies written under the quote (or between quoted lines)."""
    new: list[str] = []
    quoted: list[str] = []
    for line in lines:
        (quoted if line.lstrip().startswith(">") else new).append(line)
    return new, quoted


def _split_signature(lines: list[str]) -> tuple[list[str], list[str]]:
    window = lines[-60:]
    offset = len(lines) - len(window)
    for i in range(len(window) - 1, -1, -1):
        if _SIG_DASHES.match(window[i].rstrip("\r")):
            return lines[: offset + i], lines[offset + i :]
    for i in range(len(window) - 1, -1, -1):
        if _MOBILE.match(window[i].strip()[:MAX_LINE]):
            return lines[: offset + i], lines[offset + i :]
    for i, raw in enumerate(window):
        line = raw.strip()
        if line and len(line) < 60 and _VALEDICTION.match(line):
            tail = [t.strip() for t in window[i + 1 :] if t.strip()]
            if _signature_like(tail):
                return lines[: offset + i], lines[offset + i :]
    return lines, []


def _signature_like(tail: list[str]) -> bool:
    """Name, title, company, phone lines; not sentences, questions or system versions."""
    if len(tail) > _SIGNATURE_TAIL_LINES:
        return False
    for line in tail:
        words = len(line.split())
        if len(line) >= 100 or words > _SIGNATURE_LINE_WORDS or line.endswith("?"):
            return False
        if words >= _SENTENCE_WORDS and line.endswith((".", "!")):
            return False
    return not (tail and mentions_environment("\n".join(tail)))


def environment_text(signature: str) -> str:
    """The part of a signature that may carry system parameters: without the ``--`` line
    and the mobile client's footer, whose OS is the phone's, not the operator's."""
    return "\n".join(line for line in signature.split("\n")
                     if not _SIG_DASHES.match(line.rstrip("\r"))
                     and not _MOBILE.match(line.strip()[:MAX_LINE]))
