"""The rules the pipeline runs, in order: our own mail, bounces (auto-replies too), the rest."""

from __future__ import annotations

from collections.abc import Sequence

from intake.rules import Rule, check_unique
from intake.rules.auto_reply import AUTO_REPLY
from intake.rules.bounce import BOUNCE
from intake.rules.empty import EMPTY
from intake.rules.loop import LOOP


def builtin_rules() -> Sequence[Rule]:
    return check_unique((LOOP, BOUNCE, AUTO_REPLY, EMPTY))
