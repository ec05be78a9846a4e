"""Auto-replies, out-of-office notices and list mail: RFC 3834 and the vendors' headers."""

from __future__ import annotations

from intake.rules import Decision, RuleContext
from parsers.model import ParsedMail


class AutoReply:
    name = "auto-reply"
    description = "automatic replies, out-of-office notices, read receipts and list mail"

    def check(self, mail: ParsedMail, context: RuleContext) -> Decision | None:
        if not mail.is_auto_reply:
            return None
        return Decision(self.name, mail.auto_reply_reason or "automatic reply")


AUTO_REPLY = AutoReply()
