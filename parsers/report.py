"""What ``intake parse`` shows: the JSON dict and a text rendering for admins."""

from __future__ import annotations

from parsers.model import ParsedMail
from parsers.versions import Found

_ENV_FIELDS = ("os", "os_version", "product", "product_version", "browser", "browser_version")


def _value(found: Found | None) -> str | None:
    return None if found is None else found.value


def as_json(parsed: ParsedMail) -> dict[str, object]:
    env = parsed.environment
    return {
        "subject": parsed.subject,
        "from": parsed.from_address,
        "sender_name": parsed.sender_name,
        "to": list(parsed.to),
        "cc": list(parsed.cc),
        "reply_to": list(parsed.reply_to),
        "date": parsed.date.isoformat() if parsed.date is not None else None,
        "message_id": parsed.message_id,
        "in_reply_to": parsed.in_reply_to,
        "references": list(parsed.references),
        "language": parsed.language,
        "text": parsed.text,
        "new_text": parsed.new_text,
        "quoted_text": parsed.quoted_text,
        "signature": parsed.signature,
        "html": parsed.html,
        "kind": parsed.kind,
        "priority": parsed.priority,
        "reasons": {
            "kind": parsed.classification.kind_reason,
            "priority": parsed.classification.priority_reason,
            "quote": parsed.quote_marker,
            "registration_number": parsed.registration_number_source,
        },
        "environment": {name: _value(getattr(env, name)) for name in _ENV_FIELDS},
        "sources": {name: getattr(env, name).source for name in _ENV_FIELDS
                    if getattr(env, name) is not None},
        "screenshots": [
            {"filename": s.filename, "content_type": s.content_type, "size": s.size,
             "width": s.width, "height": s.height, "sha256": s.sha256,
             "forwarded": s.forwarded, "source": s.source}
            for s in parsed.screenshots
        ],
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size,
             "sha256": a.sha256, "forwarded": a.forwarded, "source": a.source,
             "note": a.note}
            for a in parsed.attachments
        ],
        "forwarded": [
            {"subject": f.subject, "from": f.sender, "date": f.date,
             "message_id": f.message_id}
            for f in parsed.forwarded
        ],
        "signed": parsed.signed,
        "missing": list(parsed.missing),
        "is_auto_reply": parsed.is_auto_reply,
        "auto_reply_reason": parsed.auto_reply_reason,
        "bounce": {"is_bounce": parsed.bounce.is_bounce,
                   "original_message_id": parsed.bounce.original_message_id,
                   "reason": parsed.bounce.reason},
        "registration_number": parsed.registration_number,
        "warnings": list(parsed.warnings),
    }


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.split("\n")) if text else prefix + "(empty)"


def render_text(parsed: ParsedMail) -> str:
    env = parsed.environment
    lines = [
        f"Subject:      {parsed.subject}",
        "From:         " + (f"{parsed.sender_name} <{parsed.from_address}>"
                             if parsed.sender_name else parsed.from_address),
        f"To:           {', '.join(parsed.to)}",
    ]
    if parsed.cc:
        lines.append(f"Cc:           {', '.join(parsed.cc)}")
    lines += [
        f"Date:         {parsed.date.isoformat() if parsed.date else '-'}",
        f"Message-ID:   {parsed.message_id or '-'}",
        f"In-Reply-To:  {parsed.in_reply_to or '-'}",
        f"References:   {' '.join(parsed.references) or '-'}",
        f"Language:     {parsed.language}",
        f"Number:       {parsed.registration_number or '-'}"
        + (f"  (from {parsed.registration_number_source})"
           if parsed.registration_number_source else ""),
        f"Kind:         {parsed.kind}  ({parsed.classification.kind_reason})",
        f"Priority:     {parsed.priority}  ({parsed.classification.priority_reason})",
    ]
    auto = f"yes: {parsed.auto_reply_reason}" if parsed.is_auto_reply else "no"
    lines += [
        f"Auto-reply:   {auto}",
    ]
    if parsed.bounce.is_bounce:
        lines.append(f"Bounce:       {parsed.bounce.reason}; original "
                     f"{parsed.bounce.original_message_id or 'unknown'}")
    if parsed.signed:
        lines.append(f"Signed:       {parsed.signed}")
    lines.append("Environment:")
    for name in _ENV_FIELDS:
        found = getattr(env, name)
        shown = f"{found.value}  ({found.source})" if found is not None else "MISSING"
        lines.append(f"  {name + ':':17} {shown}")
    lines.append(f"Screenshots:  {len(parsed.screenshots)}")
    for s in parsed.screenshots:
        size = f"{s.width}x{s.height}" if s.width is not None else "?x?"
        lines.append(f"  {s.filename}  {s.content_type}  {size}  {s.size} bytes  "
                     f"{s.sha256[:12]}  ({s.source}{', forwarded' if s.forwarded else ''})")
    lines.append(f"Attachments:  {len(parsed.attachments)}")
    for a in parsed.attachments:
        note = f"; {a.note}" if a.note else ""
        lines.append(f"  {a.filename}  {a.content_type}  {a.size} bytes  {a.sha256[:12]}  "
                     f"({a.source}{', forwarded' if a.forwarded else ''}{note})")
    for f in parsed.forwarded:
        lines.append(f"Forwarded:    {f.subject!r} from {f.sender or '?'}")
    lines.append(f"New text (split: {parsed.quote_marker or 'no quote found'}):")
    lines.append(_indent(parsed.new_text))
    if parsed.signature:
        lines += ["Signature:", _indent(parsed.signature)]
    if parsed.quoted_text:
        lines += ["Quoted text:", _indent(parsed.quoted_text)]
    lines.append("Warnings:" if parsed.warnings else "Warnings:     none")
    lines += [f"  - {w}" for w in parsed.warnings]
    return "\n".join(lines) + "\n"
