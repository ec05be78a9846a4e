"""uuencoded files inside text bodies (old Outlook Express, The Bat!, scripts)."""

from __future__ import annotations

import binascii
import re

MAX_FILES = 50

_BEGIN = re.compile(rb"(?m)^begin [0-7]{3,4} ([^\r\n]{1,255}?)[ \t]*\r?$")


def extract(data: bytes) -> tuple[bytes, list[tuple[str, bytes]], list[str]]:
    """Remove ``begin … end`` blocks from ``data``; returns the remaining text, the files
    (name, content) and problems found."""
    files: list[tuple[str, bytes]] = []
    problems: list[str] = []
    kept: list[bytes] = []
    pos = 0
    for match in _BEGIN.finditer(data):
        if match.start() < pos:
            continue
        if len(files) >= MAX_FILES:
            problems.append(f"more than {MAX_FILES} uuencoded files; the rest left as text")
            break
        name = match.group(1).decode("utf-8", "replace")
        end_match = re.compile(rb"(?m)^end[ \t]*\r?$").search(data, match.end())
        block_end = len(data) if end_match is None else end_match.end()
        if end_match is None:
            problems.append(f"uuencoded file {name!r} has no 'end' line")
        files.append((name, _decode_lines(data[match.end():block_end], problems, name)))
        kept.append(data[pos:match.start()])
        pos = block_end
    if not files:
        return data, [], problems
    kept.append(data[pos:])
    return b"".join(kept), files, problems


def _decode_lines(block: bytes, problems: list[str], name: str) -> bytes:
    out: list[bytes] = []
    damaged = False
    for line in block.splitlines():
        line = line.rstrip(b" \r")
        if not line or line == b"`" or line == b"end":
            continue
        # The first character says how many bytes the line carries; trust it over padding.
        length = (line[0] - 32) & 63
        if length == 0:
            continue
        try:
            out.append(binascii.a2b_uu(line)[:length])
        except binascii.Error:
            damaged = True
            needed = (length + 2) // 3 * 4 + 1
            try:
                out.append(binascii.a2b_uu(line[:needed].ljust(needed, b"`"))[:length])
            except binascii.Error:
                continue
    if damaged:
        problems.append(f"uuencoded file {name!r} has damaged lines")
    return b"".join(out)
