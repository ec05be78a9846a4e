"""Kind and priority of a request from its subject and new text, Russian and English.

An explicit tag in the subject or at the top of the text wins; otherwise keyword rules
score each kind. The rules are plain data (tuples of regex sources) so that the daemon's
configuration can replace them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

KINDS = ("incident", "problem", "service_request", "development_request")
PRIORITIES = ("P1", "P2", "P3", "P4")
MAX_SCAN_CHARS = 20_000


@dataclass(frozen=True, slots=True)
class ClassifyRules:
    """Keyword rules; every string is a case-insensitive regex source."""

    problem: tuple[str, ...] = (
        r"все операторы", r"у всех операторов", r"ни у кого", r"никто не может",
        r"весь колл-?центр", r"колл-?центр (?:стоит|встал|не работает)",
        r"работа (?:остановлена|встала|парализована)", r"не можем работать",
        r"невозможно работать", r"полностью не работает", r"не запускается", r"недоступ\w*",
        r"упал[аио]?\b", r"\bлежит\b", r"all (?:operators|agents|users)", r"nobody can",
        r"no one can", r"(?:whole|entire) (?:call ?cent(?:er|re)|contact ?cent(?:er|re))",
        r"work (?:has )?stopped", r"completely down", r"\bis down\b", r"\boutage\b",
        r"cannot work", r"can't work", r"unusable", r"does(?: not|n't) start",
    )
    incident: tuple[str, ...] = (
        r"ошибк\w*", r"не работает", r"не открывается", r"не загружается", r"не грузится",
        r"завис\w*", r"вылета\w*", r"сбо[йяи]\w*", r"не могу", r"не удаётся", r"не удается",
        r"некорректно", r"\berror\b", r"not working", r"does(?: not|n't) work", r"\bfails?\b",
        r"\bfailed\b", r"\bcrash\w*", r"freez\w*", r"\bbroken\b", r"\bbug\b", r"cannot",
        r"can't", r"unable to",
    )
    service_request: tuple[str, ...] = (
        r"подскажите", r"как (?:настроить|сделать|добавить|изменить|подключить)",
        r"\bвопрос\w*", r"консультац\w*", r"можно ли", r"где (?:найти|посмотреть)",
        r"документаци\w*", r"лицензи\w*", r"предоставьте", r"нужен доступ",
        r"how (?:to|do i|can i)", r"\bquestion\b", r"is it possible", r"could you (?:tell|explain)",
        r"documentation", r"\blicen[cs]e", r"please send", r"need access",
    )
    development_request: tuple[str, ...] = (
        r"доработ\w*", r"добавьте", r"добавить возможность", r"хотелось бы",
        r"предлагаем", r"предложение", r"новая функци\w*", r"новую функци\w*", r"пожелани\w*",
        r"feature request", r"enhancement", r"please add", r"would be (?:nice|great)",
        r"new feature", r"\bsuggestion\b", r"it would be helpful",
    )
    tags: tuple[tuple[str, str], ...] = (
        (r"\[\s*(?:problem|проблема)\s*\]", "problem"),
        (r"\[\s*(?:incident|инцидент)\s*\]", "incident"),
        (r"\[\s*(?:service request|request|запрос|консультация|вопрос)\s*\]",
         "service_request"),
        (r"\[\s*(?:development|development request|enhancement|feature|доработка)\s*\]",
         "development_request"),
    )
    kind_priority: tuple[tuple[str, str], ...] = (
        ("problem", "P1"), ("incident", "P2"), ("service_request", "P3"),
        ("development_request", "P4"),
    )
    # Words of urgency only: "не работает" says what is broken, not how soon it matters.
    urgent: tuple[str, ...] = (
        r"срочно", r"\burgent\w*", r"\basap\b", r"критично", r"критическ\w*", r"critical",
        r"горит",
    )
    critical: tuple[str, ...] = (
        r"весь колл-?центр", r"все операторы", r"у всех операторов", r"all operators",
        r"all agents", r"(?:whole|entire) call ?cent(?:er|re)", r"production (?:is )?down",
        r"колл-?центр (?:стоит|встал)",
    )
    default_kind: str = "incident"

    def __post_init__(self) -> None:
        # Bad configuration fails when it is loaded, not on the first mail.
        kinds = [self.default_kind] + [kind for _, kind in self.tags] + [
            kind for kind, _ in self.kind_priority]
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        for kind, priority in self.kind_priority:
            if priority not in PRIORITIES:
                raise ValueError(f"unknown priority {priority!r} for {kind}")
        sources = (self.problem + self.incident + self.service_request
                   + self.development_request + self.urgent + self.critical
                   + tuple(source for source, _ in self.tags))
        for source in sources:
            try:
                re.compile(source)
            except re.error as exc:
                raise ValueError(f"invalid classification pattern {source!r}: {exc}") from exc


DEFAULT_RULES = ClassifyRules()


@dataclass(frozen=True, slots=True)
class Classification:
    kind: str
    kind_reason: str
    priority: str
    priority_reason: str


def _literal_first(source: str) -> str:
    r"""``\bword`` -> ``w(?<!\w\w)ord``: the same matches, but ``re`` can scan for the
    literal first letter instead of testing a word boundary at every position (8x faster)."""
    if (len(source) > 3 and source.startswith("\\b") and source[2].isalnum()
            and source[3] not in "*+?{"):
        return source[2] + r"(?<!\w\w)" + source[3:]
    return source


class _Keywords:
    """Keyword patterns. Lower-case ones run without IGNORECASE on lower-cased text: ``re``
    then scans for their literal prefix, three times faster than case-folding each
    character. Patterns are searched one by one, which in ``re`` beats one alternation."""

    def __init__(self, sources: tuple[str, ...]) -> None:
        self.patterns = tuple(
            (re.compile(_literal_first(s)), True) if s == s.lower()
            else (re.compile(s, re.I), False)
            for s in sources)

    def _search(self, text: str, lowered: str) -> list[re.Match[str]]:
        return [m for p, low in self.patterns if (m := p.search(lowered if low else text))]

    def hits(self, text: str, lowered: str) -> list[str]:
        """The words matched, one per pattern."""
        return [m.group(0) for m in self._search(text, lowered)]

    def first(self, text: str, lowered: str) -> str | None:
        found = self._search(text, lowered)
        return min(found, key=lambda m: m.start()).group(0) if found else None


@dataclass(frozen=True, slots=True)
class _Compiled:
    kinds: tuple[tuple[str, _Keywords], ...]
    tags: tuple[tuple[re.Pattern[str], str], ...]
    urgent: _Keywords
    critical: _Keywords


@lru_cache(maxsize=16)
def _compile(rules: ClassifyRules) -> _Compiled:
    return _Compiled(
        kinds=(("problem", _Keywords(rules.problem)), ("incident", _Keywords(rules.incident)),
               ("development_request", _Keywords(rules.development_request)),
               ("service_request", _Keywords(rules.service_request))),
        tags=tuple((re.compile(s, re.I), kind) for s, kind in rules.tags),
        urgent=_Keywords(rules.urgent),
        critical=_Keywords(rules.critical),
    )


def classify(subject: str, text: str, rules: ClassifyRules = DEFAULT_RULES) -> Classification:
    compiled = _compile(rules)
    text = text[:MAX_SCAN_CHARS]
    both = f"{subject}\n{text}"
    lowered = both.lower()
    kind, kind_reason = _kind(compiled, rules, subject, text, both, lowered)
    mapping = dict(rules.kind_priority)
    priority = mapping.get(kind, "P3")
    priority_reason = f"default for {kind}"
    if kind == "development_request":
        # An enhancement waits for a release whatever words it uses ("all operators").
        return Classification(kind, kind_reason, priority, priority_reason)
    breakdown = kind in ("incident", "problem")
    critical = compiled.critical.first(both, lowered) if breakdown else None
    urgent = compiled.urgent.first(both, lowered) if critical is None else None
    if critical is not None and priority != "P1":
        priority, priority_reason = "P1", f"critical hint '{critical}'"
    elif urgent is not None:
        # Urgency moves a request up one step but not to P1: P1 is for work that has
        # stopped (a problem, or a critical hint about the whole centre). A question may
        # become P2 at most.
        raised = PRIORITIES[max(PRIORITIES.index(priority) - 1, 1)]
        if raised != priority and PRIORITIES.index(raised) < PRIORITIES.index(priority):
            priority, priority_reason = raised, f"urgency hint '{urgent}'"
    return Classification(kind, kind_reason, priority, priority_reason)


def _kind(compiled: _Compiled, rules: ClassifyRules, subject: str, text: str,
          both: str, lowered: str) -> tuple[str, str]:
    head = f"{subject}\n{text[:500]}"
    for pattern, kind in compiled.tags:
        match = pattern.search(head)
        if match:
            return kind, f"explicit tag {match.group(0)}"
    best: tuple[int, str, str] | None = None
    for kind, keywords in compiled.kinds:
        hits = keywords.hits(both, lowered)
        # A stopped call centre outweighs the error messages that come with it.
        score = len(hits) * (2 if kind == "problem" else 1)
        if hits and (best is None or score > best[0]):
            best = (score, kind, ", ".join(f"'{h}'" for h in hits[:3]))
    if best is None:
        return rules.default_kind, "no keyword matched; default kind"
    return best[1], f"keywords {best[2]}"
