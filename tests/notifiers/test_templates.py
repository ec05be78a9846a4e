"""Every customer mail and staff message renders in Russian and English from what the
context builder provides, and an admin's override replaces a built-in template."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import jinja2
import pytest
from jinja2 import meta
from sqlalchemy import select

from intake.desk import TRANSITIONS, Desk, Environment
from notifiers.render import (
    BUILT_IN,
    CONTEXT_KEYS,
    LANGUAGES,
    TemplateError,
    build_context,
    environment,
    render_mail,
    render_telegram,
)
from notifiers.transports import FolderTransport
from storage.db import Database
from storage.models import (
    Attachment,
    Blob,
    CloseReason,
    Message,
    OutboxItem,
    OutboxState,
    Status,
)
from tests.notifiers.conftest import Clock, Seed, email_worker, register, rows

MAIL_TEMPLATES = sorted(
    {"acknowledgement", "follow_up_received"} | {f"status_{t.target.value}" for t in TRANSITIONS}
)
STAFF_TEMPLATES = ("new_ticket", "follow_up", "escalation", "sla_breach")
SUPPORT = "support@intake.test"


def test_every_template_uses_only_variables_the_context_provides() -> None:
    env = environment()
    sources = sorted(BUILT_IN.rglob("*.j2"))
    assert len(sources) >= 2 * (2 * len(MAIL_TEMPLATES) + len(STAFF_TEMPLATES))

    for path in sources:
        tree = env.parse(path.read_text(encoding="utf-8"))
        undeclared = meta.find_undeclared_variables(tree)
        assert undeclared <= CONTEXT_KEYS, (
            f"{path.relative_to(BUILT_IN)}: {undeclared - CONTEXT_KEYS}"
        )


def test_every_status_a_transition_leads_to_has_a_mail_in_both_languages() -> None:
    for language in LANGUAGES:
        for name in MAIL_TEMPLATES:
            assert (BUILT_IN / language / f"{name}.txt.j2").is_file(), (language, name)
            assert (BUILT_IN / language / f"{name}.html.j2").is_file(), (language, name)
        for name in STAFF_TEMPLATES:
            assert (BUILT_IN / language / f"{name}.tg.j2").is_file(), (language, name)


def _context(db: Database, template: str, language: str, **payload: str) -> dict[str, object]:
    with db.transaction() as session:
        item = session.scalars(select(OutboxItem).order_by(OutboxItem.id)).first()
        assert item is not None
        item.template = template
        item.payload = {**item.payload, "language": language, **payload}
        context = build_context(session, item, support_address=SUPPORT)
        session.rollback()
    return context


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", MAIL_TEMPLATES)
def test_mail_renders_with_text_and_html_in_each_language(
    db: Database, desk: Desk, seed: Seed, template: str, language: str
) -> None:
    ticket = register(db, desk, seed, subject="Tom & Jerry <script>")
    context = _context(db, template, language, note="Answer: restart the <service>.")

    assert set(context) == CONTEXT_KEYS
    mail = render_mail(environment(), template, context)

    assert mail.subject.strip()
    assert "Tom & Jerry <script>" in mail.subject
    assert ticket.number in mail.text
    assert ticket.number in mail.html
    assert "Tom &amp; Jerry &lt;script&gt;" in mail.html
    assert "<script>" not in mail.html
    assert "Tom & Jerry <script>" in mail.text


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", STAFF_TEMPLATES)
def test_staff_message_renders_escaped_in_each_language(
    db: Database, desk: Desk, seed: Seed, template: str, language: str
) -> None:
    ticket = register(db, desk, seed, subject="a <b>bold</b> & risky subject")
    context = _context(db, template, language, reason="VIP <customer>", previous="P2")

    text = render_telegram(environment(), template, context)

    assert ticket.number in text
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; risky subject" in text
    assert "<b>bold</b>" not in text


@pytest.mark.parametrize(
    ("language", "verdict", "expected"),
    [
        ("en", "confirmed", "Confirmed by a responsible contact: the request is closed."),
        ("ru", "reopened", "Клиент возражает: заявка снова в работе."),
        ("en", "not_responsible", "A confirmation from a contact who may not confirm"),
        ("ru", "acknowledged", "Заявка остаётся решённой и ждёт подтверждения клиента."),
        ("en", "not_customer", "An objection from someone outside the customer"),
        ("ru", "unauthenticated", "наш почтовый сервер не подтвердил (DMARC)"),
    ],
)
def test_staff_are_told_what_a_customers_answer_to_a_solution_did(
    db: Database, desk: Desk, seed: Seed, language: str, verdict: str, expected: str
) -> None:
    register(db, desk, seed)
    plain = render_telegram(environment(), "follow_up", _context(db, "follow_up", language))
    context = _context(db, "follow_up", language, verdict=verdict, message="Confirmed.")
    text = render_telegram(environment(), "follow_up", context)
    assert expected in text
    assert text.splitlines()[0] == plain.splitlines()[0]


def test_acknowledgement_tells_what_was_understood_and_asks_only_for_what_is_missing(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(
        db,
        desk,
        seed,
        environment=Environment(
            os="Windows", os_version="11", browser="Chrome", browser_version="120"
        ),
    )
    with db.transaction() as session:
        message = session.scalars(select(Message).where(Message.ticket_id == ticket.id)).one()
        for index in range(2):
            session.add(Blob(sha256=f"{index:064d}", size=10))
            session.flush()
            session.add(
                Attachment(
                    message=message,
                    sha256=f"{index:064d}",
                    filename=f"screen{index}.png",
                    content_type="image/png",
                    size=10,
                    screenshot=True,
                )
            )
    ru = render_mail(environment(), "acknowledgement", _context(db, "acknowledgement", "ru"))
    en = render_mail(environment(), "acknowledgement", _context(db, "acknowledgement", "en"))

    assert "Тип: инцидент" in ru.text
    assert "Приоритет: P2" in ru.text
    assert "версии систем: Windows 11, Chrome 120" in ru.text
    assert "скриншотов: 2" in ru.text
    assert "- версию OmniVOX (AgentZone или Chat, например, AgentZone 3.2.1)" in ru.text
    assert "операционную систему" not in ru.text
    assert "браузер" not in ru.text
    assert "Kind: incident" in en.text
    assert "system versions: Windows 11, Chrome 120" in en.text
    assert "screenshots: 2" in en.text
    assert "- the OmniVOX version (AgentZone or Chat, e.g. AgentZone 3.2.1)" in en.text
    assert "browser" not in en.text


@pytest.mark.parametrize(
    ("event", "ru_reason", "en_reason"),
    [
        ("confirm", "вы подтвердили решение", "you confirmed the solution"),
        ("auto_close", "мы не получили ответа", "we received no reply"),
        ("withdraw", "заявка отозвана", "the request was withdrawn"),
    ],
)
def test_closed_mail_names_the_reason(
    db: Database, desk: Desk, seed: Seed, event: str, ru_reason: str, en_reason: str
) -> None:
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        stored = desk.ticket(session, ticket.number)
        if event != "withdraw":
            desk.apply(session, stored, "resolve", actor="alice", note="Fixed.")
        desk.apply(session, stored, event, actor="anna")
        assert stored.close_reason in set(CloseReason)

    ru = render_mail(environment(), "status_closed", _context(db, "status_closed", "ru"))
    en = render_mail(environment(), "status_closed", _context(db, "status_closed", "en"))

    assert ru_reason in ru.text
    assert ru_reason in ru.html
    assert en_reason in en.text


def test_resolved_mail_carries_the_answer_and_how_to_confirm_or_object(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        desk.set_status(
            session, ticket.number, Status.RESOLVED, actor="alice", note="Update to 3.2.1."
        )
        resolved = session.scalars(
            select(OutboxItem).where(OutboxItem.template == "status_resolved")
        ).one()
        context = build_context(session, resolved, support_address=SUPPORT)

    mail = render_mail(environment(), "status_resolved", context)

    assert "Update to 3.2.1." in mail.text
    assert "подтверждаю" in mail.text
    assert "опишите, что осталось не так" in mail.text


async def test_admin_override_replaces_one_template_and_keeps_the_others(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path
) -> None:
    overrides = tmp_path / "templates"
    (overrides / "ru").mkdir(parents=True)
    (overrides / "ru" / "acknowledgement.txt.j2").write_text(
        '{% set mail_subject = "Принято" %}Номер {{ number }}, спасибо.\n', encoding="utf-8"
    )
    register(db, desk, seed)
    out = tmp_path / "out"

    [outcome] = await email_worker(
        db, FolderTransport(out, clock), clock, templates_dir=overrides
    ).deliver_due()

    assert outcome.state is OutboxState.SENT
    [eml] = out.iterdir()
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert str(message["Subject"]).endswith("] Принято")
    assert isinstance(message, EmailMessage)
    parts = {p.get_content_type(): p.get_content() for p in message.iter_parts()}
    assert parts["text/plain"].startswith("Номер OV-2026-")
    assert "Что мы поняли" in parts["text/html"]


async def test_override_with_an_unknown_variable_fails_the_row_with_a_clear_error(
    db: Database, desk: Desk, seed: Seed, clock: Clock, tmp_path: Path
) -> None:
    overrides = tmp_path / "templates"
    (overrides / "ru").mkdir(parents=True)
    (overrides / "ru" / "acknowledgement.txt.j2").write_text(
        '{% set mail_subject = "x" %}{{ numbr }}\n', encoding="utf-8"
    )
    register(db, desk, seed)

    [outcome] = await email_worker(
        db, FolderTransport(tmp_path / "out", clock), clock, templates_dir=overrides
    ).deliver_due()

    assert outcome.state is OutboxState.PENDING
    assert rows(db, "email")[0].last_error == (
        "cannot prepare: ru/acknowledgement.txt.j2: 'numbr' is undefined"
    )


def test_unknown_template_is_a_clear_error() -> None:
    with pytest.raises(TemplateError, match=re.escape("no template ru/nonexistent.txt.j2")):
        render_mail(environment(), "nonexistent", {"language": "ru"})
    assert environment().undefined is jinja2.StrictUndefined


@pytest.mark.parametrize("language", LANGUAGES)
def test_refusal_of_an_unknown_sender_renders_without_a_ticket(
    db: Database, language: str
) -> None:
    with db.transaction() as session:
        item = OutboxItem(
            channel="email",
            template="unknown_sender_rejected",
            recipient="stranger@elsewhere.example",
            message_id="<refusal@intake.test>",
            payload={"language": language, "subject": "Help <now>"},
        )
        session.add(item)
        session.flush()
        context = build_context(session, item, support_address=SUPPORT)
    assert set(context) == CONTEXT_KEYS
    mail = render_mail(environment(), "unknown_sender_rejected", context)
    assert "Help <now>" in mail.subject
    assert "Help &lt;now&gt;" in mail.html
    assert "[]" not in mail.html
    assert SUPPORT in mail.text
