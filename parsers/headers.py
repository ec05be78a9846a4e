"""Header fields: the header block, RFC 2047 encoded words, RFC 2231 parameters,
addresses and message ids, tolerant of raw 8-bit bytes and of every usual violation."""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses, parsedate_to_datetime
from urllib.parse import unquote_to_bytes

from parsers import charsets

MAX_HEADER_LINES = 2000
MAX_HEADER_VALUE = 65536
MAX_ENCODED_WORDS = 2000

_HEADER_NAME = re.compile(rb"[!-9;-~]{1,100}")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,60})\?([bBqQ])\?([^?\s]*?)\?=")
_SIMPLE_ADDRESS = re.compile(
    r"(?:([^<>@,]*?)\s*<([^<>\s@]+@[^<>\s@]+)>|([^<>\s@,]+@[^<>\s@,]+))")
_MSG_ID = re.compile(r"<([^<>\s]{1,500})>")
_BARE_MSG_ID = re.compile(r"[^<>\s@]{1,250}@[^<>\s@]{1,250}")


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    """Header fields in order, as raw bytes values (unfolded), names lower-cased."""

    fields: tuple[tuple[str, bytes], ...]

    def raw(self, name: str) -> bytes | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def raw_all(self, name: str) -> list[bytes]:
        return [value for key, value in self.fields if key == name]

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.fields)

    def text(self, name: str, hint: str | None = None) -> str | None:
        value = self.raw(name)
        return None if value is None else decode_value(value, hint)

    def ascii(self, name: str) -> str:
        """A structured field read as ASCII (content types, ids); '' when absent."""
        value = self.raw(name)
        return "" if value is None else value.decode("ascii", "replace")


def split_header_block(buf: bytes, start: int, end: int) -> tuple[HeaderBlock, int, bool]:
    """Read header lines from ``buf[start:end]``; returns the block, the body offset and
    whether the header block was cut short by a line that is not a header."""
    fields: list[tuple[str, bytes]] = []
    pos = start
    malformed = False
    current_name: str | None = None
    current: list[bytes] = []
    lines = 0
    while pos < end:
        nl = buf.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl
        next_pos = end if nl < 0 else nl + 1
        line = buf[pos:line_end]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip(b" \t"):
            pos = next_pos
            break
        lines += 1
        if line[:1] in (b" ", b"\t") and current_name is not None:
            if sum(map(len, current)) < MAX_HEADER_VALUE:
                current.append(line)
            pos = next_pos
            continue
        colon = line.find(b":")
        name = line[:colon].rstrip(b" \t") if colon > 0 else b""
        if colon <= 0 or not _HEADER_NAME.fullmatch(name) or lines > MAX_HEADER_LINES:
            if pos == start and line.startswith(b"From "):
                pos = next_pos  # mbox separator line
                continue
            malformed = True
            break
        if current_name is not None:
            fields.append((current_name, _unfold(current)))
        current_name = name.decode("ascii").lower()
        current = [line[colon + 1 :][:MAX_HEADER_VALUE]]
        pos = next_pos
    if current_name is not None:
        fields.append((current_name, _unfold(current)))
    # NUL has no place in a header and cannot be stored as database text.
    fields = [(key, value.replace(b"\x00", b"")) for key, value in fields]
    return HeaderBlock(tuple(fields)), pos, malformed


def _unfold(lines: list[bytes]) -> bytes:
    if len(lines) == 1:
        return lines[0].strip(b" \t")
    return b" ".join(part.strip(b" \t") for part in lines).strip()


def decode_value(value: bytes, hint: str | None = None) -> str:
    """Unstructured header value -> text: raw 8-bit detected, encoded words decoded."""
    if value.isascii():
        text = value.decode("ascii")
    else:
        text = charsets.decode(value, None, hint=hint).text
    if "=?" in text:
        text = decode_encoded_words(text)
    return text.replace("\r", "").replace("\n", " ")


