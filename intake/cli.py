"""The ``intake`` command: run the daemon and work the desk from a shell."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import selectinload

from intake import clikit, directory
from intake.app import database_url
from intake.commands.inbound import inbound
from intake.commands.outbox import outbox_group
from intake.commands.parse import parse
from intake.config import ConfigError, SecretError
from intake.daemon import supervise
from intake.desk import DeskError, NewRequest
from intake.services import StartupError
from intake.views import ticket_detail, ticket_summary
from storage.db import Database, StorageError
from storage.migrate import current_revision, head_revision, upgrade
from storage.models import (
    Channel,
    CloseReason,
    Contact,
    Customer,
    Kind,
    Priority,
    Status,
    Ticket,
)

EXIT_ERROR = 1
EXIT_CONFIG = 2


@click.group()
@clikit.config_option
@click.version_option(package_name="omnivox-intake")
def cli() -> None:
    """OmniVOX Intake: registers support requests from email and phone as tickets."""


# --- daemon -------------------------------------------------------------------------------


@cli.command()
@clikit.config_option
def run() -> None:
    """Run the daemon until SIGTERM or Ctrl-C."""
    settings = clikit.settings(verify_secrets=True)
    logging.basicConfig(
        level=settings.daemon.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with clikit.app() as app:
        asyncio.run(supervise(app.services(), shutdown_timeout=settings.daemon.shutdown_timeout))


@cli.command("check-config")
@clikit.config_option
@click.argument("path", required=False, type=click.Path(path_type=Path, dir_okay=False))
def check_config(path: Path | None) -> None:
    """Validate the configuration; print OK or every error (exit 2)."""
    if path is not None:
        click.get_current_context().find_root().ensure_object(dict)["config"] = path
    clikit.settings(verify_secrets=True)
    click.echo("OK")


# --- database -----------------------------------------------------------------------------


@cli.group()
@clikit.config_option
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@clikit.config_option
def db_upgrade() -> None:
    """Create or migrate the database to the current schema."""
    database = Database.from_url(database_url(clikit.settings()))
    try:
        before = current_revision(database.engine)
        upgrade(database.engine)
        after = current_revision(database.engine)
    finally:
        database.dispose()
    if before == after:
        click.echo(f"database already at {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


@db.command("current")
@clikit.config_option
def db_current() -> None:
    """Print the database's schema revision and the code's."""
    database = Database.from_url(database_url(clikit.settings()))
    try:
        revision = current_revision(database.engine)
    finally:
        database.dispose()
    click.echo(f"database: {revision or 'empty'}; code: {head_revision()}")


# --- tickets ------------------------------------------------------------------------------

STATUS_CHOICE = click.Choice([s.value for s in Status])
PRIORITY_CHOICE = click.Choice([p.value for p in Priority])
KIND_CHOICE = click.Choice([k.value for k in Kind])


def _ticket_query() -> Any:
    return select(Ticket).options(
        selectinload(Ticket.customer), selectinload(Ticket.contact), selectinload(Ticket.assignee)
    )


@cli.group()
@clikit.config_option
def tickets() -> None:
    """List, inspect and move tickets."""


@tickets.command("list")
@clikit.config_option
@click.option("--status", "statuses", multiple=True, type=STATUS_CHOICE, help="Repeatable.")
@click.option("--priority", "priorities", multiple=True, type=PRIORITY_CHOICE, help="Repeatable.")
@click.option("--customer", help="Customer name.")
@click.option("--open", "only_open", is_flag=True, help="Everything not closed.")
@click.option(
    "--order",
    type=click.Choice(["priority", "newest"]),
    default="priority",
    show_default=True,
    help="priority: most urgent first, then oldest first; newest: latest first.",
)
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@clikit.json_option
def tickets_list(
    statuses: tuple[str, ...],
    priorities: tuple[str, ...],
    customer: str | None,
    only_open: bool,
    order: str,
    limit: int,
    as_json: bool,
) -> None:
    """The queue."""
    stmt = _ticket_query()
    if statuses:
        stmt = stmt.where(Ticket.status.in_([Status(s) for s in statuses]))
    if only_open:
        stmt = stmt.where(Ticket.status != Status.CLOSED)
    if priorities:
        stmt = stmt.where(Ticket.priority.in_([Priority(p) for p in priorities]))
    if customer:
        stmt = stmt.join(Customer, Ticket.customer_id == Customer.id).where(
            Customer.name == customer
        )
    if order == "priority":
        stmt = stmt.order_by(Ticket.priority, Ticket.created_at, Ticket.id)
    else:
        stmt = stmt.order_by(Ticket.created_at.desc(), Ticket.id.desc())
    with clikit.app() as app, app.db.transaction() as session:
        if customer:
            directory.customer_by_name(session, customer)
        found = session.scalars(stmt.limit(limit)).all()
        if as_json:
            clikit.print_json([ticket_summary(t) for t in found])
            return
        clikit.table(
            [
                (
                    t.number,
                    t.priority.value,
                    t.status.value,
                    t.kind.value,
                    t.customer.name,
                    t.assignee.name if t.assignee else "-",
                    t.created_at.astimezone(app.desk.zone).strftime("%Y-%m-%d %H:%M"),
                    t.subject[:60],
                )
                for t in found
            ],
            ["NUMBER", "PRI", "STATUS", "KIND", "CUSTOMER", "ASSIGNEE", "CREATED", "SUBJECT"],
        )


@tickets.command("register")
@clikit.config_option
@click.option("--customer", required=True, help="Customer name.")
@click.option("--contact", "contact_ref", help="The contact's email address or phone number.")
@click.option("--subject", required=True)
@click.option("--description", default="")
@click.option("--kind", type=KIND_CHOICE, default=Kind.INCIDENT.value, show_default=True)
@click.option("--priority", type=PRIORITY_CHOICE, help="Override the priority from the kind.")
@click.option(
    "--channel",
    type=click.Choice([c.value for c in Channel]),
    default=Channel.STAFF.value,
    show_default=True,
)
@click.option("--assignee", help="Staff member (default: round-robin among those on duty).")
@click.option("--actor", default="cli", show_default=True)
@clikit.json_option
def tickets_register(
    customer: str,
    contact_ref: str | None,
    subject: str,
    description: str,
    kind: str,
    priority: str | None,
    channel: str,
    assignee: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Register a request taken by other means (a visit, a chat, a call not logged)."""
    with clikit.app() as app, app.db.transaction() as session:
        owner = directory.customer_by_name(session, customer)
        contact = directory.find_contact(session, contact_ref) if contact_ref else None
        ticket = app.desk.register(
            session,
            NewRequest(
                subject=subject,
                description=description,
                channel=Channel(channel),
                customer_id=owner.id,
                contact_id=contact.id if contact else None,
                kind=Kind(kind),
                priority=Priority(priority) if priority else None,
                assignee=assignee,
                author=actor,
            ),
            actor=actor,
        )
        if as_json:
            clikit.print_json(ticket_summary(ticket))
        else:
            click.echo(f"{ticket.number} registered ({ticket.priority.value}, {ticket.kind.value})")


