"""Pure parsing of inbound mail into a structured support request (no I/O, no storage)."""

from parsers.classify import DEFAULT_RULES, ClassifyRules
from parsers.model import (
    Attachment,
    Bounce,
    Classification,
    Environment,
    ForwardedMessage,
    Found,
    ParsedMail,
    Screenshot,
)
from parsers.options import DEFAULT_OPTIONS, ParseOptions
from parsers.report import as_json, render_text
from parsers.request import parse_mail

__all__ = [
    "DEFAULT_OPTIONS",
    "DEFAULT_RULES",
    "Attachment",
    "Bounce",
    "Classification",
    "ClassifyRules",
    "Environment",
    "ForwardedMessage",
    "Found",
    "ParseOptions",
    "ParsedMail",
    "Screenshot",
    "as_json",
    "parse_mail",
    "render_text",
]
