"""``parse_mail``: raw bytes -> the structured request, stage by stage.

mime (headers, bodies, files) -> text (HTML to text, sanitize) -> replies (new / quoted /
signature) -> versions -> classify -> screenshots -> autoreply -> registration number.
"""

from __future__ import annotations

import re

from parsers import autoreply, classify, mime, replies, screenshots, text, versions
from parsers.autoreply import Bounce
from parsers.headers import HeaderBlock, parse_addresses, parse_date, parse_msg_ids
from parsers.model import ParsedMail
from parsers.options import DEFAULT_OPTIONS, ParseOptions

MAX_NUMBER_SCAN = 200_000
MAX_WARNINGS = 50
_FORWARD_SUBJECT = re.compile(r"^\s*(?:fwd?|fw|пересл\w*|перенаправлено|переслано)\s*:", re.I)
_WORD = re.compile(r"[^\W\d_]+")
_CYRILLIC = re.compile(r"[а-яёіїєґ]", re.I)
# Names that Russian text writes in Latin letters: they say nothing of the language.
_NAMES = frozenset((
    "windows", "win", "server", "microsoft", "linux", "astra", "ubuntu", "debian", "centos",
    "rhel", "red", "hat", "os", "alt", "macos", "mac", "android", "ios", "ipados", "iphone",
    "ipad", "se", "ce", "pro", "home", "enterprise", "ltsc", "esr", "lts", "x", "amd",
    "bit", "nt", "chrome", "chromium", "google", "firefox", "mozilla", "edge", "edg", "opera",
    "gx", "safari", "yandex", "yabrowser", "browser", "omnivox", "agentzone", "agent", "zone",
    "chat", "version", "ver", "v", "gecko", "khtml", "like", "applewebkit", "webkit", "wow",
    "intel", "rv",
))
_SPACES = re.compile(r"\s+")


def parse_mail(raw: bytes, *, options: ParseOptions = DEFAULT_OPTIONS) -> ParsedMail:
    """Everything the desk needs from one mail; never raises, whatever the bytes."""
    try:
        return _parse(bytes(raw), options)
    except Exception as exc:  # the last guard: a bug must not lose the mail's text
        return _best_effort(bytes(raw), exc)


def _parse(raw: bytes, options: ParseOptions) -> ParsedMail:
    message = mime.parse(raw)
    headers = message.headers
    hint = message.charset_hint
    warnings = list(message.warnings)

    subject = _SPACES.sub(" ", headers.text("subject", hint) or "").strip()
    senders = parse_addresses(headers.raw("from"), hint) or parse_addresses(
        headers.raw("sender"), hint)
    sender_name, from_address = senders[0] if senders else ("", "")

    pieces: list[str] = []
    html_pieces: list[str] = []
    for body in message.bodies:
        if body.plain is not None and body.plain.strip():
            piece = body.plain
        elif body.html is not None:
            piece = text.html_to_text(body.html)
        else:
            piece = ""
        if piece.strip():
            pieces.append(piece.strip("\n"))
        if body.html is not None:
            html_pieces.append(body.html)
    full_text = "\n\n".join(pieces)

    html: str | None = None
    data_uris: list[tuple[str, bytes]] = []
    if html_pieces:
        joined = "\n".join(html_pieces)
        html, problem = text.sanitize_html(joined)
        if problem:
            warnings.append(problem)
        data_uris = screenshots.data_uri_images(joined[: text.MAX_HTML_CHARS * 4])

    split = replies.split(full_text, is_forward=bool(_FORWARD_SUBJECT.match(subject)))
    # People put their versions after "Спасибо!": the signature is searched too.
    environment = versions.extract(
        f"{split.new_text}\n{replies.environment_text(split.signature)}"
        if split.signature else split.new_text, subject)
    warnings.extend(f"{answer}: not a known name; left missing"
                    for answer in environment.unrecognised)
    classification = classify.classify(subject, split.new_text, options.classify)
    files = screenshots.sort_files(list(message.files), data_uris,
                                   max_bytes=options.max_screenshot_bytes,
                                   max_count=options.max_screenshots)
    warnings.extend(files.warnings)

    auto = autoreply.detect_auto_reply(headers, subject)
    bounce = autoreply.detect_bounce(headers, message.report, from_address, subject, full_text)
    is_auto, auto_reason = auto.is_auto_reply, auto.reason
    if not is_auto and bounce.is_bounce:
        is_auto, auto_reason = True, f"bounce ({bounce.reason})"
    if not is_auto and message.report is not None and (
            message.report.report_type == "disposition-notification"):
        is_auto, auto_reason = True, "disposition notification (read receipt)"

    date = parse_date(headers.raw("date"))
    if date is None and headers.has("date"):
        warnings.append(f"unreadable Date header {headers.ascii('date')[:60]!r}")
    number, number_source = _registration_number(options, subject, split)
    in_reply_to = parse_msg_ids(headers.raw("in-reply-to"))
    message_ids = parse_msg_ids(headers.raw("message-id"))
    return ParsedMail(
        subject=subject,
        from_address=from_address,
        sender_name=sender_name,
        to=_addresses(headers, "to", hint),
        cc=_addresses(headers, "cc", hint),
        reply_to=_addresses(headers, "reply-to", hint),
        date=date,
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=parse_msg_ids(headers.raw("references")),
        language=_language(subject, split.new_text or full_text),
        text=full_text,
        new_text=split.new_text,
        quoted_text=split.quoted_text,
        signature=split.signature,
        quote_marker=split.marker,
        html=html,
        classification=classification,
        environment=environment,
        screenshots=files.screenshots,
        attachments=files.attachments,
        forwarded=message.forwarded,
        signed=message.signed,
        is_auto_reply=is_auto,
        auto_reply_reason=auto_reason,
        bounce=bounce,
        registration_number=number,
        registration_number_source=number_source,
        warnings=_capped(warnings),
    )


