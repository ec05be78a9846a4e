"""Templates (Jinja2) and the one context they are rendered with.

Templates live under ``<language>/<name>.<kind>.j2``: ``txt`` and ``html`` for mail (the
text template sets ``mail_subject``), ``tg`` for Telegram (HTML markup, escaped like
``html``). A configured directory of the same shape is searched first, so an admin can
override any single template without touching the package.

The context is built from the ticket as stored when the row is sent plus the row's payload,
and always has every key of :data:`CONTEXT_KEYS`, so a template never meets an undefined
variable; StrictUndefined turns a typo in an override into a clear error instead of a blank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Attachment, Message, OutboxItem, Priority, Ticket

BUILT_IN = Path(__file__).with_name("templates")
LANGUAGES = ("ru", "en")
DEFAULT_LANGUAGE = "ru"
_ESCAPED_EXTENSIONS = ("html.j2", "tg.j2")

# The system parameters a request should carry, by the ticket columns that hold them.
PARAMETERS: Mapping[str, tuple[str, str]] = {
    "os": ("env_os", "env_os_version"),
    "product": ("env_product", "env_product_version"),
    "browser": ("env_browser", "env_browser_version"),
}

# Payload keys a template may use; absent ones are empty.
PAYLOAD_KEYS = ("note", "event", "reason", "previous", "message", "verdict")

CONTEXT_KEYS = frozenset(
    {
        "language",
        "number",
        "subject",
        "description",
        "kind",
        "priority",
        "status",
        "close_reason",
        "customer",
        "contact_name",
        "assignee",
        "mention",
        "environment",
        "versions",
        "screenshots",
        "missing",
        "support_address",
        *PAYLOAD_KEYS,
    }
)


class TemplateError(Exception):
    """A template is missing or cannot be rendered; the message names it."""


def environment(templates_dir: Path | None = None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(jinja2.FileSystemLoader(BUILT_IN))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=_ESCAPED_EXTENSIONS, default_for_string=False, default=False
        ),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def language_of(payload: Mapping[str, Any]) -> str:
    language = payload.get("language")
    return language if language in LANGUAGES else DEFAULT_LANGUAGE


def build_context(session: Session, item: OutboxItem, *, support_address: str) -> dict[str, Any]:
    """Everything a template of ``item`` may use, from its ticket as stored now."""
    ticket = item.ticket
    payload = item.payload or {}
    if ticket is None:
        return _ticketless_context(payload, support_address)
    assignee = ticket.assignee
    mention = None
    if ticket.priority is Priority.P1 and assignee is not None:
        mention = {"name": assignee.name, "user_id": assignee.telegram_chat_id}
    context: dict[str, Any] = {
        "language": language_of(payload),
        "number": ticket.number,
        "subject": ticket.subject,
        "description": ticket.description,
        "kind": ticket.kind.value,
        "priority": ticket.priority.value,
        "status": str(payload.get("status") or ticket.status.value),
        "close_reason": ticket.close_reason.value if ticket.close_reason else "",
        "customer": ticket.customer.name,
        "contact_name": ticket.contact.name if ticket.contact else "",
        "assignee": assignee.name if assignee else "",
        "mention": mention,
        "environment": _environment(ticket),
        "versions": _versions(ticket),
        "screenshots": _screenshots(session, ticket),
        "missing": [
            name
            for name, columns in PARAMETERS.items()
            if any(getattr(ticket, column) is None for column in columns)
        ],
        "support_address": support_address,
    }
    context.update({key: str(payload.get(key) or "") for key in PAYLOAD_KEYS})
    return context


def _ticketless_context(payload: Mapping[str, Any], support_address: str) -> dict[str, Any]:
    """A mail about no ticket (an unknown sender refused): only what the payload says."""
    context: dict[str, Any] = {key: "" for key in CONTEXT_KEYS}
    context.update(
        language=language_of(payload),
        subject=str(payload.get("subject") or ""),
        mention=None,
        environment={},
        versions=[],
        screenshots=0,
        missing=[],
        support_address=support_address,
    )
    context.update({key: str(payload.get(key) or "") for key in PAYLOAD_KEYS})
    return context


def _environment(ticket: Ticket) -> dict[str, str | None]:
    return {
        column.removeprefix("env_"): getattr(ticket, column)
        for columns in PARAMETERS.values()
        for column in columns
    }


def _versions(ticket: Ticket) -> list[str]:
    """``Windows 10``, ``AgentZone 3.2.1``, ``Chrome 120``: what was found, name first."""
    found = []
    for name_column, version_column in PARAMETERS.values():
        parts = [getattr(ticket, name_column), getattr(ticket, version_column)]
        text = " ".join(part for part in parts if part)
        if text:
            found.append(text)
    return found


def _screenshots(session: Session, ticket: Ticket) -> int:
    count = session.scalar(
        select(func.count())
        .select_from(Attachment)
        .join(Message, Attachment.message_id == Message.id)
        .where(Message.ticket_id == ticket.id, Attachment.screenshot.is_(True))
    )
    return int(count or 0)


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


def _load(env: jinja2.Environment, name: str) -> jinja2.Template:
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound:
        raise TemplateError(f"no template {name}") from None
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"{name}, line {error.lineno}: {error.message}") from None


def _render(name: str, render: Any) -> Any:
    try:
        return render()
    except jinja2.TemplateError as error:
        raise TemplateError(f"{name}: {error}") from None


def render_mail(env: jinja2.Environment, template: str, context: Mapping[str, Any]) -> RenderedMail:
    base = f"{context['language']}/{template}"
    text_template = _load(env, f"{base}.txt.j2")
    html_template = _load(env, f"{base}.html.j2")
    module = _render(f"{base}.txt.j2", lambda: text_template.make_module(dict(context)))
    subject = getattr(module, "mail_subject", None)
    if not isinstance(subject, str) or not subject.strip():
        raise TemplateError(f"{base}.txt.j2 does not set mail_subject")
    html = _render(f"{base}.html.j2", lambda: html_template.render(context))
    return RenderedMail(subject=str(subject), text=str(module), html=html)


def render_telegram(env: jinja2.Environment, template: str, context: Mapping[str, Any]) -> str:
    name = f"{context['language']}/{template}.tg.j2"
    loaded = _load(env, name)
    text: str = _render(name, lambda: loaded.render(context))
    return text
