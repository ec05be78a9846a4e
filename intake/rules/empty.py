"""Empty mail: no subject, no text, no files; nothing to register."""

from __future__ import annotations

from intake.rules import Decision, RuleContext
from parsers.model import ParsedMail


class Empty:
    name = "empty"
    description = "mail without a subject, text or attachment"

    def check(self, mail: ParsedMail, context: RuleContext) -> Decision | None:
        if mail.subject.strip() or mail.text.strip() or mail.screenshots or mail.attachments:
            return None
        return Decision(self.name, "no subject, no text and no attachment")


EMPTY = Empty()
