"""Bounces and delivery reports: never a ticket; journaled on the ticket of the lost mail."""

from __future__ import annotations

from intake.rules import Decision, RuleContext
from parsers.model import ParsedMail


class BounceRule:
    name = "bounce"
    description = "delivery failure reports (multipart/report, mailer-daemon)"

    def check(self, mail: ParsedMail, context: RuleContext) -> Decision | None:
        if not mail.bounce.is_bounce:
            return None
        original = mail.bounce.original_message_id
        about = f" of {original}" if original else ""
        return Decision(
            self.name,
            f"delivery report{about} ({mail.bounce.reason or 'bounce'})",
            bounced_message_id=original,
        )


BOUNCE = BounceRule()
