"""The structured request that parsing produces: frozen, plain data for the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from parsers.autoreply import Bounce
from parsers.classify import Classification
from parsers.mime import ForwardedMessage
from parsers.screenshots import Attachment, Screenshot
from parsers.versions import Environment, Found

__all__ = [
    "Attachment",
    "Bounce",
    "Classification",
    "Environment",
    "ForwardedMessage",
    "Found",
    "ParsedMail",
    "Screenshot",
]


@dataclass(frozen=True, slots=True)
class ParsedMail:
    subject: str
    from_address: str
    sender_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    date: datetime | None
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    language: str
    text: str
    new_text: str
    quoted_text: str
    signature: str
    quote_marker: str | None
    html: str | None
    classification: Classification
    environment: Environment
    screenshots: tuple[Screenshot, ...]
    attachments: tuple[Attachment, ...]
    forwarded: tuple[ForwardedMessage, ...]
    signed: str | None
    is_auto_reply: bool
    auto_reply_reason: str | None
    bounce: Bounce
    registration_number: str | None
    registration_number_source: str | None
    warnings: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.classification.kind

    @property
    def priority(self) -> str:
        return self.classification.priority

    @property
    def missing(self) -> tuple[str, ...]:
        return self.environment.missing()
