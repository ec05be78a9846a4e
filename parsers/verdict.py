"""What a customer's reply says of a solution: a confirmation, an objection, or neither.

When a request is resolved the customer is asked to write "confirmed" ("подтверждаю") if
the problem is solved, and otherwise what is still wrong (notifiers' ``status_resolved``
templates). The reply is read piece by piece (clauses between punctuation and line ends),
after a greeting and what addresses us ("Добрый день, коллеги!"):

- it confirms when one piece is the confirmation itself ("Confirmed", "Yes, I confirm",
  "Подтверждаю решение") and every other piece only thanks, agrees, says that it works, or
  signs ("Подтверждаю, всё работает, спасибо! Иван Петров"), and nothing is asked;
- it objects when, besides that, something is still wrong ("не", "still", "error" …);
- anything else acknowledges ("Thanks!", "OK", a question, a long note): it changes
  nothing, and the staff read it.

A ticket closed by mistake loses the customer's problem, so a confirmation is only what
cannot be read otherwise; a reply that is not clear is left to the staff.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

# Only the start of a reply is read for a verdict; the rest is the customer's argument.
MAX_SCAN_CHARS = 2_000
# A greeting's address ("коллеги", "support team") is at most this many words.
ADDRESS_WORDS = 3
# A signature's name line ("Иван Петров", "J. Smith") is at most this many words.
NAME_WORDS = 3


class Verdict(enum.StrEnum):
    CONFIRMS = "confirms"
    OBJECTS = "objects"
    ACKNOWLEDGES = "acknowledges"


def _phrases(*patterns: str) -> re.Pattern[str]:
    """A piece that is wholly one of ``patterns`` (case-insensitive, spaces as written)."""
    return re.compile(r"(?:" + "|".join(patterns) + r")", re.IGNORECASE)


_GREETING = re.compile(
    r"""(?:hello|hi|hey|dear|good\ (?:morning|afternoon|evening|day)|greetings
        |здравствуйте|здравствуй|добрый\ (?:день|вечер)|доброе\ утро|доброго\ времени
        |привет|уважаем\w*)\b""",
    re.IGNORECASE | re.VERBOSE,
)
_PIECE = re.compile(r"[^\n.!?;:,…]+")
_WORD = re.compile(r"\w+")
# The confirmation, and nothing else in its piece.
_CONFIRMATION = _phrases(
    r"(?:(?:yes|yep|ok|okay|да|ок)\s+)?(?:(?:i|we)\s+)?(?:hereby\s+)?"
    r"(?:confirm(?:ed)?|confirm\s+(?:it|this|the\s+(?:solution|fix)))",
    r"(?:(?:да|ок)\s+)?(?:(?:я|мы)\s+)?(?:настоящим\s+)?"
    r"(?:подтвержда(?:ю|ем)|подтвержден[оа]|подтверждён|подтверждение)"
    r"(?:\s+(?:решение|это|выполнение|закрытие(?:\s+заявки)?))?",
)
# Pieces that may stand beside a confirmation: thanks, agreement, "it works", a sign-off.
_BESIDE = _phrases(
    r"(?:(?:many|big)\s+)?thanks?(?:\s+(?:you|a\s+lot))?(?:\s+(?:very\s+much|so\s+much))?",
    r"thx|cheers|yes|yep|ok|okay|great|perfect|excellent|all\s+good",
    r"(?:everything|all|it)\s+(?:works|is\s+working)(?:\s+(?:now|fine|again|well))?",
    r"(?:the\s+)?(?:problem|issue)\s+(?:is\s+)?(?:solved|resolved|fixed)",
    r"no\s+(?:problem|problems|more\s+(?:errors|problems)|(?:further|more)\s+questions)",
    r"(?:best\s+|kind\s+)?regards|sincerely|best",
    r"(?:большое\s+)?спасибо(?:\s+(?:большое|вам|за\s+помощь|за\s+решение))?",
    r"благодар(?:ю|им)(?:\s+(?:вас|за\s+помощь))?|спс|да|ок|отлично|хорошо|супер",
    r"(?:вс[её]\s+)?(?:работает|заработало)(?:\s+(?:нормально|хорошо|отлично|теперь))?",
    r"(?:теперь\s+)?вс[её]\s+(?:работает|в\s+порядке|хорошо|отлично)",
    r"(?:проблема|ошибка|вопрос)\s+(?:решена|решён|решен|устранена|исправлена|закрыт)",
    r"(?:ошибок|проблем|вопросов)\s+(?:больше\s+)?нет",
    r"с\s+уважением|всего\s+доброго|хорошего\s+дня",
)
# Something is still wrong, or the confirmation is denied or partial. (A confirmation put
# off, "tomorrow", is not a confirmation, but nothing is wrong in it either.)
_STILL_WRONG = re.compile(
    r"""\b(?:not|no|nope|never|cannot|cant|dont|doesnt|isnt|wont|unable|still|again|but
        |however|except|partly|partially|error\w*|fail\w*|problem\w*|issue\w*|wrong
        |broken|crash\w*|bug\w*
        |не|нет|ни|но|однако|кроме|ещё|еще|опять|снова|частично
        |ошибк\w*|проблем\w*|сбо[йяи]\w*|пада\w*|пропал\w*)\b|n't\b""",
    re.IGNORECASE | re.VERBOSE,
)


