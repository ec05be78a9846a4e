"""The supervisor: runs every enabled service in one event loop until SIGTERM.

Stopping follows arq's discipline: stop taking work, let each service finish what it has
in hand within ``shutdown_timeout``, then cancel what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from intake.services import Service, StartupError, sleep_unless_stopped
from intake.systemd import notify

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 60.0


async def _keep_running(service: Service, stopping: asyncio.Event) -> None:
    """Run ``service``; if it crashes, log it and start it again after a capped backoff."""
    delay = 1.0
    while not stopping.is_set():
        try:
            await service.run(stopping)
            return
        except (asyncio.CancelledError, StartupError):
            raise
        except Exception:
            log.exception("service %s crashed; restarting in %.0f s", service.name, delay)
        if await sleep_unless_stopped(stopping, delay):
            return
        delay = min(delay * 2, RESTART_BACKOFF_MAX)


async def _watchdog(stopping: asyncio.Event, interval: float) -> None:
    while not await sleep_unless_stopped(stopping, interval):
        notify("WATCHDOG=1")


async def supervise(
    services: Sequence[Service],
    *,
    shutdown_timeout: float,
    stopping: asyncio.Event | None = None,
) -> None:
    names = [service.name for service in services]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise StartupError(f"services with the same name: {', '.join(duplicates)}")
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    tasks = [
        asyncio.create_task(_keep_running(service, stopping), name=service.name)
        for service in services
    ]
    watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if watchdog_usec > 0:
        tasks.append(asyncio.create_task(_watchdog(stopping, watchdog_usec / 2e6)))
    notify("READY=1")
    notify(f"STATUS=running: {', '.join(names) or 'no services'}")
    log.info("ready; services: %s", ", ".join(names) or "none")
    stop = asyncio.ensure_future(stopping.wait())
    try:
        # Until a signal, or until a service finds it cannot start at all.
        await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    stopping.set()
    notify("STOPPING=1")
    log.info("stopping; waiting up to %.0f s for work in hand", shutdown_timeout)
    _, pending = await asyncio.wait(tasks, timeout=shutdown_timeout)
    for task in pending:
        log.warning("service %s did not stop in time; cancelling it", task.get_name())
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    log.info("stopped")
    if failed:
        error = failed[0].exception()
        assert error is not None
        raise error
