"""What a customer's reply says of a solution: a confirmation, an objection, or neither.

When a request is resolved the customer is asked to write "confirmed" ("подтверждаю") if
the problem is solved, and otherwise what is still wrong (notifiers' ``status_resolved``
templates). A reply confirms when it starts with the confirmation, after a greeting and an
optional "yes" / "I" / "we" ("Добрый день! Подтверждаю.", "Yes, confirmed, thank you"), or
when it is short, names nothing wrong and confirms ("Thank you, everything works, I
confirm"). An objection, which the regulation wants argued, says what is still wrong or
says more than a few words. A short reply that does neither ("Thanks!", "OK", "Спасибо")
acknowledges: it changes nothing, and the staff read it.

Strict on both sides: a ticket closed by mistake loses the customer's problem, and one
reopened by a "thank you" is work for nobody; what is not clear is left to the staff.
"""

from __future__ import annotations

import enum
import re

# Only the start of a reply is read for a verdict; the rest is the customer's argument.
MAX_SCAN_CHARS = 2_000
# A reply that only acknowledges is short; a longer one argues, which is an objection.
SHORT_WORDS = 12


class Verdict(enum.StrEnum):
    CONFIRMS = "confirms"
    OBJECTS = "objects"
    ACKNOWLEDGES = "acknowledges"


_GREETING = re.compile(
    r"""(?:hello|hi|hey|dear|good\ (?:morning|afternoon|evening|day)|greetings
        |здравствуйте|здравствуй|добрый\ (?:день|вечер)|доброе\ утро|доброго\ времени
        |привет|уважаем\w*)\b""",
    re.IGNORECASE | re.VERBOSE,
)
# A reply read piece by piece: a greeting, and what addresses us after it ("коллеги"),
# come before what the customer says.
_PIECE = re.compile(r"[^\n.!?;:,]+[\n.!?;:,]*")
ADDRESS_WORDS = 3
_CONFIRMATION = r"""(?:confirm(?:ed|ing)?|hereby\ confirm
    |подтвержда(?:ю|ем)|подтвержд(?:ено|ена|ён|ен)|подтвердил[аи]?|подтверждение)
    \b(?!\s*\?)"""
# "Confirmed", "I confirm", "yes, we confirm", "подтверждаю", "да, подтверждаем".
_CONFIRMS = re.compile(
    r"^(?:(?:yes|yep|да|ок|ok|okay)\b[\s,.!-]*)?(?:(?:i|we|я|мы)\s+)?" + _CONFIRMATION,
    re.IGNORECASE | re.VERBOSE,
)
_CONFIRMS_ANYWHERE = re.compile(r"\b" + _CONFIRMATION, re.IGNORECASE | re.VERBOSE)
_THANKS = re.compile(
    r"\b(?:thanks?|thank\s+you|thx|ty|cheers|спасибо|благодар\w*|спс)\b", re.IGNORECASE
)
# Words that say something is still wrong.
_STILL_WRONG = re.compile(
    r"""\b(?:not|no|still|but|again|however|error|fail\w*|problem|issue|wrong
        |не|нет|но|однако|ещё|еще|опять|снова|ошибк\w*|проблем\w*)\b|n't\b""",
    re.IGNORECASE | re.VERBOSE,
)
_WORD = re.compile(r"\w+")


def verdict(new_text: str, signature: str = "") -> Verdict | None:
    """The verdict of a reply to a resolved request, from its new text (and its signature,
    where a sign-off such as "Спасибо!" is put when nothing precedes it); None when the
    customer wrote nothing."""
    text = new_text.strip()[:MAX_SCAN_CHARS] or signature.strip()[:MAX_SCAN_CHARS]
    said = _after_greeting(text)
    if _CONFIRMS.match(said):
        return Verdict.CONFIRMS
    if not _WORD.search(said):
        return None
    if _STILL_WRONG.search(said) is not None or len(_WORD.findall(said)) > SHORT_WORDS:
        return Verdict.OBJECTS
    # Short, and nothing wrong: "Thank you, confirmed", "Everything works, I confirm".
    if _CONFIRMS_ANYWHERE.search(said):
        return Verdict.CONFIRMS
    return Verdict.ACKNOWLEDGES


def _after_greeting(text: str) -> str:
    pieces = _PIECE.findall(text)
    if not pieces or not _GREETING.match(pieces[0].lstrip()):
        return text
    first = 1
    while first < len(pieces) and _addresses_us(pieces[first]):
        first += 1
    return "".join(pieces[first:]).lstrip()


def _addresses_us(piece: str) -> bool:
    """A short piece after a greeting that says nothing yet: "коллеги", "support team"."""
    return (
        len(_WORD.findall(piece)) <= ADDRESS_WORDS
        and not _CONFIRMS.match(piece.lstrip())
        and not _THANKS.search(piece)
        and not _STILL_WRONG.search(piece)
    )

