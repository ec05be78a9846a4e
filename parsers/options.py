"""What the daemon's configuration can change about parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from parsers.classify import DEFAULT_RULES, ClassifyRules

DEFAULT_NUMBER_PREFIX = "OV"


@dataclass(frozen=True, slots=True)
class ParseOptions:
    max_screenshot_bytes: int = 10 * 1024 * 1024
    max_screenshots: int = 20
    # The desk's number format is configurable: give the prefix of ``OV-2026-000123``, or a
    # compiled pattern whose first group (or whole match) is the number.
    number_prefix: str = DEFAULT_NUMBER_PREFIX
    number_pattern: re.Pattern[str] | None = None
    classify: ClassifyRules = field(default=DEFAULT_RULES)

    def __post_init__(self) -> None:
        if self.max_screenshot_bytes <= 0 or self.max_screenshots < 0:
            raise ValueError("screenshot limits must be positive")
        if self.number_pattern is None and not self.number_prefix.strip():
            raise ValueError("a registration number prefix or pattern is required")

    def number_regex(self) -> re.Pattern[str]:
        if self.number_pattern is not None:
            return self.number_pattern
        return _prefix_regex(self.number_prefix)


def _prefix_regex(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[\s*({re.escape(prefix)}-\d{{4}}-\d{{1,12}})\s*\]", re.I)


DEFAULT_OPTIONS = ParseOptions()
