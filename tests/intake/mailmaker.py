"""Mail as customers' clients write it, and a registrar wired as the daemon wires it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from intake.desk import Desk
from intake.parsing import number_tag_pattern
from intake.registrar import MailIdentity, Registrar
from intake.rules.builtin import builtin_rules
from intake.senders import SenderPolicy
from parsers.options import ParseOptions
from storage.blobs import BlobStore
from storage.models import utcnow

OUR_DOMAIN = "intake.test"
OUR_ADDRESS = "support@intake.test"
_UNSET = "unset"


def mail_bytes(
    *,
    subject: str,
    body: str = "The softphone does not ring on incoming calls.",
    sender: str = "Anna <anna@acme.example>",
    message_id: str | None = _UNSET,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
    images: tuple[tuple[str, bytes], ...] = (),
) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = "support@omnivox.example"
    message["Subject"] = subject
    message["Date"] = "Wed, 25 Nov 2026 12:00:00 +0300"
    if message_id == _UNSET:
        message_id = f"<{uuid.uuid4().hex}@acme.example>"
    if message_id is not None:
        message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references:
        message["References"] = references
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    for filename, data in images:
        message.add_attachment(data, maintype="image", subtype="png", filename=filename)
    return message.as_bytes()


def make_registrar(
    desk: Desk,
    tmp_path: Path,
    *,
    policy: SenderPolicy | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
    authserv_id: str = "",
) -> Registrar:
    return Registrar(
        desk,
        BlobStore(tmp_path / "blobs"),
        builtin_rules(),
        policy or SenderPolicy(),
        MailIdentity(
            from_address=OUR_ADDRESS, message_id_domain=OUR_DOMAIN, authserv_id=authserv_id
        ),
        ParseOptions(number_pattern=number_tag_pattern(desk.rules.number_format)),
        clock=clock,
    )
