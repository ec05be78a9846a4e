"""Rules deciding whether an automatic mail may go to its recipient (RFC 3834, section 2).

Each rule answers with a reason to withhold the mail, or None. They run at send time, so a
bounce recorded after the row was queued still stops it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import OutboxItem, OutboxState
from storage.suppressions import suppression

RATE_WINDOW = dt.timedelta(hours=1)

# Mailboxes that no person reads, or whose mail goes back into a machine.
_MACHINE_LOCAL_PART = re.compile(
    r"(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class MailPolicy:
    rate_limit_per_hour: int = 10


Rule = Callable[[Session, OutboxItem, dt.datetime, MailPolicy], str | None]


def machine_address(
    session: Session, item: OutboxItem, now: dt.datetime, _: MailPolicy
) -> str | None:
    local = item.recipient.rpartition("@")[0]
    if _MACHINE_LOCAL_PART.match(local):
        return f"{item.recipient} is a no-reply or system address"
    return None


def suppressed(session: Session, item: OutboxItem, now: dt.datetime, _: MailPolicy) -> str | None:
    found = suppression(session, item.recipient)
    if found is not None:
        return f"{item.recipient} is suppressed: {found.reason}"
    return None


def rate_limited(
    session: Session, item: OutboxItem, now: dt.datetime, policy: MailPolicy
) -> str | None:
    recent = session.scalar(
        select(func.count())
        .select_from(OutboxItem)
        .where(
            OutboxItem.channel == item.channel,
            func.lower(OutboxItem.recipient) == item.recipient.lower(),
            OutboxItem.state == OutboxState.SENT,
            OutboxItem.sent_at > now - RATE_WINDOW,
        )
    )
    if recent is not None and recent >= policy.rate_limit_per_hour:
        return (
            f"{item.recipient} already got {recent} automatic mails in the last hour "
            f"(limit {policy.rate_limit_per_hour})"
        )
    return None


RULES: tuple[Rule, ...] = (machine_address, suppressed, rate_limited)


def reason_to_withhold(
    session: Session, item: OutboxItem, now: dt.datetime, policy: MailPolicy
) -> str | None:
    """The first rule's reason not to mail ``item`` now, or None when it may go."""
    for rule in RULES:
        reason = rule(session, item, now, policy)
        if reason is not None:
            return reason
    return None
