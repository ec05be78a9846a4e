"""``intake outbox``: queued notifications, what became of them, and sending dead ones again."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from intake import clikit
from notifiers import outbox
from storage.models import OutboxItem, OutboxState, Ticket

STATE_CHOICE = click.Choice([s.value for s in OutboxState])


@click.group("outbox")
@clikit.config_option
def outbox_group() -> None:
    """Customer mail and staff Telegram messages: states, errors, retries."""


def _numbers(session: Session, ticket_ids: set[int]) -> dict[int, str]:
    if not ticket_ids:
        return {}
    rows = session.execute(select(Ticket.id, Ticket.number).where(Ticket.id.in_(ticket_ids)))
    return {ticket_id: number for ticket_id, number in rows}


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _row(item: OutboxItem, number: str | None) -> dict[str, Any]:
    return {
        "id": item.id,
        "ticket": number,
        "channel": item.channel,
        "template": item.template,
        "recipient": item.recipient,
        "message_id": item.message_id,
        "state": item.state.value,
        "attempts": item.attempts,
        "next_attempt_at": _time(item.next_attempt_at),
        "last_error": item.last_error,
        "created_at": _time(item.created_at),
        "sent_at": _time(item.sent_at),
    }


@outbox_group.command("list")
@clikit.config_option
@click.option("--state", "states", multiple=True, type=STATE_CHOICE, help="Repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@clikit.json_option
def outbox_list(states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Queued and delivered notifications, newest first."""
    with clikit.app() as app, app.db.transaction() as session:
        items = outbox.listing(session, states=[OutboxState(s) for s in states], limit=limit)
        numbers = _numbers(session, {i.ticket_id for i in items if i.ticket_id is not None})
        rows = [_row(i, numbers.get(i.ticket_id or 0)) for i in items]
    if as_json:
        clikit.print_json(rows)
        return
    clikit.table(
        [
            (
                r["id"],
                r["state"],
                r["attempts"],
                r["channel"],
                r["ticket"] or "-",
                r["template"],
                r["recipient"],
                (r["created_at"] or "")[:19],
                (r["last_error"] or "")[:60],
            )
            for r in rows
        ],
        ["ID", "STATE", "TRIES", "CHANNEL", "TICKET", "TEMPLATE", "TO", "CREATED", "ERROR"],
    )


@outbox_group.command("retry")
@clikit.config_option
@click.argument("item_id", metavar="ID", type=int, required=False)
@click.option("--all-dead", is_flag=True, help="Every dead-lettered notification.")
def outbox_retry(item_id: int | None, all_dead: bool) -> None:
    """Queue a dead or withheld notification again, with fresh attempts (same Message-ID)."""
    if (item_id is None) == (not all_dead):
        raise click.UsageError("give an ID or --all-dead (not both)")
    with clikit.app() as app, app.db.transaction() as session:
        if item_id is None:
            count = outbox.retry_dead(session)
            click.echo(f"{count} dead notification{'s' if count != 1 else ''} queued again")
            return
        try:
            outbox.retry(session, item_id)
        except outbox.OutboxError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"outbox {item_id} queued again")
