"""The signed MIME entity inside opaque S/MIME (``application/pkcs7-mime;
smime-type=signed-data``, Outlook's ``smime.p7m``), read from the CMS structure (RFC 5652)
with a small DER/BER reader. Signatures are not verified: the desk needs the text."""

from __future__ import annotations

_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")
_ENVELOPED_DATA = bytes.fromhex("2a864886f70d010703")
MAX_CHUNKS = 100_000


class _Malformed(Exception):
    pass


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end or -1 for an indefinite length)."""
    if pos + 2 > end:
        raise _Malformed
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        return tag, pos, pos + first
    if first == 0x80:
        return tag, pos, -1
    count = first & 0x7F
    if count > 4 or pos + count > end:
        raise _Malformed
    length = int.from_bytes(data[pos:pos + count], "big")
    pos += count
    if pos + length > end:
        raise _Malformed
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int, limit: int = 64) -> list[tuple[int, int, int]]:
    """Direct children (tag, content start, content end) of a constructed value, following
    indefinite lengths (BER) to their end-of-contents marker."""
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < end and len(out) < limit:
        if data[pos:pos + 2] == b"\x00\x00":
            break
        tag, content, content_end = _tlv(data, pos, end)
        if content_end < 0:
            content_end = _indefinite_end(data, content, end)
            pos = content_end + 2
        else:
            pos = content_end
        out.append((tag, content, content_end))
    return out


def _indefinite_end(data: bytes, start: int, end: int, depth: int = 0) -> int:
    if depth > 20:
        raise _Malformed
    pos = start
    for _ in range(MAX_CHUNKS):
        if pos + 2 > end:
            raise _Malformed
        if data[pos:pos + 2] == b"\x00\x00":
            return pos
        _, content, content_end = _tlv(data, pos, end)
        pos = content_end if content_end >= 0 else _indefinite_end(
            data, content, end, depth + 1) + 2
    raise _Malformed


def _octets(data: bytes, tag: int, start: int, end: int, depth: int = 0) -> bytes:
    if tag == 0x04:
        return data[start:end]
    if tag == 0x24 and depth < 10:
        return b"".join(_octets(data, t, s, e, depth + 1)
                        for t, s, e in _children(data, start, end, MAX_CHUNKS))
    raise _Malformed


def signed_content(der: bytes) -> tuple[bytes | None, str | None]:
    """(the encapsulated content, None) or (None, why it cannot be read)."""
    try:
        tag, start, end = _tlv(der, 0, len(der))
        if tag != 0x30:
            return None, "not a CMS structure"
        if end < 0:
            end = len(der)
        info = _children(der, start, end)
        if len(info) < 2 or info[0][0] != 0x06:
            return None, "not a CMS structure"
        oid = der[info[0][1]:info[0][2]]
        if oid == _ENVELOPED_DATA:
            return None, "encrypted (enveloped-data)"
        if oid != _SIGNED_DATA or info[1][0] != 0xA0:
            return None, "not signed-data"
        explicit = _children(der, info[1][1], info[1][2])
        signed = _children(der, explicit[0][1], explicit[0][2])
        encap = _children(der, signed[2][1], signed[2][2])
        if len(encap) < 2 or encap[1][0] != 0xA0:
            return None, "detached signature without content"
        inner = _children(der, encap[1][1], encap[1][2])
        return _octets(der, *inner[0]), None
    except (_Malformed, IndexError):
        return None, "damaged CMS structure"
