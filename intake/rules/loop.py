"""Our own mail coming back: our Message-ID domain, our X-Loop mark, our sender address."""

from __future__ import annotations

from intake.rules import Decision, RuleContext
from parsers.model import ParsedMail


class Loop:
    name = "loop"
    description = "mail we sent ourselves, come back (Message-ID domain, X-Loop, our sender)"

    def check(self, mail: ParsedMail, context: RuleContext) -> Decision | None:
        ours = context.from_address.lower()
        if mail.message_id and mail.message_id.lower().rstrip(">").endswith(
            "@" + context.message_id_domain.lower()
        ):
            return Decision(self.name, f"Message-ID {mail.message_id} is ours")
        for value in context.headers.raw_all("x-loop"):
            text = value.decode("ascii", "replace").strip().lower()
            if ours in text or context.message_id_domain.lower() in text:
                return Decision(self.name, f"X-Loop: {text[:100]}")
        if mail.from_address.lower() == ours:
            return Decision(self.name, f"sent from our own address {context.from_address}")
        return None


LOOP = Loop()