@tickets.command("show")
@clikit.config_option
@click.argument("number")
@clikit.json_option
def tickets_show(number: str, as_json: bool) -> None:
    """One ticket with its messages and journal."""
    with clikit.app() as app, app.db.transaction() as session:
        ticket = app.desk.ticket(session, number)
        data = ticket_detail(ticket)
    if as_json:
        clikit.print_json(data)
        return
    env = ", ".join(f"{k}={v}" for k, v in data["environment"].items() if v is not None) or "-"
    lines = [
        f"{data['number']}  {data['subject']}",
        f"  status:    {data['status']}"
        + (f" ({data['close_reason']})" if data["close_reason"] else ""),
        f"  kind:      {data['kind']}    priority: {data['priority']}    "
        f"channel: {data['channel']}    queue: {data['queue']}",
        f"  customer:  {data['customer']}    contact: "
        f"{data['contact_name'] or ''} {data['contact_email'] or ''} "
        f"{data['contact_phone'] or ''}".rstrip(),
        f"  assignee:  {data['assignee'] or '-'}",
        f"  system:    {env}",
        f"  created:   {data['created_at']}    updated: {data['updated_at']}",
        f"  due:       response {data['response_due_at'] or '-'}, "
        f"resolution {data['resolution_due_at'] or '-'}",
        "",
        "Messages:",
    ]
    for message in data["messages"]:
        lines.append(f"  [{message['created_at']}] {message['direction']} {message['author']}")
        lines.extend(f"    {line}" for line in (message["text"] or "").splitlines())
        for attachment in message["attachments"]:
            lines.append(
                f"    + {attachment['filename']} ({attachment['content_type']}, "
                f"{attachment['size']} bytes)"
            )
    lines += ["", "Journal:"]
    for entry in data["journal"]:
        details = ", ".join(f"{k}={v}" for k, v in entry["details"].items())
        lines.append(f"  [{entry['at']}] {entry['actor']}: {entry['action']} {details}".rstrip())
    click.echo("\n".join(lines))


