"""A registration's acknowledgement leaves at once, not at the outbox workers' next poll."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from intake.desk import Desk
from intake.notifications import OutboxWakeup
from intake.pipeline import Pipeline
from notifiers.email import EmailChannel, PreparedMail, Sender
from notifiers.outbox import OutboxWorker
from notifiers.policy import MailPolicy
from notifiers.render import environment
from notifiers.transports import FolderTransport
from storage import inbound
from storage.db import Database
from tests.intake.conftest import Seed
from tests.intake.mailmaker import mail_bytes, make_registrar

NEVER = 3600.0  # a poll interval the test would time out long before


class TellingFolder(FolderTransport):
    """The folder transport, telling the test when a mail has been written."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.sent = asyncio.Event()

    async def send(self, *args: Any, **kwargs: Any) -> None:
        await super().send(*args, **kwargs)
        self.sent.set()


async def test_registration_wakes_the_idle_email_worker(
    db: Database, desk: Desk, seed: Seed, tmp_path: Path
) -> None:
    wakeup = OutboxWakeup()
    pipeline = Pipeline(
        db,
        make_registrar(desk, tmp_path),
        workers=1,
        max_attempts=3,
        poll_interval=NEVER,
        after_commit=wakeup,
    )
    folder = tmp_path / "outbound"
    transport = TellingFolder(folder)
    worker: OutboxWorker[PreparedMail] = OutboxWorker(
        db,
        EmailChannel(
            transport,
            environment(),
            sender=Sender("support@intake.test"),
            policy=MailPolicy(),
        ),
        max_attempts=3,
        interval=NEVER,
        wakeup=wakeup.event(),
    )
    first_look_done = threading.Event()
    look = worker._claim

    def claim_and_tell() -> Sequence[int]:
        ids = look()
        first_look_done.set()
        return ids

    worker._claim = claim_and_tell  # type: ignore[method-assign]
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stopping))]
    try:
        # The worker has looked, found nothing, and now waits for NEVER seconds …
        assert await asyncio.to_thread(first_look_done.wait, 10)
        tasks.append(asyncio.create_task(pipeline.run(stopping)))
        with db.transaction() as session:
            inbound.store(
                session,
                source="smtp",
                source_ref="<wake@acme.example>",
                raw=mail_bytes(sender="anna@acme.example", subject="Софтфон молчит"),
            )
        pipeline.wakeup.set()
        # … unless the pipeline's commit wakes it.
        async with asyncio.timeout(20):
            await transport.sent.wait()
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
    (mail,) = folder.glob("*.eml")
    assert b"Subject: [OV-" in mail.read_bytes()
