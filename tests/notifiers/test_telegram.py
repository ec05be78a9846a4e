"""Staff notifications through python-telegram-bot against a local Bot API: what the desk
queues, what the API receives, flood control, escaping and clean cuts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
from collections.abc import AsyncIterator

import pytest
from telegram import Bot

from intake.desk import Desk, FollowUp
from notifiers.outbox import OutboxWorker
from notifiers.render import environment
from notifiers.telegram import (
    ELLIPSIS,
    TEXT_LIMIT,
    PreparedPost,
    TelegramChannel,
    cut,
    visible_length,
)
from storage.db import Database
from storage.models import Kind, OutboxState, Priority
from tests.notifiers.conftest import STAFF_CHAT, Clock, Seed, register, rows
from tests.peers.telegram import TOKEN, BotApi


@pytest.fixture
async def telegram(
    db: Database, clock: Clock, bot_api: BotApi
) -> AsyncIterator[OutboxWorker[PreparedPost]]:
    channel = TelegramChannel(
        Bot(TOKEN, base_url=f"{bot_api.url}/bot"),
        environment(),
        support_address="support@intake.test",
    )
    yield OutboxWorker(db, channel, max_attempts=5, clock=clock)
    await channel.close()


# --- what the desk queues -----------------------------------------------------------------


def test_registration_queues_one_new_ticket_message_per_staff_chat(
    db: Database, desk: Desk, seed: Seed
) -> None:
    two_chats = Desk(dataclasses.replace(desk.rules, staff_chats=(-1001, -1002)), desk.clock)
    ticket = register(db, two_chats, seed)

    queued = [(r.template, r.recipient, r.ticket_id) for r in rows(db, "telegram")]
    assert queued == [("new_ticket", "-1001", ticket.id), ("new_ticket", "-1002", ticket.id)]


def test_without_staff_chats_nothing_is_queued_for_telegram(
    db: Database, desk: Desk, seed: Seed
) -> None:
    register(db, Desk(dataclasses.replace(desk.rules, staff_chats=()), desk.clock), seed)

    assert rows(db, "telegram") == []


def test_raising_priority_to_p1_queues_an_escalation_once(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        desk.set_priority(session, ticket.number, Priority.P1, actor="bob", reason="all down")
        desk.set_priority(session, ticket.number, Priority.P1, actor="bob", reason="still")

    escalations = [r for r in rows(db, "telegram") if r.template == "escalation"]
    assert [(r.recipient, r.payload["previous"], r.payload["reason"]) for r in escalations] == [
        (str(STAFF_CHAT), "P2", "all down")
    ]


def test_customer_follow_up_on_a_ticket_in_progress_is_told_to_staff(
    db: Database, desk: Desk, seed: Seed
) -> None:
    ticket = register(db, desk, seed)
    with db.transaction() as session:
        stored = desk.ticket(session, ticket.number)
        desk.follow_up(session, stored, FollowUp(text="Still silent."), actor="anna")
        desk.apply(session, stored, "take", actor="alice")
        desk.follow_up(session, stored, FollowUp(text="It rang once!"), actor="anna")

    follow_ups = [r.payload["message"] for r in rows(db, "telegram") if r.template == "follow_up"]
    assert follow_ups == ["It rang once!"]


# --- what the Bot API receives ------------------------------------------------------------


async def test_new_ticket_reaches_the_staff_chat_with_customer_text_escaped(
    db: Database,
    desk: Desk,
    seed: Seed,
    bot_api: BotApi,
    telegram: OutboxWorker[PreparedPost],
) -> None:
    ticket = register(db, desk, seed, subject="<b>urgent</b> & <a href='x'>click</a>")

    [outcome] = await telegram.deliver_due()

    assert outcome.state is OutboxState.SENT
    [sent] = bot_api.messages
    assert int(sent["chat_id"]) == STAFF_CHAT
    assert sent["parse_mode"] == "HTML"
    text = sent["text"]
    assert text.startswith(f"🆕 <b>{ticket.number}</b> · P2 · инцидент")
    assert "Тема: &lt;b&gt;urgent&lt;/b&gt; &amp; &lt;a href=&#39;x&#39;&gt;click&lt;/a&gt;" in text
    assert "Клиент: Acme (Anna Petrova)" in text
    assert "Скриншотов: 0" in text
    assert "Исполнитель: alice" in text
    assert "tg://user" not in text  # not P1: nobody is mentioned


async def test_p1_ticket_mentions_the_on_duty_engineer(
    db: Database,
    desk: Desk,
    seed: Seed,
    bot_api: BotApi,
    telegram: OutboxWorker[PreparedPost],
) -> None:
    register(db, desk, seed, kind=Kind.PROBLEM)

    await telegram.deliver_due()

    [sent] = bot_api.messages
    assert "· P1 ·" in sent["text"]
    assert '<a href="tg://user?id=4242">alice</a>, заявка P1' in sent["text"]


# python-telegram-bot itself warns when it builds RetryAfter (the type of retry_after changes).
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_flood_control_postpones_by_retry_after_without_counting_a_failure(
    db: Database,
    desk: Desk,
    seed: Seed,
    clock: Clock,
    bot_api: BotApi,
    telegram: OutboxWorker[PreparedPost],
) -> None:
    register(db, desk, seed)
    bot_api.flood(retry_after=3)

    [postponed] = await telegram.deliver_due()
    [row] = rows(db, "telegram")
    assert postponed.state is OutboxState.PENDING
    assert row.attempts == 0
    assert row.next_attempt_at == clock.now + dt.timedelta(seconds=3)
    assert row.last_error == "Telegram flood control: retry after 3 s"
    clock.advance(dt.timedelta(seconds=2))
    assert await telegram.deliver_due() == []
    clock.advance(dt.timedelta(seconds=1))
    [sent] = await telegram.deliver_due()

    assert sent.state is OutboxState.SENT
    send_calls = [c for c in bot_api.calls if c.method == "sendMessage"]
    assert len(send_calls) == 2
    assert len(bot_api.messages) == 2
    assert rows(db, "telegram")[0].attempts == 1


async def test_refused_message_is_dead_lettered_at_once(
    db: Database,
    desk: Desk,
    seed: Seed,
    bot_api: BotApi,
    telegram: OutboxWorker[PreparedPost],
) -> None:
    register(db, desk, seed)
    bot_api.refuse("Bad Request: chat not found")

    [outcome] = await telegram.deliver_due()

    assert outcome.state is OutboxState.DEAD
    assert rows(db, "telegram")[0].last_error == "Telegram refused: Chat not found"


async def test_long_description_is_cut_cleanly_within_telegrams_limit(
    db: Database,
    desk: Desk,
    seed: Seed,
    bot_api: BotApi,
    telegram: OutboxWorker[PreparedPost],
) -> None:
    paragraph = "Операторы не слышат звонок & <ничего> не помогает. " * 20 + "\n"
    register(db, desk, seed, description=paragraph * 20)

    [outcome] = await telegram.deliver_due()

    assert outcome.state is OutboxState.SENT
    [sent] = bot_api.messages
    text = sent["text"]
    visible = html.unescape(re.sub(r"<[^>]+>", "", text))
    assert visible_length(visible) <= TEXT_LIMIT
    assert visible_length(visible) > TEXT_LIMIT - 60
    assert text.endswith(ELLIPSIS)
    last_line = visible.removesuffix(ELLIPSIS).splitlines()[-1]
    assert re.search(re.escape(last_line) + r"\s", paragraph), "cut inside a word"
    assert "&lt;ничего&gt;" in text


# --- cutting ------------------------------------------------------------------------------


def test_cut_leaves_a_text_within_the_limit_alone() -> None:
    text = "<b>x</b> " + "a" * (TEXT_LIMIT - 2)
    assert cut(text) == text


def test_cut_closes_open_tags_and_never_splits_an_entity_or_a_word() -> None:
    text = "<b>Title &amp; more</b>\n<i>" + "word &lt;x&gt; " * 50 + "</i>"

    result = cut(text, 40)

    assert result.endswith(ELLIPSIS + "</i>")
    assert result.startswith("<b>Title &amp; more</b>\n<i>")
    assert re.search(r"&[a-z]*$", result.removesuffix(ELLIPSIS + "</i>")) is None
    body = result.removesuffix(ELLIPSIS + "</i>")
    assert body.endswith(("word", "&lt;x&gt;"))
    visible = html.unescape(re.sub(r"<[^>]+>", "", result))
    assert len(visible) <= 40


def test_cut_counts_emoji_as_telegram_does() -> None:
    text = "🆕 " * 30

    result = cut(text, 21)

    assert visible_length(result) <= 21
    assert result == "🆕 " * 6 + "🆕" + ELLIPSIS
