"""What a customer's reply says of a solution: a confirmation, an objection, or neither.

When a request is resolved the customer is asked to write "confirmed" ("подтверждаю") if
the problem is solved, and otherwise what is still wrong (notifiers' ``status_resolved``
templates). The reply is read piece by piece (clauses between punctuation and line ends):

- it confirms when one piece is the confirmation itself ("Confirmed", "Yes, I confirm",
  "Подтверждаю решение") and every other piece is a bare greeting ("Добрый день,
  коллеги!"), thanks, agreement, "it works", a sign-off, or the sender's own name on the
  last lines; and nothing is asked, answered inside the quote, or added after the
  signature (a P.S., something wrong);
- it objects when it says that something is still wrong ("не", "still", "error" …) and
  confirms nothing;
- anything else acknowledges ("Thanks!", "OK", a question, a note, a confirmation with
  a complaint beside it): it changes nothing, and the staff read it.

A ticket closed by mistake loses the customer's problem, so a confirmation is only what
cannot be read otherwise; a reply that is not clear is left to the staff.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

# Only the start of a reply is read for a verdict; the rest is the customer's argument.
MAX_SCAN_CHARS = 2_000
# How much of the quote is looked through for answers written inside it.
MAX_QUOTE_CHARS = 200_000
# A greeting names at most this many words after it ("Hi John", "Dear support team").
GREETING_WORDS = 2


class Verdict(enum.StrEnum):
    CONFIRMS = "confirms"
    OBJECTS = "objects"
    ACKNOWLEDGES = "acknowledges"


def _phrases(*patterns: str) -> re.Pattern[str]:
    """A piece that is wholly one of ``patterns`` (case-insensitive, spaces as written)."""
    return re.compile(r"(?:" + "|".join(patterns) + r")", re.IGNORECASE)


_GREETING = _phrases(
    r"hello|hi|hey|dear|good\s+(?:morning|afternoon|evening|day)|greetings",
    r"здравствуйте|здравствуй|добрый\s+(?:день|вечер)|доброе\s+утро|доброго\s+времени\s+суток",
    r"привет|уважаем\w*",
)
# Whom a greeting addresses, in a piece of its own: "Добрый день, коллеги!".
_ADDRESS = _phrases(
    r"(?:dear\s+)?(?:colleagues|team|support(?:\s+team)?|all|everyone|guys)",
    r"(?:уважаемые\s+)?(?:коллеги|друзья|команда(?:\s+поддержки)?|поддержка)",
)
_SPLIT = re.compile(r"[\n.!?;:,…]+")
# Pieces without words that only separate ("--", "==="); any other (":(", "👎") says
# something this reading cannot.
_SEPARATOR = re.compile(r"[-_=*~#\s]*")
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
    r"no\s+(?:further\s+action\s+(?:is\s+)?needed|rush|hurry|worries)",
    r"(?:best\s+|kind\s+)?regards|sincerely|best",
    r"(?:большое\s+)?спасибо(?:\s+(?:большое|вам|за\s+помощь|за\s+решение))?",
    r"благодар(?:ю|им)(?:\s+(?:вас|за\s+помощь))?|спс|да|ок|отлично|хорошо|супер",
    r"(?:вс[её]\s+)?(?:работает|заработало)(?:\s+(?:нормально|хорошо|отлично|теперь))?",
    r"(?:теперь\s+)?вс[её]\s+(?:работает|в\s+порядке|хорошо|отлично)",
    r"(?:проблема|ошибка|вопрос)\s+(?:решена|решён|решен|устранена|исправлена|закрыт)",
    r"(?:ошибок|проблем|вопросов)\s+(?:больше\s+)?нет|не\s+срочно",
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


# What a confirmation is of, when it is of something said after it.
_THAT = re.compile(r"(?:that|что|чтобы)\b", re.IGNORECASE)
# Something added after the signature.
_POSTSCRIPT = re.compile(r"^\s*(?:p\.?\s*s\b|п\.?\s*с\b)", re.IGNORECASE | re.MULTILINE)


class _Piece(NamedTuple):
    text: str
    # Alone on its line, as a signature's name is.
    own_line: bool


def verdict(
    new_text: str, signature: str = "", *, quoted: str = "", sender_name: str = ""
) -> Verdict | None:
    """The verdict of a reply to a resolved request: its new text (or, when that is
    empty, the first line of its signature, where the reply splitter puts a lone
    "Спасибо!"), the rest of its signature, the quote it answers, and the sender's name
    as the From header gives it. None when the customer wrote nothing."""
    text = new_text.strip()
    if not text:
        text = signature.strip().split("\n", 1)[0]
        signature = ""
    whole = len(text) <= MAX_SCAN_CHARS
    text = text[:MAX_SCAN_CHARS]
    pieces = _after_greeting(_pieces(text))
    if not pieces:
        return None
    said = [piece for piece in pieces if _WORD.search(piece.text)]
    names = _trailing_names(said, sender_name)
    saying = [piece for piece in said[: len(said) - names] if not _BESIDE.fullmatch(piece.text)]
    confirmations = [
        piece
        for index, piece in enumerate(saying)
        # "Подтверждаю, что ошибка осталась": what is confirmed is what follows.
        if _CONFIRMATION.fullmatch(piece.text)
        and not (index + 1 < len(saying) and _THAT.match(saying[index + 1].text))
    ]
    confirms = bool(confirmations)
    wrong = any(_STILL_WRONG.search(piece.text) for piece in saying)
    if (
        confirms
        and whole
        and not wrong
        and "?" not in text
        and len(confirmations) == len(saying)
        and all(_WORD.search(piece.text) or _SEPARATOR.fullmatch(piece.text) for piece in pieces)
        and not _STILL_WRONG.search(signature)
        and not _POSTSCRIPT.search(signature)
        and not _answers_inside(quoted)
    ):
        return Verdict.CONFIRMS
    if wrong and not confirms:
        return Verdict.OBJECTS
    if not said:
        return None
    return Verdict.ACKNOWLEDGES


def _answers_inside(quoted: str) -> bool:
    """Whether the customer wrote inside the quote: a line of their own after a quoted one."""
    seen_quote = False
    for line in quoted[:MAX_QUOTE_CHARS].splitlines():
        if line.startswith(">"):
            seen_quote = True
        elif seen_quote and line.strip():
            return True
    return False


def _pieces(text: str) -> list[_Piece]:
    pieces = []
    start = 0
    for separator in [*_SPLIT.finditer(text), None]:
        end = separator.start() if separator is not None else len(text)
        piece = text[start:end]
        if piece.strip():
            pieces.append(_Piece(piece.strip(), _own_line(text, start, end)))
        if separator is not None:
            start = separator.end()
    return pieces


def _own_line(text: str, start: int, end: int) -> bool:
    before = text[text.rfind("\n", 0, start) + 1 : start]
    line_end = text.find("\n", end)
    after = text[end : len(text) if line_end < 0 else line_end]
    return not before.strip() and not _WORD.search(after)


def _after_greeting(pieces: list[_Piece]) -> list[_Piece]:
    """The pieces after a bare greeting and whom it addresses."""
    if not pieces or not _greeting(pieces[0].text):
        return pieces
    first = 1
    while first < len(pieces) and _ADDRESS.fullmatch(pieces[first].text):
        first += 1
    return pieces[first:]


def _greeting(piece: str) -> bool:
    """A greeting and whom it names: "Hi John", "Dear support team", "Добрый день коллеги"."""
    found = _GREETING.match(piece)
    if found is None:
        return False
    rest = piece[found.end() :].split()
    return (not rest or piece[found.end()].isspace()) and len(rest) <= GREETING_WORDS and all(
        word[0].isupper() or _ADDRESS.fullmatch(word) for word in rest
    )


def _trailing_names(pieces: list[_Piece], sender_name: str) -> int:
    """How many of the last pieces are the sender's name, each alone on its line."""
    known = {word.casefold() for word in _WORD.findall(sender_name)}
    count = 0
    for piece in reversed(pieces):
        words = _WORD.findall(piece.text)
        if not (piece.own_line and words and all(w.casefold() in known for w in words)):
            break
        count += 1
    return count
