"""Bytes -> text for mail: declared charsets, mislabelled parts and mojibake repair.

Mail in the desk's mailboxes is mostly Russian and English, so the accidents that matter
are Cyrillic ones: windows-1251 or koi8-r declared as us-ascii / latin-1 or not declared
at all, UTF-8 declared as a single-byte charset, and text that was already decoded with
the wrong charset once before it was sent (``Р—РґСЂР°РІ…``). Cyrillic is decided by a cheap
letter-frequency score; anything else falls back to charset-normalizer.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache

import charset_normalizer

# Charsets whose declaration is commonly wrong: clients put them on anything.
_UNTRUSTED = frozenset({"ascii", "iso8859_1", "cp1252", "iso8859_15"})
_LATIN_FALLBACK = frozenset({"iso8859_1", "cp1252", "iso8859_15"})
# 7-bit encodings where ASCII-only bytes still need the codec.
_SEVEN_BIT = frozenset(
    {"utf_7", "iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_2004",
     "iso2022_jp_3", "iso2022_jp_ext", "iso2022_kr", "hz"}
)
_WIDE = frozenset(
    {"utf_16", "utf_16_le", "utf_16_be", "utf_32", "utf_32_le", "utf_32_be"}
)
# Text codecs that are not charsets: a header must not turn escapes into text.
_REFUSED = frozenset({"idna", "punycode", "unicode_escape", "raw_unicode_escape", "mbcs",
                      "oem", "undefined"})
_ALIASES = {
    "x-mac-cyrillic": "mac_cyrillic",
    "x-user-defined": "cp1252",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "windows-874": "cp874",
    "x-sjis": "shift_jis",
    "unicode-1-1-utf-7": "utf_7",
    "utf8": "utf_8",
    "cp-1251": "cp1251",
    "win-1251": "cp1251",
    "win1251": "cp1251",
    "koi8r": "koi8_r",
    "unknown-8bit": "",
    "x-unknown": "",
    "unknown": "",
    "default": "",
    "charset": "",
}
# Undeclared single-byte Latin text cannot be told apart reliably; West European is the
# likeliest for this desk, and at worst only accents differ.
_SINGLE_BYTE_LATIN = ("cp125", "iso8859", "mac_", "latin", "cp43", "cp85")
_CYRILLIC_CANDIDATES = ("cp1251", "koi8_r", "cp866", "iso8859_5")

# Relative frequency of Russian letters (per mille, rounded); a wrong single-byte
# Cyrillic charset maps frequent letters onto rare ones, which this exposes.
_RU_FREQ = dict(
    zip(
        "оеаинтсрвлкмдпуяыьгзбчйхжшюцщэфъё",
        (110, 85, 80, 74, 67, 63, 55, 47, 45, 44, 35, 32, 30, 28, 26, 20, 19, 17, 17, 17,
         16, 14, 12, 10, 9, 7, 6, 5, 4, 3, 3, 1, 1),
        strict=True,
    )
)
_UKR_EXTRA = {"і": 50, "ї": 6, "є": 4, "ґ": 1}
_FREQ = {**_RU_FREQ, **_UKR_EXTRA}
_FREQ.update({k.upper(): v for k, v in list(_FREQ.items())})

_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A declared Cyrillic charset whose reading scores this high is Russian as declared: wrong
# readings of real text stay below ~72, so the other candidates need not be tried.
_TRUSTED_SCORE = 80.0
_TRUSTED_MIN_LETTERS = 20
# Bytes that break an otherwise valid UTF-8 text (a stray byte added by an MTA or a
# signature tool) are read as windows-1251, the likeliest single-byte charset here.
_STRAY_CHARSET = "cp1251"
_STRAY_RATIO = 8
_MOJIBAKE_1251 = re.compile(r"[РС][\u0400-\u045f\u00a0-\u00bf\u2010-\u203a\u20ac\u2116]")
_MOJIBAKE_LATIN = re.compile(r"[ÐÑ][\u0080-\u00bf\u0152-\u0178\u2013-\u2122]")


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    charset: str
    warning: str | None = None


@lru_cache(maxsize=256)
def codec_name(declared: str | None) -> str | None:
    """The Python codec for a MIME charset label, or None if unknown or not a charset."""
    if not declared:
        return None
    label = declared.strip().strip("\"'").lower()
    label = label.split("*", 1)[0]  # RFC 2231 language suffix: utf-8*ru
    if label in _ALIASES:
        return _ALIASES[label] or None
    if len(label) > 40:
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED:
        return None
    return info.name.replace("-", "_")


def _cyrillic_score(text: str) -> float:
    """How Russian the non-ASCII part of ``text`` looks: 0 (not at all) to ~150."""
    total = 0
    weight = 0
    letters = 0
    plausible = 0
    for word in _NON_ASCII_RUN.findall(text):
        total += len(word)
        scored = [_FREQ[ch] for ch in word if ch in _FREQ]
        if len(scored) < len(word) or len(word) < 2:
            continue
        weight += sum(scored)
        letters += len(word)
        # Real words are lower, Capitalised or ALL CAPS; a wrong charset swaps case mid-word.
        if word.islower() or word.isupper() or (word[0].isupper() and word[1:].islower()):
            plausible += len(word)
    if total == 0 or letters * 2 < total:
        # Cyrillic words are runs of letters; Latin accents sit alone among ASCII.
        return 0.0
    return weight / total + 40 * plausible / letters


def _non_ascii(text: str) -> int:
    sample = text[:65536]
    return len(sample) - len(sample.encode("ascii", "ignore"))


def _guess_cyrillic(data: bytes) -> tuple[str, str] | None:
    sample = data[:65536]
    best: tuple[float, str] | None = None
    for name in _CYRILLIC_CANDIDATES:
        score = _cyrillic_score(sample.decode(name, "replace"))
        if best is None or score > best[0]:
            best = (score, name)
    if best is None or best[0] < 25:
        return None
    return data.decode(best[1], "replace"), best[1]


def _is_utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _stray_bytes(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start:error.end].decode(_STRAY_CHARSET, "replace"), error.end


codecs.register_error("omnivox-stray-bytes", _stray_bytes)


def _mostly_utf8(data: bytes) -> Decoded | None:
    """UTF-8 with a few invalid bytes among many valid multibyte characters, read as UTF-8
    with only those bytes read as windows-1251; None when the bytes are not mostly UTF-8."""
    loose = data.decode("utf-8", "replace")
    bad = loose.count("\ufffd")
    good = len(loose) - len(loose.encode("ascii", "ignore")) - bad
    if bad == 0 or good < _STRAY_RATIO * bad:
        return None
    text = data.decode("utf-8", "omnivox-stray-bytes")
    return Decoded(text, "utf_8",
                   f"{bad} byte(s) that are not UTF-8 in UTF-8 text read as windows-1251")


def valid_unicode(text: str) -> str:
    """``text`` encodable as UTF-8 and storable as database text: surrogate pairs (UTF-7,
    RTF ``\\u``) joined, lone surrogates replaced with U+FFFD, NUL characters dropped
    (PostgreSQL text cannot hold them)."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _detect(data: bytes, fallback: str | None) -> Decoded:
    text = _is_utf8(data)
    if text is not None:
        return Decoded(text, "utf_8")
    mostly = _mostly_utf8(data)
    if mostly is not None:
        return mostly
    guess = _guess_cyrillic(data)
    if guess is not None:
        return Decoded(guess[0], guess[1])
    if fallback:
        return Decoded(data.decode(fallback, "replace"), fallback)
    best = charset_normalizer.from_bytes(data[:32768]).best()
    name = codec_name(best.encoding) if best is not None else None
    if name is not None and not name.startswith(_SINGLE_BYTE_LATIN):
        return Decoded(data.decode(name, "replace"), name)
    return Decoded(data.decode("cp1252", "replace"), "cp1252")


