"""``intake inbound``: what was received, what became of it, and bringing items back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from intake import clikit
from parsers.headers import split_header_block
from storage import inbound as store
from storage.models import InboundItem, InboundState, Ticket

STATE_CHOICE = click.Choice([s.value for s in InboundState])
SUMMARY_HEADERS = ("from", "to", "subject", "date", "message-id", "in-reply-to")
HEADER_SCAN = 256 * 1024


@click.group("inbound")
@clikit.config_option
def inbound() -> None:
    """Received mail and call events: states, reasons, retries, the raw bytes."""


def _numbers(session: Session, ticket_ids: set[int]) -> dict[int, str]:
    if not ticket_ids:
        return {}
    rows = session.execute(select(Ticket.id, Ticket.number).where(Ticket.id.in_(ticket_ids)))
    return {ticket_id: number for ticket_id, number in rows}


def _summary(item: InboundItem, number: str | None) -> dict[str, Any]:
    return {
        "id": item.id,
        "source": item.source,
        "source_ref": item.source_ref,
        "message_id": item.message_id,
        "size": item.size,
        "received_at": item.received_at.isoformat(),
        "state": item.state.value,
        "reason": item.reason,
        "error": item.error,
        "attempts": item.attempts,
        "next_attempt_at": item.next_attempt_at.isoformat() if item.next_attempt_at else None,
        "processed_at": item.processed_at.isoformat() if item.processed_at else None,
        "ticket": number,
    }


@inbound.command("list")
@clikit.config_option
@click.option("--state", "states", multiple=True, type=STATE_CHOICE, help="Repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@clikit.json_option
def inbound_list(states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Received items, newest first."""
    stmt = select(InboundItem).options(defer(InboundItem.raw))
    if states:
        stmt = stmt.where(InboundItem.state.in_([InboundState(s) for s in states]))
    stmt = stmt.order_by(InboundItem.id.desc()).limit(limit)
    with clikit.app() as app, app.db.transaction() as session:
        items = session.scalars(stmt).all()
        numbers = _numbers(session, {i.ticket_id for i in items if i.ticket_id is not None})
        rows = [_summary(i, numbers.get(i.ticket_id or 0)) for i in items]
    if as_json:
        clikit.print_json(rows)
        return
    clikit.table(
        [
            (
                r["id"],
                r["state"],
                r["attempts"],
                r["source"],
                r["received_at"][:19],
                r["ticket"] or "-",
                (r["message_id"] or r["source_ref"])[:60],
                (r["reason"] or r["error"] or "")[:60],
            )
            for r in rows
        ],
        ["ID", "STATE", "TRIES", "SOURCE", "RECEIVED", "TICKET", "MESSAGE-ID", "REASON"],
    )


def _item(session: Session, item_id: int) -> InboundItem:
    item = session.get(InboundItem, item_id, options=[defer(InboundItem.raw)])
    if item is None:
        raise click.ClickException(f"no inbound item {item_id}")
    return item


@inbound.command("show")
@clikit.config_option
@click.argument("item_id", metavar="ID", type=int)
@clikit.json_option
def inbound_show(item_id: int, as_json: bool) -> None:
    """One item: its headers, state, reason or error, attempts and ticket."""
    with clikit.app() as app, app.db.transaction() as session:
        item = _item(session, item_id)
        number = (
            _numbers(session, {item.ticket_id}).get(item.ticket_id)
            if item.ticket_id is not None
            else None
        )
        data = _summary(item, number)
        raw = store.raw_of(session, [item.id])[item.id]
        headers, _, _ = split_header_block(raw, 0, min(len(raw), HEADER_SCAN))
    data["headers"] = {
        name: value.decode("utf-8", "replace")
        for name in SUMMARY_HEADERS
        if (value := headers.raw(name)) is not None
    }
    if as_json:
        clikit.print_json(data)
        return
    lines = [f"inbound {data['id']}  {data['state']}  ({data['source']} {data['source_ref']})"]
    lines += [f"  {name}: {value}" for name, value in data["headers"].items()]
    lines += [
        f"  received:  {data['received_at']}    size: {data['size']} bytes",
        f"  attempts:  {data['attempts']}"
        + (f"    next: {data['next_attempt_at']}" if data["next_attempt_at"] else ""),
        f"  ticket:    {data['ticket'] or '-'}",
    ]
    if data["reason"]:
        lines.append(f"  reason:    {data['reason']}")
    if data["error"]:
        lines.append(f"  error:     {data['error']}")
    click.echo("\n".join(lines))


@inbound.command("retry")
@clikit.config_option
@click.argument("item_id", metavar="ID", type=int, required=False)
@click.option("--all-quarantined", is_flag=True, help="Every quarantined item.")
def inbound_retry(item_id: int | None, all_quarantined: bool) -> None:
    """Put a failed, quarantined or ignored item back in the queue with fresh attempts."""
    if (item_id is None) == (not all_quarantined):
        raise click.UsageError("give an ID or --all-quarantined (not both)")
    with clikit.app() as app, app.db.transaction() as session:
        if item_id is None:
            count = store.retry_quarantined(session)
            click.echo(f"{count} quarantined item{'s' if count != 1 else ''} queued again")
            return
        try:
            store.retry(session, item_id)
        except store.InboundError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"inbound {item_id} queued again")


@inbound.command("export")
@clikit.config_option
@click.argument("item_id", metavar="ID", type=int)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, writable=True))
def inbound_export(item_id: int, file: Path) -> None:
    """Write the item's raw bytes, exactly as received, to FILE (e.g. message.eml)."""
    with clikit.app() as app, app.db.transaction() as session:
        raw = store.raw_of(session, [_item(session, item_id).id])[item_id]
    file.write_bytes(raw)
    click.echo(f"inbound {item_id}: {len(raw)} bytes written to {file}")
