"""System parameters: OS, OmniVOX product and browser, each with its version and where it
was found: a labelled line (``Версия ОС: …``, ``Browser: …``), free text (``у нас Windows
10, хром 120``) or a pasted User-Agent string (read with ua-parser).

A labelled line wins over free text, free text over a User-Agent (which cannot tell
Windows 11 from 10); a version is taken only for the name that was chosen. A labelled
answer that names no known OS or browser (``ОС: не знаю``) is not taken: the field stays
missing, so the acknowledgement asks for it, and the answer is kept in ``unrecognised``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import ua_parser

MAX_SCAN_CHARS = 100_000
MAX_USER_AGENTS = 5

_V = r"(?:\s*(?:версии|версия|вер\.|version|ver\.?|v\.?))?[\s/]*"


@dataclass(frozen=True, slots=True)
class Found:
    value: str
    source: str


@dataclass(frozen=True, slots=True)
class Environment:
    os: Found | None = None
    os_version: Found | None = None
    product: Found | None = None
    product_version: Found | None = None
    browser: Found | None = None
    browser_version: Found | None = None
    # Labelled answers that named nothing known, e.g. "labelled line 'ОС:' says 'не знаю'".
    unrecognised: tuple[str, ...] = ()

    def missing(self) -> tuple[str, ...]:
        return tuple(name for name in FIELDS if getattr(self, name) is None)


FIELDS = ("os", "os_version", "product", "product_version", "browser", "browser_version")


_MACOS_NAMES = {"tahoe": "26", "sequoia": "15", "sonoma": "14", "ventura": "13",
                "monterey": "12", "big sur": "11", "catalina": "10.15", "mojave": "10.14",
                "high sierra": "10.13"}

# (name, pattern with a group ``v`` for the version); order breaks ties at one position.
_OS: list[tuple[str, str]] = [
    ("Windows", r"(?:microsoft\s+)?(?:windows|win(?=\s?(?:xp|7|8|10|11|server)\b)|виндоус\w*|"
                r"виндовс\w*|винд[аеуыо]\b|винде\b|виндов[сз]\w*)\s*"
                r"(?P<v>server\s*20(?:03|08|12|16|19|22|25)(?:\s*r2)?|xp|vista|8\.1|7|8|10|11)?"),
    ("macOS", r"(?:macos|mac\s?os(?:\s?x)?|os\s?x|макос|мак\s?ос)\s*"
              r"(?P<v>\d{1,2}(?:\.\d{1,2}){0,2}|(?:tahoe|sequoia|sonoma|ventura|monterey|"
              r"big\s+sur|catalina|mojave|high\s+sierra)(?:\s+\d{1,2}(?:\.\d{1,2}){0,2})?)?"),
    ("Ubuntu", r"(?:[kxl]?ubuntu|убунту)(?:\s*linux)?\s*(?P<v>\d{2}\.\d{2}(?:\.\d{1,2})?)?"),
    ("Debian", r"(?:debian|дебиан)(?:\s*gnu/linux)?\s*(?P<v>\d{1,2}(?:\.\d{1,2})?)?"),
    ("CentOS", r"(?:centos|центос)(?:\s*(?:linux|stream))?\s*(?P<v>\d{1,2}(?:\.\d{1,4}){0,2})?"),
    ("RHEL", r"(?:rhel|red\s?hat(?:\s*enterprise\s*linux)?(?:\s*server)?)\s*"
             r"(?P<v>\d{1,2}(?:\.\d{1,2})?)?"),
    ("Astra Linux", r"(?:astra(?:\s*linux)?|астр[аеуы](?:\s*линукс\w*)?)"
                    r"(?:\s*(?:se|ce|special\s+edition|common\s+edition|смоленск|орёл|орел))?"
                    r"\s*(?P<v>\d\.\d{1,2}(?:\.\d{1,3})?)?"),
    ("RED OS", r"(?:red\s?os|ред\s?ос|редос)\s*(?:м\s*)?(?P<v>\d{1,2}(?:\.\d{1,2})?)?"),
    ("ALT Linux", r"(?:alt\s*linux|альт\s*линукс\w*|(?:alt|альт)\s+(?:workstation|server|"
                  r"education|рабоч\w+\s+станци\w+|сервер\w*|образование))\s*(?:k\s*)?"
                  r"(?P<v>\d{1,2}(?:\.\d{1,2})?)?"),
    ("Android", r"(?:android|андроид\w*)\s*(?P<v>\d{1,2}(?:\.\d{1,2}){0,2})?"),
    ("iOS", r"(?:ipados|ios|айос)\s*(?P<v>\d{1,2}(?:\.\d{1,2}){0,2})?"),
]
_BROWSERS: list[tuple[str, str]] = [
    ("Yandex Browser", r"(?:yandex[\s.]?browser|yabrowser|яндекс[\s.]?браузер\w*|"
                       r"я\.?\s?браузер\w*)" + _V + r"(?P<v>\d{1,3}(?:\.\d{1,5}){0,3})?"),
    # A bare "edge" is an English word: taken only with a version after it.
    ("Edge", r"(?:microsoft\s+edge|edge(?=[\s/]*\d)|эдж\w*|едж\w*)" + _V
             + r"(?P<v>\d{2,3}(?:\.\d{1,5}){0,3})?"),
    ("Opera", r"(?:opera|опер[аеуы])(?:\s*gx)?" + _V + r"(?P<v>\d{2,3}(?:\.\d{1,5}){0,3})?"),
    ("Chrome", r"(?:google\s+)?(?:chrome|chromium|хром\w*|гугл\s?хром\w*)" + _V
               + r"(?P<v>\d{2,3}(?:\.\d{1,5}){0,3})?"),
    ("Firefox", r"(?:mozilla\s+)?(?:firefox|фаерфокс\w*|файрфокс\w*|ff(?=\s?\d))(?:\s*esr)?"
                + _V + r"(?P<v>\d{2,3}(?:\.\d{1,3}){0,2})?(?:esr)?"),
    ("Safari", r"(?:safari|сафари)" + _V + r"(?P<v>\d{1,2}(?:\.\d{1,2}){0,2})?"),
]
_PRODUCT_VERSION = r"(?P<v>\d{1,2}\.\d{1,3}(?:\.\d{1,5})?)"
# "Version 3.2.1 of AgentZone": the version before the name.
_VERSION_OF = (r"(?:version|версия|версии|вер\.?)\s*" + _PRODUCT_VERSION
               + r"\s+(?:of\s+|для\s+)?")
_OMNIVOX = r"(?:omni\s?vox|омни\s?вокс)\s*"
_PRODUCTS: list[tuple[str, str]] = [
    ("AgentZone", _VERSION_OF + f"(?:{_OMNIVOX})?" + r"(?:agent\s?zone|агент\s?зон\w*)"),
    ("Chat", _VERSION_OF + _OMNIVOX + r"(?:chat|чат\w*)"),
    ("AgentZone", r"(?:omni\s?vox\s*|омни\s?вокс\s*)?(?:agent\s?zone|агент\s?зон\w*)" + _V
                  + r"\s*" + _PRODUCT_VERSION + "?"),
    ("Chat", r"(?:omni\s?vox|омни\s?вокс)\s*(?:chat|чат\w*)" + _V + r"\s*"
             + _PRODUCT_VERSION + "?"),
    ("Chat", r"(?:chat|чат\w*)" + _V + r"\s+" + _PRODUCT_VERSION),
    ("", r"(?:omni\s?vox|омни\s?вокс)" + _V + r"\s*" + _PRODUCT_VERSION),
]

_OS_LABELS = (r"версия\s+ос|версия\s+операционной\s+системы|операционная\s+система|ос|"
              r"os\s+version|operating\s+system|os|платформа|platform")
_BROWSER_LABELS = r"версия\s+браузера|браузер|browser\s+version|browser|web\s+browser"
_PRODUCT_LABELS = (r"версия\s+omni\s?vox|omni\s?vox\s+version|версия\s+agent\s?zone|"
                   r"agent\s?zone\s+version|версия\s+chat|chat\s+version|версия\s+продукта|"
                   r"версия\s+по|версия\s+программы|product\s+version|software\s+version|"
                   r"продукт|product|omni\s?vox|agent\s?zone|версия|version")
_LABELLED = re.compile(
    rf"^[ \t>*•\-]*(?:(?P<os>{_OS_LABELS})|(?P<browser>{_BROWSER_LABELS})|"
    rf"(?P<product>{_PRODUCT_LABELS}))[ \t]*(?:\([^)\n]{{0,40}}\))?[ \t]*[:=—–][ \t]*"
    r"(?P<value>[^\n]{1,200})$",
    re.I | re.M)
_USER_AGENT = re.compile(r"Mozilla/5\.0 \([^()\n]{1,300}\)[^\n]{0,400}")
_ANY_VERSION = re.compile(r"\d{1,3}(?:\.\d{1,5}){0,3}")
_STRICT_VERSION = re.compile(r"(?<![\d.])\d{1,2}\.\d{1,3}(?:\.\d{1,5})?(?![\d.]*\d)")
_BARE_VERSION = re.compile(r"[vв]?\.?\s*\d{1,3}(?:\.\d{1,5}){0,3}\s*", re.I)


class _Finder:
    """One alternation of named patterns. It runs on lower-cased text without IGNORECASE,
    several times faster in ``re``, whenever lower-casing keeps the offsets."""

    def __init__(self, patterns: list[tuple[str, str]]) -> None:
        parts = [f"(?P<g{i}>{source.replace('(?P<v>', f'(?P<v{i}>')})"
                 for i, (_, source) in enumerate(patterns)]
        joined = r"(?<![\w.])(?:" + "|".join(parts) + r")(?![\w])"
        self.names = [name for name, _ in patterns]
        self.lower = re.compile(joined)
        self.folding = re.compile(joined, re.I)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        lowered = text.lower()
        if len(lowered) == len(text):
            return self.lower.finditer(lowered)
        return self.folding.finditer(text)


_OS_RE = _Finder(_OS)
_BROWSER_RE = _Finder(_BROWSERS)
_PRODUCT_RE = _Finder(_PRODUCTS)


@dataclass(frozen=True, slots=True)
class _Candidate:
    rank: int
    pos: int
    name: str
    version: str | None
    source: str


def _matches(finder: _Finder, text: str, rank: int, pos0: int,
             source: str | None) -> list[_Candidate]:
    out: list[_Candidate] = []
    for match in finder.finditer(text):
        index = int((match.lastgroup or "g0")[1:])
        version = match.group(f"v{index}")
        name = finder.names[index]
        if name == "Windows" and version:
            version = version.replace("server", "Server").replace("r2", "R2").replace(
                "xp", "XP").replace("vista", "Vista")
            version = re.sub(r"\s+", " ", version)
        if name == "macOS" and version and not version[0].isdigit():
            # "Sonoma 14.2": the number is more precise than the name.
            release, _, number = re.sub(r"\s+", " ", version.lower()).rpartition(" ")
            if number[:1].isdigit():
                version = number
            else:
                version = _MACOS_NAMES.get(f"{release} {number}".strip(), version)
        snippet = source or f"free text '{_snippet(text, match.start(), match.end())}'"
        out.append(_Candidate(rank, pos0 + match.start(), name, version, snippet))
    return out


def _snippet(text: str, start: int, end: int) -> str:
    left = text.rfind("\n", max(0, start - 30), start) + 1 or max(0, start - 30)
    right = text.find("\n", end, end + 30)
    right = min(end + 30, len(text)) if right < 0 else right
    return " ".join(text[max(left, start - 30):right].split())[:80]


def extract(text: str, subject: str = "") -> Environment:
    """Find the environment in the message text (the new text of a follow-up) and subject."""
    text = text[:MAX_SCAN_CHARS]
    os_c: list[_Candidate] = []
    br_c: list[_Candidate] = []
    pr_c: list[_Candidate] = []

    unrecognised: list[str] = []
    for match in _LABELLED.finditer(text):
        label = next(v for k, v in match.groupdict().items() if v and k != "value")
        source = f"labelled line '{label.strip()}:'"
        value = match.group("value").strip()
        pos = match.start()
        if match.group("os") or match.group("browser"):
            finder = _OS_RE if match.group("os") else _BROWSER_RE
            found = _matches(finder, value, 0, pos, source)
            if not found and _BARE_VERSION.fullmatch(value):
                # "Версия ОС: 11": a version for the OS named elsewhere, not a name.
                found = [_Candidate(0, pos, "", _first_version(value), source)]
            elif not found:
                unrecognised.append(f"{source} says {value[:60]!r}")
            (os_c if match.group("os") else br_c).extend(found)
        else:
            found = _matches(_PRODUCT_RE, value, 0, pos, source)
            label_product = _product_from_label(label)
            strict = _STRICT_VERSION.search(value)
            version = strict.group(0) if strict else None
            if not found:
                found = [_Candidate(0, pos, label_product, version, source)] if version else []
            elif version and not any(c.version for c in found):
                # "Версия OmniVOX: 4.1.2 (AgentZone)": the version stands before the name.
                found = [_Candidate(c.rank, c.pos, c.name, version, c.source) for c in found]
            pr_c += [c if c.name else _Candidate(0, c.pos, label_product, c.version, c.source)
                     for c in found]

    agents = list(_USER_AGENT.finditer(text))[:MAX_USER_AGENTS]
    free = _USER_AGENT.sub(lambda m: " " * len(m.group(0)), text) if agents else text
    chunks: list[tuple[str, int, str | None]] = [
        (free, 0, None), (subject[:1000], -1, f"subject '{subject[:80]}'")]
    for chunk, offset, src in chunks:
        if not chunk:
            continue
        os_c += _matches(_OS_RE, chunk, 1, offset, src)
        br_c += _matches(_BROWSER_RE, chunk, 1, offset, src)
        pr_c += _matches(_PRODUCT_RE, chunk, 1, offset, src)
    for match in agents:
        _user_agent(match.group(0), match.start(), os_c, br_c)

    os_name, os_version = _choose(os_c)
    browser, browser_version = _choose(br_c)
    product, product_version = _choose(pr_c, allow_unnamed_version=True)
    return Environment(os_name, os_version, product, product_version, browser, browser_version,
                       tuple(unrecognised))


def mentions_environment(text: str) -> bool:
    """Whether ``text`` names an OS, browser or product, or has a labelled system line."""
    text = text[:MAX_SCAN_CHARS]
    return _LABELLED.search(text) is not None or any(
        next(finder.finditer(text), None) is not None
        for finder in (_OS_RE, _BROWSER_RE, _PRODUCT_RE))


def _product_from_label(label: str) -> str:
    lowered = label.lower().replace(" ", "")
    if "agentzone" in lowered:
        return "AgentZone"
    if "chat" in lowered:
        return "Chat"
    return ""


def _first_version(value: str) -> str | None:
    match = _ANY_VERSION.search(value)
    return match.group(0) if match else None


_UA_BROWSERS = {"Chrome": "Chrome", "Chrome Mobile": "Chrome", "Chromium": "Chrome",
                "Chrome Mobile iOS": "Chrome", "Yandex Browser": "Yandex Browser",
                "Firefox": "Firefox", "Firefox Mobile": "Firefox", "Firefox iOS": "Firefox",
                "Edge": "Edge", "Edge Mobile": "Edge", "Safari": "Safari",
                "Mobile Safari": "Safari", "Opera": "Opera", "Opera Mobile": "Opera"}
_UA_OS = {"Windows": "Windows", "Mac OS X": "macOS", "Ubuntu": "Ubuntu", "Debian": "Debian",
          "CentOS": "CentOS", "Red Hat": "RHEL", "Android": "Android", "iOS": "iOS"}


def _user_agent(agent: str, pos: int, os_c: list[_Candidate], br_c: list[_Candidate]) -> None:
    result = ua_parser.parse(agent)
    source = f"user-agent '{agent[:60]}…'" if len(agent) > 60 else f"user-agent '{agent}'"
    ua = result.user_agent
    if ua is not None and ua.family in _UA_BROWSERS:
        version = ".".join(p for p in (ua.major, ua.minor, ua.patch, ua.patch_minor) if p)
        # ua-parser drops the fourth part of some (YaBrowser/24.1.0.0): take it as written.
        written = re.search(rf"/({re.escape(version)}(?:\.\d{{1,6}}){{0,3}})\b", agent)
        version = written.group(1) if version and written else version
        br_c.append(_Candidate(2, pos, _UA_BROWSERS[ua.family], version or None, source))
    os = result.os
    if os is not None and os.family in _UA_OS:
        parts = [p for p in (os.major, os.minor, os.patch) if p]
        version = ".".join(parts) if os.family != "Windows" else (os.major or "")
        os_c.append(_Candidate(2, pos, _UA_OS[os.family], version or None, source))


def _choose(candidates: list[_Candidate], *, allow_unnamed_version: bool = False
            ) -> tuple[Found | None, Found | None]:
    if not candidates:
        return None, None
    ordered = sorted(candidates, key=lambda c: (c.rank, c.pos))
    named = [c for c in ordered if c.name]
    if not named:
        if allow_unnamed_version:
            versioned = next((c for c in ordered if c.version), None)
            if versioned is not None and versioned.version is not None:
                return None, Found(versioned.version, versioned.source)
        return None, None
    best = named[0]
    version = next((c for c in ordered if c.version and c.name in (best.name, "")), None)
    name = Found(best.name, best.source)
    if version is None or version.version is None:
        return name, None
    return name, Found(version.version, version.source)