def repair_mojibake(text: str) -> str | None:
    """Undo one earlier wrong decode of UTF-8 (as windows-1251 or latin-1), if that is what
    ``text`` shows; None when the text looks fine."""
    if len(_MOJIBAKE_1251.findall(text, 0, 4096)) >= 3:
        try:
            return text.encode("cp1251").decode("utf-8")
        except UnicodeError:
            pass
    if len(_MOJIBAKE_LATIN.findall(text, 0, 4096)) >= 3:
        for name in ("cp1252", "latin_1"):
            try:
                return text.encode(name).decode("utf-8")
            except UnicodeError:
                continue
    return None


def decode(data: bytes, declared: str | None, *, hint: str | None = None) -> Decoded:
    """Decode ``data`` declared as ``declared``; never raises, never returns mojibake that
    can be recognised as such nor a string that cannot be written as UTF-8. ``hint`` is a
    charset seen elsewhere in the same message."""
    result = _decode(data, declared, hint)
    text = valid_unicode(result.text)
    return result if text is result.text else Decoded(text, result.charset, result.warning)


def _decode(data: bytes, declared: str | None, hint: str | None) -> Decoded:
    name = codec_name(declared)
    if data.isascii() and name not in _SEVEN_BIT and name not in _WIDE:
        text = data.decode("ascii")
        return Decoded(text, "ascii")
    if name is not None and name not in _UNTRUSTED and name != "utf_8":
        result = _decode_declared(data, name, declared or name)
    elif name == "utf_8":
        strict = _is_utf8(data)
        mostly = _mostly_utf8(data) if strict is None else None
        if strict is not None:
            result = Decoded(strict, "utf_8")
        elif mostly is not None:
            result = mostly
        else:
            found = _detect(data, None)
            result = Decoded(
                found.text, found.charset,
                f"declared {declared} but is not valid UTF-8; read as {found.charset}",
            )
    else:
        fallback = name if name in _LATIN_FALLBACK else None
        hinted = codec_name(hint)
        found = _detect(data, fallback)
        if found.charset in _LATIN_FALLBACK and hinted and hinted not in _UNTRUSTED:
            found = Decoded(data.decode(hinted, "replace"), hinted)
        warning = None
        if found.warning is not None:
            warning = found.warning
        elif declared and name != found.charset:
            warning = f"declared {declared} but content is {found.charset}"
        elif not declared and found.charset != "utf_8":
            warning = f"no charset declared; read as {found.charset}"
        result = Decoded(found.text, found.charset, warning)
    repaired = repair_mojibake(result.text)
    if repaired is not None:
        return Decoded(repaired, result.charset, "text was mojibake of UTF-8; repaired")
    return result


