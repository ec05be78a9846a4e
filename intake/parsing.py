"""How the daemon's configuration shapes parsing: limits, keyword rules, the number tag."""

from __future__ import annotations

import re
import string
from dataclasses import replace

from intake.config import ClassifySettings, Settings
from parsers.classify import DEFAULT_RULES, ClassifyRules
from parsers.options import ParseOptions


def number_tag_pattern(number_format: str) -> re.Pattern[str]:
    """The ``[OV-2026-000123]`` subject tag for the configured number format.

    Built from the same format the desk numbers with, so the two can never disagree.
    """
    parts = []
    for literal, field, spec, _ in string.Formatter().parse(number_format):
        parts.append(re.escape(literal))
        if field == "year":
            parts.append(r"\d{4}")
        elif field == "seq":
            width = re.match(r"0?(\d+)", spec or "")
            parts.append(rf"\d{{{width.group(1) if width else 1},}}")
    return re.compile(rf"\[\s*({''.join(parts)})\s*\]", re.IGNORECASE)


def classify_rules(section: ClassifySettings) -> ClassifyRules:
    lists = {
        name: value
        for name in (
            "problem",
            "incident",
            "service_request",
            "development_request",
            "urgent",
            "critical",
        )
        if (value := getattr(section, name)) is not None
    }
    tags = tuple(section.tags.items()) if section.tags is not None else DEFAULT_RULES.tags
    return replace(DEFAULT_RULES, **lists, tags=tags, default_kind=section.default_kind)


def parse_options(settings: Settings) -> ParseOptions:
    return ParseOptions(
        max_screenshot_bytes=settings.parsing.max_screenshot_bytes,
        max_screenshots=settings.parsing.max_screenshots,
        number_pattern=number_tag_pattern(settings.desk.number_format),
        classify=classify_rules(settings.classify),
    )
