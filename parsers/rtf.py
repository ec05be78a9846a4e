"""RTF to plain text, for the compressed RTF bodies that Outlook puts in winmail.dat."""

from __future__ import annotations

import re

from parsers.charsets import valid_unicode

MAX_RTF_BYTES = 5_000_000

_TOKEN = re.compile(
    rb"\\([a-zA-Z]{1,32})(-?\d{1,10})? ?|\\'([0-9a-fA-F]{2})|\\([^a-zA-Z'])|([{}])|"
    rb"([^\\{}\r\n]+)|[\r\n]+")
_SKIPPED = frozenset({
    b"fonttbl", b"colortbl", b"stylesheet", b"info", b"pict", b"object", b"header",
    b"footer", b"headerl", b"headerr", b"headerf", b"footerl", b"footerr", b"footerf",
    b"footnote", b"themedata", b"colorschememapping", b"datastore", b"latentstyles",
    b"listtable", b"listoverridetable", b"rsidtbl", b"generator", b"xmlnstbl", b"mmathPr",
    b"filetbl", b"revtbl", b"pgdsctbl", b"fldinst", b"bkmkstart", b"bkmkend",
})
_BREAKS = {b"par": "\n", b"line": "\n", b"row": "\n", b"sect": "\n", b"page": "\n",
           b"tab": "\t", b"cell": " "}


def rtf_to_text(rtf: bytes) -> str:
    rtf = rtf[:MAX_RTF_BYTES]
    out: list[str] = []
    pending = bytearray()
    codepage = "cp1252"
    skip_depth: int | None = None
    depth = 0
    uc = 1
    to_skip = 0
    group_start = False

    def flush() -> None:
        if pending:
            out.append(pending.decode(codepage, "replace"))
            pending.clear()

    for match in _TOKEN.finditer(rtf):
        word, arg, hexbyte, symbol, brace, text = match.groups()
        if brace is not None:
            if brace == b"{":
                depth += 1
                group_start = True
            else:
                if skip_depth is not None and depth <= skip_depth:
                    skip_depth = None
                depth -= 1
            continue
        starts_group, group_start = group_start, False
        if skip_depth is not None:
            continue
        if symbol == b"*" and starts_group:
            skip_depth = depth
            continue
        if word is not None:
            if word in _SKIPPED:
                skip_depth = depth
            elif word == b"ansicpg" and arg:
                candidate = f"cp{int(arg)}"
                try:
                    b"".decode(candidate)
                    codepage = candidate
                except LookupError:
                    pass
            elif word == b"uc" and arg:
                uc = max(0, int(arg))
            elif word == b"u" and arg:
                flush()
                value = int(arg)
                out.append(chr(value + 65536 if value < 0 else value % 0x110000))
                to_skip = uc
            elif word in _BREAKS:
                flush()
                out.append(_BREAKS[word])
            continue
        if hexbyte is not None:
            if to_skip:
                to_skip -= 1
                continue
            pending.append(int(hexbyte, 16))
            continue
        if symbol is not None:
            flush()
            out.append({b"~": "\u00a0", b"_": "-", b"-": ""}.get(symbol, symbol.decode("latin-1")))
            continue
        if text is not None:
            if to_skip:
                drop = min(to_skip, len(text))
                text, to_skip = text[drop:], to_skip - drop
            flush()
            out.append(text.decode(codepage, "replace"))
    flush()
    # ``\u`` escapes are UTF-16 code units: pairs make one character, a lone one is invalid.
    lines = valid_unicode("".join(out)).replace("\r", "").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")