def decode_encoded_words(text: str) -> str:
    """RFC 2047, leniently: words inside quotes or glued to text are decoded too, adjacent
    words of one charset are joined before decoding (clients split multibyte characters
    across words), and each word may use its own charset."""
    out: list[str] = []
    pos = 0
    pending: bytearray = bytearray()
    pending_charset: str | None = None

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending_charset is not None:
            out.append(charsets.decode(bytes(pending), pending_charset).text)
        pending = bytearray()
        pending_charset = None

    for count, match in enumerate(_ENCODED_WORD.finditer(text)):
        if count >= MAX_ENCODED_WORDS:
            break
        gap = text[pos : match.start()]
        if pending_charset is None or gap.strip(" \t\r\n"):
            flush()
            out.append(gap)
        charset, encoding, payload = match.groups()
        data = _decode_word(encoding, payload)
        if data is None:
            flush()
            out.append(match.group(0))
        else:
            if charset.lower() != (pending_charset or "").lower():
                flush()
                pending_charset = charset
            pending += data
        pos = match.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def _decode_word(encoding: str, payload: str) -> bytes | None:
    try:
        if encoding in "bB":
            raw = payload.encode("ascii", "ignore")
            raw = raw.rstrip(b"=")
            raw = raw[: len(raw) - len(raw) % 4] if len(raw) % 4 == 1 else raw
            return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        return binascii.a2b_qp(payload.replace("_", " ").encode("ascii", "ignore"))
    except (binascii.Error, ValueError):
        return None


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; name*=utf-8''%D0%...`` -> (lower-cased main value, params),
    with RFC 2231 continuations and charsets, and RFC 2047 words in quoted names (Outlook)."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[str, bool]]] = {}
    for key, raw in _iter_params(rest):
        name, star, index = _param_name(key)
        if index is None and not star:
            params.setdefault(name, raw)
            continue
        extended.setdefault(name, {})[index or 0] = (raw, star)
    for name, pieces in extended.items():
        joined = bytearray()
        charset: str | None = None
        for i in sorted(pieces)[:200]:
            raw, encoded = pieces[i]
            if encoded:
                if i == min(pieces) and raw.count("'") >= 2:
                    charset, _, raw = raw.split("'", 2)
                joined += unquote_to_bytes(raw)
            else:
                joined += raw.encode("utf-8", "surrogateescape")
        params[name] = charsets.decode(bytes(joined), charset or "utf-8").text
    for name, text in params.items():
        if "=?" in text:
            params[name] = decode_encoded_words(text)
    return main.strip().lower(), params


def _param_name(key: str) -> tuple[str, bool, int | None]:
    key = key.strip().lower()
    star = key.endswith("*")
    if star:
        key = key[:-1]
    base, sep, index = key.partition("*")
    if sep and index.isdigit():
        return base, star, int(index)
    return key, star, None


def _iter_params(rest: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i = 0
    n = len(rest)
    while i < n and len(out) < 500:
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip(" \t;")
        j = eq + 1
        while j < n and rest[j] in " \t":
            j += 1
        if j < n and rest[j] == '"':
            j += 1
            buf: list[str] = []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(rest[j])
                j += 1
            val = "".join(buf)
            semi = rest.find(";", j)
            i = n if semi < 0 else semi + 1
        else:
            semi = rest.find(";", j)
            end = n if semi < 0 else semi
            val = rest[j:end].strip()
            i = end + 1
        if key:
            out.append((key, val))
    return out


def parse_addresses(value: bytes | None, hint: str | None = None) -> list[tuple[str, str]]:
    """Address list -> [(display name, address)], names decoded, addresses as written."""
    if not value:
        return []
    text = value[:8192].decode("ascii") if value.isascii() else decode_raw8(value[:8192], hint)
    text = text.replace("\r", " ").replace("\n", " ")
    simple = _simple_addresses(text)
    pairs = simple if simple is not None else getaddresses([text])
    out: list[tuple[str, str]] = []
    for name, addr in pairs:
        addr = addr.strip()
        if not addr and not name:
            continue
        if "=?" in name:
            name = decode_encoded_words(name)
        if addr and "@" not in addr and "=?" in addr:
            addr = ""
        out.append((name.strip().strip('"').strip(), addr))
    return out


def _simple_addresses(text: str) -> list[tuple[str, str]] | None:
    """``Name <a@b>, c@d`` without quoting or comments, read without the general parser
    (which costs a tenth of a millisecond per address); None for anything else."""
    if any(ch in text for ch in '"()\\;:[]'):
        return None
    out: list[tuple[str, str]] = []
    for piece in text.split(",")[:500]:
        match = _SIMPLE_ADDRESS.fullmatch(piece.strip())
        if match is None:
            if piece.strip():
                return None
            continue
        name, angle, bare = match.groups()
        out.append(((name or "").strip(), angle or bare or ""))
    return out


def decode_raw8(value: bytes, hint: str | None) -> str:
    return charsets.decode(value, None, hint=hint).text


def parse_msg_ids(value: bytes | None) -> tuple[str, ...]:
    if not value:
        return ()
    text = value[:16384].decode("ascii", "replace")
    ids = [f"<{m}>" for m in _MSG_ID.findall(text)]
    if not ids:
        ids = [f"<{m}>" for m in _BARE_MSG_ID.findall(text)]
    return tuple(dict.fromkeys(ids))[:200]


def parse_date(value: bytes | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value[:200].decode("ascii", "replace").strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
