"""Tickets as plain data for the CLI's ``--json``, and later the HTTP API and the console."""

from __future__ import annotations

import datetime as dt
from typing import Any

from storage.models import Ticket


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def ticket_summary(ticket: Ticket) -> dict[str, Any]:
    contact = ticket.contact
    return {
        "number": ticket.number,
        "status": ticket.status.value,
        "kind": ticket.kind.value,
        "priority": ticket.priority.value,
        "subject": ticket.subject,
        "channel": ticket.channel.value,
        "queue": ticket.queue,
        "customer": ticket.customer.name,
        "contact_name": contact.name if contact else None,
        "contact_email": contact.email if contact else None,
        "contact_phone": contact.phone if contact else None,
        "assignee": ticket.assignee.name if ticket.assignee else None,
        "created_at": _time(ticket.created_at),
        "updated_at": _time(ticket.updated_at),
        "resolved_at": _time(ticket.resolved_at),
        "closed_at": _time(ticket.closed_at),
        "close_reason": ticket.close_reason.value if ticket.close_reason else None,
        "response_due_at": _time(ticket.response_due_at),
        "resolution_due_at": _time(ticket.resolution_due_at),
    }


def ticket_detail(ticket: Ticket) -> dict[str, Any]:
    return {
        **ticket_summary(ticket),
        "description": ticket.description,
        "environment": {
            "os": ticket.env_os,
            "os_version": ticket.env_os_version,
            "product": ticket.env_product,
            "product_version": ticket.env_product_version,
            "browser": ticket.env_browser,
            "browser_version": ticket.env_browser_version,
        },
        "messages": [
            {
                "direction": m.direction.value,
                "author": m.author,
                "subject": m.subject,
                "text": m.text,
                "message_id": m.message_id,
                "in_reply_to": m.in_reply_to,
                "created_at": _time(m.created_at),
                "attachments": [
                    {
                        "filename": a.filename,
                        "content_type": a.content_type,
                        "size": a.size,
                        "sha256": a.sha256,
                        "screenshot": a.screenshot,
                        "width": a.width,
                        "height": a.height,
                    }
                    for a in m.attachments
                ],
            }
            for m in ticket.messages
        ],
        "journal": [
            {"at": _time(e.at), "actor": e.actor, "action": e.action, "details": e.details}
            for e in ticket.journal
        ],
    }