def _capped(warnings: list[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(warnings))
    if len(unique) <= MAX_WARNINGS:
        return tuple(unique)
    return (*unique[:MAX_WARNINGS], f"… and {len(unique) - MAX_WARNINGS} more warnings")


def _addresses(headers: HeaderBlock, name: str, hint: str | None) -> tuple[str, ...]:
    found: list[str] = []
    for value in headers.raw_all(name)[:20]:
        found += [addr for _, addr in parse_addresses(value, hint) if addr]
    return tuple(dict.fromkeys(found))[:500]


def _language(subject: str, body: str) -> str:
    """Words, not letters: "ОС: Astra Linux 1.7, браузер Firefox 115 ESR" is Russian."""
    cyrillic = 0
    latin = 0
    names = 0
    for word in _WORD.findall(f"{subject}\n{body[:5000]}"):
        if _CYRILLIC.search(word):
            cyrillic += 1
        elif word.isascii():
            if word.lower() in _NAMES:
                names += 1
            else:
                latin += 1
    if cyrillic == 0 and latin == 0:
        return "en" if names else "unknown"
    return "ru" if cyrillic * 3 >= cyrillic + latin else "en"


def _registration_number(options: ParseOptions, subject: str, split: replies.Split
                         ) -> tuple[str | None, str | None]:
    # The customer's own words may mention an older ticket ("похоже на [OV-…]"): only the
    # subject and our earlier mail in the quoted history say which ticket this is for.
    regex = options.number_regex()
    for source, haystack in (("subject", subject), ("quoted text", split.quoted_text)):
        match = regex.search(haystack[:MAX_NUMBER_SCAN])
        if match:
            value = match.group(1) if regex.groups else match.group(0)
            return value.upper(), source
    return None, None


def _best_effort(raw: bytes, exc: Exception) -> ParsedMail:
    body = raw[:1_000_000].decode("utf-8", "replace")
    return ParsedMail(
        subject="", from_address="", sender_name="", to=(), cc=(), reply_to=(), date=None,
        message_id=None, in_reply_to=None, references=(), language="unknown", text=body,
        new_text=body, quoted_text="", signature="", quote_marker=None, html=None,
        classification=classify.Classification(
            "incident", "not classified: parsing failed", "P2", "default for incident"),
        environment=versions.Environment(), screenshots=(), attachments=(), forwarded=(),
        signed=None, is_auto_reply=False, auto_reply_reason=None,
        bounce=Bounce(False, None, None), registration_number=None,
        registration_number_source=None,
        warnings=(f"internal error while parsing ({type(exc).__name__}: {str(exc)[:200]}); "
                  "best-effort result with the raw text",),
    )