@tickets.command("set-status")
@clikit.config_option
@click.argument("number")
@click.argument("status", type=STATUS_CHOICE)
@click.option("--note", help="The answer, question or remark; sent to the customer where due.")
@click.option("--actor", default="cli", show_default=True, help="Who does this (journaled).")
@click.option(
    "--reason",
    type=click.Choice([r.value for r in CloseReason]),
    help="Why a resolved ticket is closed.",
)
def tickets_set_status(
    number: str, status: str, note: str | None, actor: str, reason: str | None
) -> None:
    """Move a ticket (events: see the transition table in the README)."""
    with clikit.app() as app, app.db.transaction() as session:
        ticket = app.desk.set_status(
            session,
            number,
            Status(status),
            actor=actor,
            note=note,
            reason=CloseReason(reason) if reason else None,
        )
        click.echo(f"{ticket.number}: {ticket.status.value}")


@tickets.command("assign")
@clikit.config_option
@click.argument("number")
@click.argument("staff")
@click.option("--actor", default="cli", show_default=True)
def tickets_assign(number: str, staff: str, actor: str) -> None:
    """Assign a ticket to a staff member (a new ticket goes in progress)."""
    with clikit.app() as app, app.db.transaction() as session:
        ticket = app.desk.assign(session, number, staff, actor=actor)
        click.echo(f"{ticket.number}: assigned to {staff}, {ticket.status.value}")


@tickets.command("set-priority")
@clikit.config_option
@click.argument("number")
@click.argument("priority", type=PRIORITY_CHOICE)
@click.option("--reason", default="", help="Why (journaled).")
@click.option("--actor", default="cli", show_default=True)
def tickets_set_priority(number: str, priority: str, reason: str, actor: str) -> None:
    """Override a ticket's priority; its due times follow."""
    with clikit.app() as app, app.db.transaction() as session:
        ticket = app.desk.set_priority(
            session, number, Priority(priority), actor=actor, reason=reason
        )
        click.echo(f"{ticket.number}: {ticket.priority.value}")


# --- customers, contacts, staff -----------------------------------------------------------


def _customer_row(customer: Customer) -> dict[str, Any]:
    return {
        "name": customer.name,
        "package": customer.package,
        "domains": customer.domains.split(),
        "created_at": customer.created_at.isoformat(),
    }


@cli.group()
@clikit.config_option
def customers() -> None:
    """Organisations with support packages."""


@customers.command("add")
@clikit.config_option
@click.argument("name")
@click.option("--package", help="Support package (default: [desk] default_package).")
@click.option("--domain", "domains", multiple=True, help="Mail domain of the customer.")
def customers_add(name: str, package: str | None, domains: tuple[str, ...]) -> None:
    """Add a customer."""
    settings = clikit.settings()
    with clikit.app() as app, app.db.transaction() as session:
        customer = directory.add_customer(
            session,
            name,
            package=package or settings.desk.default_package,
            known_packages=settings.packages,
            domains=domains,
        )
        click.echo(f"customer {customer.name!r} added ({customer.package})")


@customers.command("list")
@clikit.config_option
@clikit.json_option
def customers_list(as_json: bool) -> None:
    with clikit.app() as app, app.db.transaction() as session:
        rows = [_customer_row(c) for c in directory.list_customers(session)]
    if as_json:
        clikit.print_json(rows)
    else:
        clikit.table(
            [(r["name"], r["package"], " ".join(r["domains"])) for r in rows],
            ["NAME", "PACKAGE", "DOMAINS"],
        )


def _contact_row(contact: Contact) -> dict[str, Any]:
    return {
        "customer": contact.customer.name,
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "language": contact.language,
        "responsible": contact.responsible,
    }


@cli.group()
@clikit.config_option
def contacts() -> None:
    """People at the customers; responsible ones may confirm closure."""