def _decode_declared(data: bytes, name: str, declared: str) -> Decoded:
    single_byte = name.startswith(("cp", "koi8", "iso8859", "mac_")) and name not in (
        "cp932", "cp949", "cp950", "cp936")
    if single_byte:
        text = _is_utf8(data)
        if text is not None:
            return Decoded(text, "utf_8", f"declared {declared} but content is UTF-8")
        mostly = _mostly_utf8(data)
        if mostly is not None:
            return Decoded(mostly.text, "utf_8", f"declared {declared} but content is UTF-8; "
                           + (mostly.warning or ""))
        if name in _CYRILLIC_CANDIDATES:
            own_text = data.decode(name, "replace")
            own = _cyrillic_score(own_text[:65536])
            if (own >= _TRUSTED_SCORE and _non_ascii(own_text) >= _TRUSTED_MIN_LETTERS
                    and "\ufffd" not in own_text):
                return Decoded(own_text, name)
            guess = _guess_cyrillic(data)
            if guess is not None and guess[1] != name:
                other = _cyrillic_score(guess[0][:65536])
                if other > own * 1.25:
                    return Decoded(guess[0], guess[1],
                                   f"declared {declared} but content is {guess[1]}")
    try:
        return Decoded(data.decode(name), name)
    except UnicodeDecodeError:
        pass
    except LookupError:
        return _detect(data, None)
    found = _detect(data, None)
    if found.charset == "utf_8":
        return Decoded(found.text, found.charset, f"declared {declared} but content is UTF-8")
    return Decoded(data.decode(name, "replace"), name,
                   f"invalid {declared} bytes replaced")
