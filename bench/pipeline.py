"""The pipeline alone: stored mail → registered tickets, without the SMTP listener.

One command: ``.venv/bin/python bench/pipeline.py [--messages N]``. It prints items/s and
CPU milliseconds per item on SQLite, the part of bench/intake.py's end-to-end figure that
the desk and the pipeline cost, and the SQL statements per item (counted in a second,
untimed run, so that counting costs the timed one nothing; the raw bytes, read through
SQLite's blob API, are not statements and not counted).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intake.desk import Desk
from intake.directory import add_contact, add_customer, add_staff
from intake.pipeline import Pipeline
from storage import inbound
from storage.db import Database
from storage.migrate import upgrade
from tests.intake.conftest import RULES
from tests.intake.mailmaker import mail_bytes, make_registrar


def _store(db: Database, count: int, offset: int) -> None:
    with db.transaction() as session:
        for i in range(offset, offset + count):
            inbound.store(
                session,
                source="smtp",
                source_ref=f"<{i}@bench>",
                raw=mail_bytes(
                    subject=f"Softphone {i} is silent", message_id=f"<{i}@acme.example>"
                ),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.from_url(f"sqlite:///{tmp}/bench.sqlite3")
        upgrade(db.engine)
        desk = Desk(RULES)
        with db.transaction() as session:
            add_customer(
                session,
                "Acme",
                package="standard",
                known_packages=RULES.packages,
                domains=["acme.example"],
            )
            add_contact(session, "Acme", email="anna@acme.example")
            add_staff(session, "alice")
        pipeline = Pipeline(
            db, make_registrar(desk, Path(tmp)), workers=1, max_attempts=3, poll_interval=60
        )
        _store(db, 50, 0)
        pipeline.work_all()  # warm-up: statement caches, imports
        _store(db, args.messages, 1000)
        wall, cpu = time.perf_counter(), time.process_time()
        done = pipeline.work_all()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        _store(db, args.messages, 1000 + args.messages)
        statements = _statements(db, pipeline)
        db.dispose()
    print(
        f"pipeline on SQLite: {done} stored mails -> tickets in {wall:.2f} s = "
        f"{done / wall:.0f} items/s, {cpu / done * 1000:.2f} ms CPU per item, "
        f"{statements:.2f} statements per item"
    )


def _statements(db: Database, pipeline: Pipeline) -> float:
    """Statements per item while the pipeline works off what is stored."""
    sent = 0

    def count(*_: Any) -> None:
        nonlocal sent
        sent += 1

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        done = pipeline.work_all()
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    return sent / done


if __name__ == "__main__":
    main()
