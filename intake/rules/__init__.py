"""Rules that run before registration: each decides whether a mail is set aside, and why.

A rule only decides (ARCHITECTURE.md: parsers detect, rules decide, the pipeline acts).
Each is one module with a kebab-case ``name``, a one-line ``description`` and
``check(mail, context) -> Decision | None``; the first rule that returns a decision wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from parsers.headers import HeaderBlock
from parsers.model import ParsedMail


@dataclass(frozen=True)
class Decision:
    """Set the mail aside: ``reason`` is recorded on the inbound item."""

    rule: str
    reason: str
    # A bounce names the Message-ID of the mail that could not be delivered.
    bounced_message_id: str | None = None

    @property
    def recorded(self) -> str:
        return f"{self.rule}: {self.reason}"


@dataclass(frozen=True)
class RuleContext:
    headers: HeaderBlock
    message_id_domain: str
    from_address: str


class Rule(Protocol):
    name: str
    description: str

    def check(self, mail: ParsedMail, context: RuleContext) -> Decision | None: ...


class DuplicateRuleError(ValueError):
    pass


def check_unique(rules: Sequence[Rule]) -> Sequence[Rule]:
    """The rules as given; two with one name are a start-up error, not a run-time surprise."""
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise DuplicateRuleError(f"two rules are named {rule.name!r}")
        seen.add(rule.name)
    return rules


def decide(rules: Sequence[Rule], mail: ParsedMail, context: RuleContext) -> Decision | None:
    for rule in rules:
        decision = rule.check(mail, context)
        if decision is not None:
            return decision
    return None
