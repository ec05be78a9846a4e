"""TNEF (winmail.dat from Outlook/Exchange): the text and the files inside."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import compressed_rtf  # type: ignore[import-untyped]
from tnefparse import TNEF  # type: ignore[import-untyped]

from parsers import charsets
from parsers.rtf import rtf_to_text

# tnefparse copies the rest of the buffer for every object, so a crafted file of many tiny
# objects would cost quadratic time; real ones have a few dozen.
MAX_OBJECTS = 2000
_SIGNATURE = 0x223E9F78


@dataclass(frozen=True, slots=True)
class Extracted:
    plain: str | None = None
    html: str | None = None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    error: str | None = None


def _count_objects(data: bytes) -> int:
    offset = 6
    count = 0
    while offset + 9 <= len(data) and count <= MAX_OBJECTS:
        (length,) = struct.unpack_from("<I", data, offset + 5)
        offset += 11 + length
        count += 1
    return count


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, bytes | bytearray):
        return charsets.decode(bytes(value).rstrip(b"\x00"), None).text
    return None


def extract(data: bytes) -> Extracted:
    if len(data) < 6 or struct.unpack_from("<I", data, 0)[0] != _SIGNATURE:
        return Extracted(error="not a TNEF file")
    if _count_objects(data) > MAX_OBJECTS:
        return Extracted(error=f"more than {MAX_OBJECTS} TNEF objects")
    try:
        tnef = TNEF(data, do_checksum=False)
        files: list[tuple[str, bytes]] = []
        for attachment in tnef.attachments:
            payload = attachment.data
            if not isinstance(payload, bytes | bytearray) or not payload:
                continue
            name = attachment.long_filename()
            if isinstance(name, bytes):
                name = charsets.decode(name.rstrip(b"\x00"), None).text
            files.append((str(name).strip("\x00"), bytes(payload)))
        plain = _as_text(tnef.body)
        html = _as_text(tnef.htmlbody)
        rtf = tnef._rtfbody
        if plain is None and html is None and isinstance(rtf, bytes | bytearray) and rtf:
            # Outlook's "Rich Text" mail: the only body is compressed RTF (MS-OXRTFCP).
            plain = rtf_to_text(compressed_rtf.decompress(bytes(rtf)))
    except Exception as exc:  # tnefparse raises anything on damaged input
        return Extracted(error=f"unreadable ({type(exc).__name__})")
    if plain is None and html is None and not files:
        return Extracted(error="no text and no files inside")
    return Extracted(plain=plain, html=html, files=files)