class _Piece(NamedTuple):
    text: str
    # Alone on its line, as a signature's name is.
    own_line: bool


def verdict(new_text: str, signature: str = "") -> Verdict | None:
    """The verdict of a reply to a resolved request, from its new text (or, when that is
    empty, the first line of its signature, where the reply splitter puts a lone
    "Спасибо!"); None when the customer wrote nothing."""
    text = new_text.strip()[:MAX_SCAN_CHARS]
    if not text:
        text = signature.strip().split("\n", 1)[0][:MAX_SCAN_CHARS]
    pieces = _after_greeting(
        [
            _Piece(found.group().strip(), _own_line(text, found.start(), found.end()))
            for found in _PIECE.finditer(text)
            if _WORD.search(found.group())
        ]
    )
    if not pieces:
        return None
    saying = [piece for piece in pieces if not _BESIDE.fullmatch(piece.text)]
    confirmations = [piece for piece in saying if _CONFIRMATION.fullmatch(piece.text)]
    if (
        confirmations
        and "?" not in text
        and all(piece in confirmations or _name(piece) for piece in saying)
    ):
        return Verdict.CONFIRMS
    if any(_STILL_WRONG.search(piece.text) for piece in saying):
        return Verdict.OBJECTS
    return Verdict.ACKNOWLEDGES


def _own_line(text: str, start: int, end: int) -> bool:
    before = text[text.rfind("\n", 0, start) + 1 : start]
    line_end = text.find("\n", end)
    after = text[end : len(text) if line_end < 0 else line_end]
    return not before.strip() and not _WORD.search(after)


def _after_greeting(pieces: list[_Piece]) -> list[_Piece]:
    if not pieces or not _GREETING.match(pieces[0].text):
        return pieces
    first = 1
    while first < len(pieces) and _addresses_us(pieces[first].text):
        first += 1
    return pieces[first:]


def _addresses_us(piece: str) -> bool:
    """A short piece after a greeting that says nothing yet: "коллеги", "support team"."""
    return (
        len(_WORD.findall(piece)) <= ADDRESS_WORDS
        and not _CONFIRMATION.fullmatch(piece)
        and not _BESIDE.fullmatch(piece)
        and not _STILL_WRONG.search(piece)
    )


def _name(piece: _Piece) -> bool:
    """A signature's name, alone on its line: a few capitalised words ("Иван Петров")."""
    words = piece.text.split()
    return (
        piece.own_line
        and 0 < len(words) <= NAME_WORDS
        and all(word[0].isupper() and word.replace("-", "").isalpha() for word in words)
        and not _STILL_WRONG.search(piece.text)
    )
