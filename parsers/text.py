"""Text stage: HTML to readable text, HTML sanitized for display, inline PGP armour.

The HTML-to-text converter is a linear tokenizer of our own rather than a full HTML
parser: mail HTML is read for its paragraphs, lists, quotes and links, and a tree builder
costs quadratic time on deep nesting (html5ever needs over a second for 20,000 nested
``<li>``). nh3 does the sanitizing for display, but only for HTML whose size and nesting
keep it inside the time bound.
"""

from __future__ import annotations

import html as htmllib
import re

import nh3

MAX_HTML_CHARS = 2_000_000
MAX_SANITIZE_DEPTH = 3000
MAX_TAGS = 20_000
_ANY_TAG = re.compile(r"<[^<>]{0,8000}>")

_TOKEN = re.compile(r"<!--|<(/?)([a-zA-Z][a-zA-Z0-9]{0,15})([^<>]{0,8000})>")
_ATTR = re.compile(r"""\b(href|src|alt)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.I)
_SPACES = re.compile(r"[ \t\r\n\f\u00a0\u200b]+")
_SKIP_CONTENT = frozenset({"script", "style", "head", "title", "xml", "template"})
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "pre", "dl",
                        "address", "figure", "center"})
_LINE = frozenset({"div", "tr", "dt", "dd", "section", "article", "header", "footer",
                   "main", "nav", "aside", "form", "fieldset", "caption", "thead", "tbody",
                   "o:p"})
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "col", "area", "base",
                   "wbr", "source", "embed", "param", "track"})
_TAG_NAME = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]{0,15})")
_BLANK_LINES = re.compile(r"\n{3,}")
_DISPLAY_SCHEMES = {"http", "https", "mailto", "cid", "tel", "ftp"}


class _Writer:
    """Accumulates lines with a quote prefix per blockquote level."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current: list[str] = []
        self.quote = 0
        self.pre = 0
        self.blank_wanted = 0

    def text(self, chunk: str) -> None:
        if not self.pre:
            chunk = _SPACES.sub(" ", chunk)
            if not self.current:
                chunk = chunk.lstrip(" ")
            elif self.current[-1].endswith(" ") and chunk.startswith(" "):
                chunk = chunk[1:]
            if not chunk:
                return
            self._open_line()
            self.current.append(chunk)
            return
        first = True
        for piece in chunk.split("\n"):
            if not first:
                self.newline(force=True)
            first = False
            if piece:
                self._open_line()
                self.current.append(piece)

    def raw(self, chunk: str) -> None:
        self._open_line()
        self.current.append(chunk)

    def _open_line(self) -> None:
        if self.blank_wanted and self.lines and not self.current:
            self.lines.append(("> " * self.quote).rstrip())
        self.blank_wanted = 0

    def newline(self, *, force: bool = False) -> None:
        if self.current or force:
            line = "".join(self.current).rstrip()
            prefix = "> " * self.quote
            self.lines.append((prefix + line) if line else prefix.rstrip())
            self.current = []

    def paragraph(self) -> None:
        self.newline()
        if self.lines and self.lines[-1].strip("> "):
            self.blank_wanted = 1

    def result(self) -> str:
        self.newline()
        out = "\n".join(self.lines).strip("\n")
        return _BLANK_LINES.sub("\n\n", out)


def html_to_text(html: str) -> str:
    """Readable text with paragraphs, lists (``- ``/``1. ``), quotes (``> ``) and links."""
    html = html[:MAX_HTML_CHARS]
    lower = html.lower()
    out = _Writer()
    lists: list[list[int]] = []
    link: tuple[str, int] | None = None
    pos = 0
    n = len(html)
    tags = 0
    while pos < n:
        tags += 1
        if tags > MAX_TAGS:
            # Beyond this, only the words: the structure of such HTML is not for reading.
            out.text(htmllib.unescape(_ANY_TAG.sub(" ", html[pos:])))
            break
        match = _TOKEN.search(html, pos)
        if match is None:
            out.text(htmllib.unescape(html[pos:]))
            break
        if match.start() > pos:
            out.text(htmllib.unescape(html[pos:match.start()]))
        if match.group(0) == "<!--":
            close = html.find("-->", match.end())
            pos = n if close < 0 else close + 3
            continue
        pos = match.end()
        closing, name, attrs = match.group(1) == "/", match.group(2).lower(), match.group(3)
        if name in _SKIP_CONTENT and not closing and not attrs.endswith("/"):
            pos = _skip_to(lower, name, pos, n)
            continue
        if name == "br":
            out.newline(force=True)
        elif name in _PARAGRAPH:
            out.paragraph()
            if name == "pre":
                out.pre += -1 if closing else 1
                out.pre = max(out.pre, 0)
        elif name in _LINE:
            out.newline()
        elif name == "blockquote":
            out.newline()
            out.quote = max(out.quote + (-1 if closing else 1), 0)
        elif name in ("ul", "ol"):
            out.newline()
            if closing:
                if lists:
                    lists.pop()
            elif len(lists) < 50:
                lists.append([1 if name == "ol" else 0])
        elif name == "li" and not closing:
            out.newline()
            depth = max(len(lists), 1)
            counter = lists[-1] if lists else [0]
            marker = f"{counter[0]}. " if counter[0] else "- "
            if counter[0]:
                counter[0] += 1
            out.raw("  " * (depth - 1) + marker)
        elif name in ("td", "th") and closing:
            out.text(" ")
        elif name == "hr":
            out.paragraph()
        elif name == "a":
            if closing and link is not None:
                href, start_len = link
                shown = "".join(out.current)[start_len:] if len(out.current) else ""
                if href and href.rstrip("/") not in shown and not (
                        href.startswith("mailto:") and href[7:] in shown):
                    out.text(f" ({href})" if shown.strip() else href)
                link = None
            elif not closing:
                target = _attr(attrs, "href")
                if target and target.lower().startswith(("http:", "https:", "mailto:", "ftp:")):
                    link = (target, len("".join(out.current)))
        elif name == "img" and not closing:
            src = _attr(attrs, "src") or ""
            alt = _attr(attrs, "alt") or ""
            if src.lower().startswith(("cid:", "data:")):
                out.text(f"[image: {alt}]" if alt else "[image]")
    return out.result()


def _skip_to(lower: str, name: str, pos: int, n: int) -> int:
    """Where the content of a skipped element ends. Unclosed, a script or style hides the
    rest (as in a browser); a head ends at the body; anything else hides nothing."""
    close = lower.find("</" + name, pos)
    if close >= 0:
        return close
    if name in ("script", "style"):
        return n
    if name == "head":
        body = lower.find("<body", pos)
        return body if body >= 0 else pos
    return pos


def _attr(attrs: str, wanted: str) -> str | None:
    for match in _ATTR.finditer(attrs):
        if match.group(1).lower() == wanted:
            value = match.group(2) or match.group(3) or match.group(4) or ""
            return htmllib.unescape(value).strip()
    return None


def nesting_depth(html: str, limit: int) -> int:
    """Deepest nesting of elements, counted up to ``limit`` (or over MAX_TAGS tags)."""
    depth = 0
    deepest = 0
    for count, match in enumerate(_TAG_NAME.finditer(html)):
        if deepest > limit or count > MAX_TAGS:
            return limit + 1
        name = match.group(2).lower()
        if name in _VOID:
            continue
        if match.group(1):
            depth = max(depth - 1, 0)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def sanitize_html(html: str) -> tuple[str | None, str | None]:
    """HTML safe to display (scripts, handlers and remote tricks removed), or None with the
    reason when the HTML is too big or too deeply nested to sanitize in bounded time."""
    if len(html) > MAX_HTML_CHARS:
        return None, f"HTML over {MAX_HTML_CHARS} characters not sanitized for display"
    if html.count("<") > MAX_SANITIZE_DEPTH and nesting_depth(
            html, MAX_SANITIZE_DEPTH) > MAX_SANITIZE_DEPTH:
        return None, (f"HTML nested deeper than {MAX_SANITIZE_DEPTH} (or over {MAX_TAGS} tags)"
                      " not sanitized for display")
    return nh3.clean(html, url_schemes=_DISPLAY_SCHEMES,
                     clean_content_tags={"script", "style", "title"}), None


def unflow(body: str, *, delsp: bool) -> str:
    """RFC 3676 format=flowed: join soft-broken lines (ending in a space) of one quote depth."""
    out: list[str] = []
    current: str | None = None
    current_depth = 0
    for line in body.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        if current is not None and depth == current_depth:
            current += content
        else:
            if current is not None:
                out.append(">" * current_depth + (" " if current_depth else "") + current)
            current, current_depth = content, depth
        if content.endswith(" ") and content.rstrip() != "--":
            if delsp:
                current = current[:-1]
            continue
        out.append(">" * depth + (" " if depth else "") + current)
        current = None
    if current is not None:
        out.append(">" * current_depth + (" " if current_depth else "") + current)
    return "\n".join(out)


_PGP_SIGNED = "-----BEGIN PGP SIGNED MESSAGE-----"


def strip_inline_pgp(body: str) -> tuple[str, bool]:
    """Clear-signed PGP text (RFC 4880 section 7) -> the signed text, armour removed."""
    start = body.find(_PGP_SIGNED)
    if start < 0:
        return body, False
    head = body[:start]
    rest = body[start + len(_PGP_SIGNED):]
    blank = rest.find("\n\n")
    rest = rest[blank + 2:] if blank >= 0 else rest
    signed, _, tail = rest.partition("-----BEGIN PGP SIGNATURE-----")
    end = tail.find("-----END PGP SIGNATURE-----")
    tail = tail[end + len("-----END PGP SIGNATURE-----"):] if end >= 0 else ""
    lines = [line[2:] if line.startswith("- ") else line for line in signed.split("\n")]
    return head + "\n".join(lines).rstrip("\n") + "\n" + tail.lstrip("\n"), True