@contacts.command("add")
@clikit.config_option
@click.option("--customer", required=True, help="Customer name.")
@click.option("--email")
@click.option("--phone", help="Any usual notation; stored as E.164.")
@click.option("--name", default="")
@click.option("--language", type=click.Choice(directory.LANGUAGES), default=None)
@click.option("--responsible", is_flag=True, help="May confirm closure for the customer.")
def contacts_add(
    customer: str,
    email: str | None,
    phone: str | None,
    name: str,
    language: str | None,
    responsible: bool,
) -> None:
    """Add a contact to a customer."""
    settings = clikit.settings()
    with clikit.app() as app, app.db.transaction() as session:
        contact = directory.add_contact(
            session,
            customer,
            email=email,
            phone=phone,
            name=name,
            language=language or settings.desk.language,
            responsible=responsible,
        )
        click.echo(
            f"contact {contact.email or contact.phone} added to {customer!r}"
            + (" (responsible)" if contact.responsible else "")
        )


@contacts.command("list")
@clikit.config_option
@click.option("--customer", help="Only this customer's contacts.")
@click.option("--responsible", is_flag=True, help="Only those who may confirm closure.")
@clikit.json_option
def contacts_list(customer: str | None, responsible: bool, as_json: bool) -> None:
    with clikit.app() as app, app.db.transaction() as session:
        if customer:
            directory.customer_by_name(session, customer)
        rows = [
            _contact_row(c)
            for c in directory.list_contacts(
                session, customer=customer, responsible_only=responsible
            )
        ]
    if as_json:
        clikit.print_json(rows)
    else:
        clikit.table(
            [
                (
                    r["customer"],
                    r["name"],
                    r["email"],
                    r["phone"],
                    r["language"],
                    "yes" if r["responsible"] else "",
                )
                for r in rows
            ],
            ["CUSTOMER", "NAME", "EMAIL", "PHONE", "LANG", "RESPONSIBLE"],
        )


@cli.group()
@clikit.config_option
def staff() -> None:
    """Support engineers and their queues."""


@staff.command("add")
@clikit.config_option
@click.argument("name")
@click.option("--email")
@click.option("--telegram-chat-id", type=int)
@click.option(
    "--queue", "queues", multiple=True, help="Repeatable (default: [desk] default_queue)."
)
@click.option("--off-duty", is_flag=True, help="Not given new tickets by round-robin.")
def staff_add(
    name: str,
    email: str | None,
    telegram_chat_id: int | None,
    queues: tuple[str, ...],
    off_duty: bool,
) -> None:
    """Add a staff member."""
    settings = clikit.settings()
    with clikit.app() as app, app.db.transaction() as session:
        member = directory.add_staff(
            session,
            name,
            email=email,
            telegram_chat_id=telegram_chat_id,
            queues=queues or (settings.desk.default_queue,),
            on_duty=not off_duty,
        )
        click.echo(f"staff {member.name!r} added (queues: {', '.join(member.queue_names)})")


@staff.command("list")
@clikit.config_option
@clikit.json_option
def staff_list(as_json: bool) -> None:
    with clikit.app() as app, app.db.transaction() as session:
        rows: list[dict[str, Any]] = [
            {
                "name": s.name,
                "email": s.email,
                "telegram_chat_id": s.telegram_chat_id,
                "on_duty": s.on_duty,
                "queues": s.queue_names,
            }
            for s in directory.list_staff(session)
        ]
    if as_json:
        clikit.print_json(rows)
    else:
        clikit.table(
            [
                (
                    r["name"],
                    r["email"],
                    r["telegram_chat_id"],
                    "yes" if r["on_duty"] else "no",
                    ", ".join(r["queues"]),
                )
                for r in rows
            ],
            ["NAME", "EMAIL", "TELEGRAM", "ON DUTY", "QUEUES"],
        )


# --- entry point --------------------------------------------------------------------------


cli.add_command(parse)
cli.add_command(inbound)
cli.add_command(outbox_group)


def _fail(message: str, code: int) -> int:
    # Drivers write multi-line messages; an operator's script reads one line.
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    click.echo(f"error: {one_line}", err=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every expected failure is one line on stderr and a non-zero code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="intake", standalone_mode=False
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        return _fail("aborted", EXIT_ERROR)
    except ConfigError as exc:
        for line in exc.errors:
            click.echo(line, err=True)
        return EXIT_CONFIG
    except (DeskError, StartupError, SecretError) as exc:
        return _fail(str(exc), EXIT_ERROR)
    except OperationalError as exc:
        return _fail(f"database unavailable: {exc.orig}", EXIT_ERROR)
    except (StorageError, SQLAlchemyError) as exc:
        return _fail(f"database error: {exc}", EXIT_ERROR)
    return 0


def entry_point() -> None:
    sys.exit(main())
