"""`intake outbox` as an operator uses it, and the workers the daemon runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from intake.app import App, desk_rules, working_calendar
from intake.cli import main
from intake.config import Settings, load_settings
from intake.desk import Desk
from notifiers import outbox
from storage.db import Database
from storage.models import OutboxState
from tests.notifiers.conftest import Clock, Seed, register, rows

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(db_url: URL, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    config = tmp_path / "config.toml"
    rendered = db_url.render_as_string(hide_password=False)
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n\n[storage]\nurl = "{rendered}"\n',
        encoding="utf-8",
    )

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def _kill(db: Database, item_id: int, clock: Clock) -> None:
    with db.transaction() as session:
        outbox.claim(session, "email", now=clock.now)
        outbox.failed(
            session, item_id, error="ConnectError: refused", max_attempts=1, now=clock.now
        )


def test_outbox_list_shows_rows_filtered_by_state(
    db: Database, desk: Desk, seed: Seed, clock: Clock, run: Run
) -> None:
    ticket = register(db, desk, seed)
    [mail] = rows(db, "email")
    _kill(db, mail.id, clock)

    code, out, err = run("outbox", "list", "--state", "dead", "--json")

    assert (code, err) == (0, "")
    [row] = json.loads(out)
    assert row["id"] == mail.id
    assert row["ticket"] == ticket.number
    assert row["state"] == "dead"
    assert row["template"] == "acknowledgement"
    assert row["message_id"] == mail.message_id
    assert row["last_error"] == "ConnectError: refused"
    code, out, _ = run("outbox", "list")
    assert code == 0
    assert out.splitlines()[0].split()[:4] == ["ID", "STATE", "TRIES", "CHANNEL"]
    assert len(out.splitlines()) == 3  # the mail and the staff's Telegram row


def test_outbox_retry_queues_a_dead_row_again_with_its_message_id(
    db: Database, desk: Desk, seed: Seed, clock: Clock, run: Run
) -> None:
    register(db, desk, seed)
    [mail] = rows(db, "email")
    _kill(db, mail.id, clock)

    assert run("outbox", "retry", str(mail.id)) == (0, f"outbox {mail.id} queued again\n", "")
    [again] = rows(db, "email")
    assert (again.state, again.attempts, again.message_id) == (
        OutboxState.PENDING,
        0,
        mail.message_id,
    )
    code, _, err = run("outbox", "retry", str(mail.id))
    assert code == 1
    assert err == f"error: outbox row {mail.id} is pending; nothing to retry\n"


def test_outbox_retry_all_dead(
    db: Database, desk: Desk, seed: Seed, clock: Clock, run: Run
) -> None:
    register(db, desk, seed)
    register(db, desk, seed)
    for mail in rows(db, "email"):
        _kill(db, mail.id, clock)

    assert run("outbox", "retry", "--all-dead") == (0, "2 dead notifications queued again\n", "")
    assert {r.state for r in rows(db, "email")} == {OutboxState.PENDING}
    code, _, err = run("outbox", "retry")
    assert code == 2
    assert "give an ID or --all-dead" in err


def test_daemon_runs_the_email_worker_always_and_telegrams_when_enabled(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT", "1:x")
    plain = load_settings(environ={}, cwd=tmp_path)
    (tmp_path / "config.toml").write_text(
        '[telegram]\nenabled = true\ntoken_env = "BOT"\nchat_ids = [-1001]\n', encoding="utf-8"
    )
    with_telegram = load_settings(environ={"BOT": "1:x"}, cwd=tmp_path)

    def names(settings: Settings) -> list[str]:
        app = App(settings, db, Desk(desk_rules(settings)), working_calendar(settings))
        return [s.name for s in app.services() if s.name.startswith("outbox-")]

    assert names(plain) == ["outbox-email"]
    assert desk_rules(plain).staff_chats == ()
    assert names(with_telegram) == ["outbox-email", "outbox-telegram"]
    assert desk_rules(with_telegram).staff_chats == (-1001,)
