"""The contract of a long-running part of the daemon (a source, a worker, the scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class Service(Protocol):
    """Runs until ``stopping`` is set, then finishes the item in hand and returns."""

    name: str
    description: str

    async def run(self, stopping: asyncio.Event) -> None: ...


async def sleep_unless_stopped(stopping: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until stopping; True when the daemon is stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    return stopping.is_set()
