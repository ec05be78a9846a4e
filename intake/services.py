"""The contract of a long-running part of the daemon (a source, a worker, the scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Protocol


class StartupError(RuntimeError):
    """The daemon cannot start as configured (a port taken, storage not migrated …); the
    message says why, in one line. A service raising it stops the daemon."""


def cannot_listen(what: str, host: str, port: int, error: OSError) -> StartupError:
    # asyncio wraps the errno in a long sentence; the errno's own text is the clear part.
    reason = os.strerror(error.errno) if error.errno else str(error)
    return StartupError(f"{what}: cannot listen on {host}:{port}: {reason.lower()}")


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
