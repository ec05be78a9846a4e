"""Screenshots: image attachments, inline cid: images and data: URIs, told by their bytes.

The type and the size in pixels come from the file header (no decoding of pixels); files
that are not images, or are over the limits, stay attachments with the reason noted.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import re
import struct
import warnings
from dataclasses import dataclass, field

from parsers.mime import FilePart

MAX_DATA_URIS = 200

_DATA_URI = re.compile(
    r"data:(image/[a-z0-9.+-]{1,30})(?:;[a-z0-9=_.-]{1,40}){0,4}?;base64,([A-Za-z0-9+/=\s]{4,})",
    re.I)
_IMAGE_NAME = re.compile(r"\.(?:png|jpe?g|gif|bmp|webp|tiff?|jfif)$", re.I)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    content_type: str
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class Screenshot:
    filename: str
    content_type: str
    size: int
    width: int | None
    height: int | None
    sha256: str
    data: bytes = field(repr=False)
    forwarded: bool
    source: str


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    data: bytes = field(repr=False)
    forwarded: bool
    source: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Sorted:
    screenshots: tuple[Screenshot, ...]
    attachments: tuple[Attachment, ...]
    warnings: tuple[str, ...]


def sniff(data: bytes) -> ImageInfo | None:
    """Image type and pixel size from the first bytes; None when not an image we show."""
    head = data[:32]
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            if data[12:16] == b"IHDR":
                w, h = struct.unpack(">II", data[16:24])
                return ImageInfo("image/png", w, h)
            return ImageInfo("image/png", None, None)
        if head.startswith(b"\xff\xd8\xff"):
            w_h = _jpeg_size(data)
            return ImageInfo("image/jpeg", *(w_h or (None, None)))
        if head.startswith((b"GIF87a", b"GIF89a")):
            w, h = struct.unpack("<HH", data[6:10])
            return ImageInfo("image/gif", w, h)
        if head.startswith(b"BM") and len(data) >= 26 and data[14] in (12, 40, 52, 56, 108, 124):
            if data[14] == 12:
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return ImageInfo("image/bmp", abs(w), abs(h))
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return ImageInfo("image/webp", *(_webp_size(data) or (None, None)))
        if head.startswith((b"II*\x00", b"MM\x00*")):
            return ImageInfo("image/tiff", *(_pillow_size(data) or (None, None)))
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    n = len(data)
    for _ in range(1000):
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos + 3 > n:
            return None
        marker = data[pos]
        pos += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9 or marker == 0xDA:
            return None
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[pos + 3:pos + 7])
            return w, h
        if length < 2:
            return None
        pos += length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image  # imported late: only TIFF needs it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # damaged tags are expected in mail; size is enough
            with Image.open(io.BytesIO(data), formats=["TIFF"]) as image:
                return image.size
    except Exception:  # Pillow raises many kinds of errors on damaged headers
        return None


def data_uri_images(html: str) -> list[tuple[str, bytes]]:
    """Images embedded as ``data:image/…;base64,…`` in HTML (declared type, bytes)."""
    if "data:" not in html:
        return []
    found: list[tuple[str, bytes]] = []
    for match in _DATA_URI.finditer(html):
        if len(found) >= MAX_DATA_URIS:
            break
        payload = re.sub(r"\s+", "", match.group(2)).rstrip("=")
        if len(payload) % 4 == 1:
            payload = payload[:-1]
        try:
            data = binascii.a2b_base64(payload + "=" * (-len(payload) % 4))
        except binascii.Error:
            continue
        if data:
            found.append((match.group(1).lower(), data))
    return found


_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/bmp": "bmp",
        "image/webp": "webp", "image/tiff": "tif"}


def sort_files(files: list[FilePart], data_uris: list[tuple[str, bytes]], *,
               max_bytes: int, max_count: int) -> Sorted:
    """Files -> screenshots and attachments, de-duplicated by sha256 (first one kept)."""
    screenshots: list[Screenshot] = []
    attachments: list[Attachment] = []
    warnings: list[str] = []
    seen: dict[str, str] = {}
    entries: list[tuple[str, str, bytes, bool, str]] = [
        (f.filename, f.declared_type, f.data, f.forwarded,
         "inline image" if f.inline and f.content_id else f.origin)
        for f in files
    ]
    for i, (ctype, data) in enumerate(data_uris, 1):
        entries.append((f"embedded-{i}.{_EXT.get(ctype, 'bin')}", ctype, data, False,
                        "data: URI"))
    for name, declared, data, forwarded, source in entries:
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            warnings.append(f"{name!r} is a duplicate of {seen[digest]!r}; kept once")
            continue
        seen[digest] = name
        info = sniff(data)
        if info is None:
            note = None
            if _IMAGE_NAME.search(name) or declared.startswith("image/"):
                note = f"named or declared as an image ({declared}) but the content is not one"
                if declared in ("image/svg+xml", "image/heic", "image/heif", "image/x-icon",
                                "image/vnd.microsoft.icon"):
                    note = f"{declared} is not shown as a screenshot"
                else:
                    warnings.append(f"{name!r}: {note}")
            attachments.append(Attachment(name, declared, len(data), digest, data, forwarded,
                                          source, note))
            continue
        note = None
        if len(data) > max_bytes:
            note = f"image over the screenshot size limit ({max_bytes} bytes)"
        elif len(screenshots) >= max_count:
            note = f"more than {max_count} screenshots"
        elif (info.width is not None and info.width <= 2) or (
                info.height is not None and info.height <= 2):
            note = "image of 2 pixels or less (tracking pixel)"
        if note is not None:
            attachments.append(Attachment(name, info.content_type, len(data), digest, data,
                                          forwarded, source, note))
            continue
        screenshots.append(Screenshot(name, info.content_type, len(data), info.width,
                                      info.height, digest, data, forwarded, source))
    return Sorted(tuple(screenshots), tuple(attachments), tuple(warnings))
