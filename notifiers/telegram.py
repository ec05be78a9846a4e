"""Staff notifications in Telegram chats, sent with python-telegram-bot inside our loop.

Texts use Telegram's HTML markup: templates escape every value (customer text included),
and a text over Telegram's limit is cut at a line or word boundary, with an ellipsis and
every open tag closed, so the API never sees broken markup. Flood control (429 with
``retry_after``) postpones the row by that long without counting it as a failure.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from html.parser import HTMLParser

import jinja2
from sqlalchemy.orm import Session
from telegram import Bot, LinkPreviewOptions
from telegram.constants import MessageLimit, ParseMode
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter
from telegram.warnings import PTBDeprecationWarning

from notifiers.outbox import PermanentError, Postpone
from notifiers.render import build_context, render_telegram
from storage.models import OutboxItem

CHANNEL = "telegram"
TEXT_LIMIT = int(MessageLimit.MAX_TEXT_LENGTH)
ELLIPSIS = "…"


def visible_length(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2


class _Cutter(HTMLParser):
    """Copies markup until ``budget`` visible characters are used, then stops cleanly."""

    def __init__(self, budget: int) -> None:
        super().__init__(convert_charrefs=False)
        self.budget = budget
        self.parts: list[str] = []
        self.open: list[str] = []
        self.full = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.full:
            self.parts.append(self.get_starttag_text() or "")
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.full:
            self.parts.append(f"</{tag}>")
            if tag in self.open:
                del self.open[len(self.open) - 1 - self.open[::-1].index(tag)]

    def handle_data(self, data: str) -> None:
        if self.full:
            return
        if visible_length(data) <= self.budget:
            self.parts.append(data)
            self.budget -= visible_length(data)
            return
        self.parts.append(_clean_prefix(data, self.budget))
        self.full = True

    def _entity(self, text: str) -> None:
        if self.full:
            return
        if self.budget < 1:
            self.full = True
            return
        self.parts.append(text)
        self.budget -= 1

    def handle_entityref(self, name: str) -> None:
        self._entity(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self._entity(f"&#{name};")

    def result(self) -> str:
        closing = "".join(f"</{tag}>" for tag in reversed(self.open))
        return "".join(self.parts).rstrip() + ELLIPSIS + closing


def _clean_prefix(data: str, budget: int) -> str:
    """The longest start of ``data`` within ``budget`` that ends at a line, else a word."""
    used = end = 0
    for index, char in enumerate(data):
        used += visible_length(char)
        if used > budget:
            break
        end = index + 1
    fitting = data[:end]
    if end < len(data) and data[end].isspace():
        return fitting
    for boundary in ("\n", " "):
        at = fitting.rfind(boundary)
        if at > 0:
            return fitting[:at]
    # One word longer than the room left: none of it; the markup before it is a boundary.
    return ""


def _fits(text: str, limit: int) -> bool:
    cutter = _Cutter(limit)
    cutter.feed(text)
    cutter.close()
    return not cutter.full


def cut(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` (Telegram HTML) within ``limit`` visible characters, cut cleanly."""
    if _fits(text, limit):
        return text
    cutter = _Cutter(limit - visible_length(ELLIPSIS))
    cutter.feed(text)
    cutter.close()
    return cutter.result()


@dataclass(frozen=True)
class PreparedPost:
    chat_id: int | str
    text: str


def _chat(recipient: str) -> int | str:
    # Chats are numeric ids; public channels may be named by @username.
    try:
        return int(recipient)
    except ValueError:
        return recipient


def _seconds(error: RetryAfter) -> float:
    with warnings.catch_warnings():
        # The type of retry_after changes in a future release; both forms are handled here.
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class TelegramChannel:
    """Renders a staff notification at send time and posts it with the Bot API."""

    channel = CHANNEL

    def __init__(
        self,
        bot: Bot,
        templates: jinja2.Environment,
        *,
        support_address: str,
        limit: int = TEXT_LIMIT,
    ) -> None:
        self.bot = bot
        self.templates = templates
        self.support_address = support_address
        self.limit = limit

    def prepare(self, session: Session, item: OutboxItem, now: dt.datetime) -> PreparedPost:
        context = build_context(session, item, support_address=self.support_address)
        text = render_telegram(self.templates, item.template, context)
        return PreparedPost(_chat(item.recipient), cut(text.strip(), self.limit))

    async def send(self, item_id: int, prepared: PreparedPost) -> None:
        try:
            await self.bot.initialize()
            await self.bot.send_message(
                prepared.chat_id,
                prepared.text,
                parse_mode=ParseMode.HTML,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
        except RetryAfter as error:
            seconds = _seconds(error)
            raise Postpone(
                dt.timedelta(seconds=seconds), f"Telegram flood control: retry after {seconds:g} s"
            ) from error
        except (BadRequest, Forbidden, InvalidToken) as error:
            raise PermanentError(f"Telegram refused: {error.message}") from error

    def refused(self, session: Session, item: OutboxItem, error: PermanentError) -> None:
        """A refused chat stays configured: an admin fixes the bot's membership or the id."""

    async def close(self) -> None:
        await self.bot.shutdown()
